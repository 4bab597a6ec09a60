"""Pictures: scatter plots of 2-D samples over the data density, image grids, curves."""
import numpy as np


def pyplot():
  """matplotlib.pyplot on the file backend, imported at the first picture: importing it adds
  half a second to the start of every script, including those that stop on bad input."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _density_grid(log_prob, lim, n=200):
  g = np.linspace(-lim, lim, n)
  xx, yy = np.meshgrid(g, g)
  pts = np.stack([xx.ravel(), yy.ravel()], -1).astype(np.float32)
  return xx, yy, np.exp(np.asarray(log_prob(pts))).reshape(n, n)


def scatter(panels, path, log_prob=None, lim=None, ncols=None):
  """Writes a PNG with one scatter panel per entry of `panels`.

  Args:
    panels: list of (title, points `[N, 2]`), or of (title, points, log_prob) for a panel
      with its own density (several data sets in one figure).
    path: output PNG.
    log_prob: optional data log-density `[N, 2] -> [N]`, drawn as contours.
    lim: half-width of the square plot window (default: from the points).
  """
  plt = pyplot()
  panels = [(p[0], np.asarray(p[1]), p[2] if len(p) > 2 else log_prob) for p in panels]
  for title, p, _ in panels:
    if p.ndim != 2 or p.shape[1] != 2:
      raise ValueError(f"scatter plots 2-D points; {title!r} has shape {p.shape}.")
  if lim is None:
    lim = 1.1 * max(float(np.quantile(np.abs(p), 0.995)) for _, p, _ in panels)
  ncols = ncols or len(panels)
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
  grids = {}  # one density grid per distinct log_prob
  for ax, (title, p, lp) in zip(axes.ravel(), panels):
    if lp is not None:
      if id(lp) not in grids:
        grids[id(lp)] = _density_grid(lp, lim)
      ax.contour(*grids[id(lp)], levels=6, colors="0.75", linewidths=0.6)
    ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.35, color="C0", linewidths=0)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)
    ax.set_xticks([]), ax.set_yticks([])
  for ax in axes.ravel()[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def metrics_vs_nfe(rows, metrics, path, thresholds=None, log_metrics=()):
  """One panel per metric: value against NFE (log axis), a line per method.

  Args:
    rows: dicts with "method", "nfe" and each metric.
    metrics: metric names to plot.
    thresholds: optional {metric: value} drawn as a dashed line.
    log_metrics: metrics drawn on a log axis (values spanning decades).
  """
  plt = pyplot()
  from matplotlib import ticker
  thresholds = thresholds or {}
  fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  for ax, m in zip(axes[0], metrics):
    for i, method in enumerate(methods):
      rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["nfe"])
      ax.plot([r["nfe"] for r in rs], [r[m] for r in rs], "o-", color=f"C{i}", label=method)
    if m in thresholds:
      ax.axhline(thresholds[m], color="0.5", ls="--", lw=1)
    ax.set(xscale="log", xlabel="NFE", title=m, yscale="log" if m in log_metrics else "linear")
    # NFE are integers: label them as such, not as powers of ten.
    ax.set_xticks(sorted({r["nfe"] for r in rows}))
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def metrics_vs_omega(rows, metrics, path, floor=None, log_metrics=()):
  """One panel per metric: value against the sampling-time guidance scale omega, a line
  per (method, NFE[, interval]); `floor`: optional {metric: value of real data}, drawn dashed;
  `log_metrics` on a log axis.

  Args:
    rows: dicts with "method", "nfe", "omega" and each metric.
  """
  plt = pyplot()
  floor = floor or {}
  fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
  line_of = lambda r: (r["method"], r["nfe"], r.get("t_min"), r.get("t_max"))
  lines = list(dict.fromkeys(line_of(r) for r in rows))
  for ax, m in zip(axes[0], metrics):
    for i, line in enumerate(lines):
      rs = sorted((r for r in rows if line_of(r) == line), key=lambda r: r["omega"])
      method, nfe, lo, hi = line
      span = "" if lo is None else f" on [{lo:g}, {hi:g}]"
      ax.plot([r["omega"] for r in rs], [r[m] for r in rs], "o-", color=f"C{i % 10}",
              label=f"{method}, {nfe} NFE{span}")
    if m in floor:
      ax.axhline(floor[m], color="0.5", ls="--", lw=1, label="real data")
    ax.set(xlabel="guidance scale omega (sampling)", title=m,
           yscale="log" if m in log_metrics else "linear")
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def to_uint8(images):
  """Images in [-1, 1] -> uint8 in [0, 255] (round to nearest, clip)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def mosaic(images, ncols, pad=1):
  """Tiles `[N, H, W, C]` images into one `[rows * (H + pad), ncols * (W + pad), C]` uint8 image."""
  x = to_uint8(images)
  if x.ndim != 4:
    raise ValueError(f"images must have shape [N, H, W, C]; got {x.shape}.")
  n, h, w, c = x.shape
  rows = -(-n // ncols)
  out = np.full((rows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, k = divmod(i, ncols)
    top, left = pad + r * (h + pad), pad + k * (w + pad)
    out[top:top + h, left:left + w] = x[i]
  return out


def image_grids(panels, path, ncols, row_labels=None, panels_per_row=None, pixels_per_inch=30):
  """Writes a PNG with one image grid per panel.

  Args:
    panels: list of (title, images `[N, H, W, C]` in [-1, 1]); each is tiled
      `ncols` images a row (e.g. one row per class).
    row_labels: optional labels written left of the rows of each panel.
    panels_per_row: panels side by side before a new row of panels (default all).
    pixels_per_inch: size of the figure relative to the tiled grids.
  """
  plt = pyplot()
  tiles = [(title, mosaic(x, ncols)) for title, x in panels]
  h, w = tiles[0][1].shape[:2]
  per_row = panels_per_row or len(tiles)
  nrows = -(-len(tiles) // per_row)
  size = lambda pixels: max(2.0, pixels / pixels_per_inch)
  fig, axes = plt.subplots(nrows, per_row, squeeze=False,
                           figsize=(per_row * size(w), nrows * (size(h) + 0.4)))
  for ax, (title, tile) in zip(axes.ravel(), tiles):
    gray = tile.shape[-1] == 1
    ax.imshow(tile[..., 0] if gray else tile, cmap="gray" if gray else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if row_labels is not None:
      step = tile.shape[0] / len(row_labels)
      ax.set_yticks([step * (i + 0.5) for i in range(len(row_labels))],
                    [str(l) for l in row_labels], fontsize=7)
  for ax in axes.ravel()[len(tiles):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
