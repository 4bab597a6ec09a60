"""Image grids: the uint8 conversion and where each image lands in the mosaic."""
import numpy as np

from meanflow_jax import plotting


def test_to_uint8_maps_the_range_and_clips():
  x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(plotting.to_uint8(x), [0, 0, 128, 255, 255])


def test_mosaic_places_images_row_by_row(tmp_path):
  images = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
  m = plotting.mosaic(images, ncols=2, pad=1)
  assert m.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
  assert (m[1:3, 1:4] == 0).all() and (m[1:3, 5:8] == 128).all() and (m[4:6, 1:4] == 255).all()
  assert (m[0] == 255).all()  # padding is white
  png = plotting.image_grids([("a", images), ("b", images)], str(tmp_path / "g.png"), ncols=2,
                             row_labels=[0, 1], panels_per_row=1)
  assert (tmp_path / "g.png").stat().st_size > 500 and png.endswith("g.png")
