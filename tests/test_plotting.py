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


def test_markdown_table_keeps_small_values_visible():
  from meanflow_jax import evaluate
  table = evaluate.markdown_table(
      [{"a": 3.4355e-05, "b": 0.0, "c": 40.73601, "d": "x"}, {"a": 1}], ["a", "b", "c", "d"])
  lines = table.splitlines()
  assert lines[0] == "| a | b | c | d |" and lines[1] == "|---|---|---|---|"
  assert lines[2] == "| 3.44e-05 | 0.0000 | 40.7360 | x |"
  assert lines[3] == "| 1 |  |  |  |"
