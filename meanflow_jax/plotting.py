"""Pictures: scatter plots of 2-D samples over the data density."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _density_grid(log_prob, lim, n=200):
  g = np.linspace(-lim, lim, n)
  xx, yy = np.meshgrid(g, g)
  pts = np.stack([xx.ravel(), yy.ravel()], -1).astype(np.float32)
  return xx, yy, np.exp(np.asarray(log_prob(pts))).reshape(n, n)


def scatter(panels, path, log_prob=None, lim=None, ncols=None):
  """Writes a PNG with one scatter panel per entry of `panels`.

  Args:
    panels: list of (title, points `[N, 2]`).
    path: output PNG.
    log_prob: optional data log-density `[N, 2] -> [N]`, drawn as contours.
    lim: half-width of the square plot window (default: from the points).
  """
  panels = [(title, np.asarray(p)) for title, p in panels]
  for title, p in panels:
    if p.ndim != 2 or p.shape[1] != 2:
      raise ValueError(f"scatter plots 2-D points; {title!r} has shape {p.shape}.")
  if lim is None:
    lim = 1.1 * max(float(np.quantile(np.abs(p), 0.995)) for _, p in panels)
  ncols = ncols or len(panels)
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
  grid = _density_grid(log_prob, lim) if log_prob is not None else None
  for ax, (title, p) in zip(axes.ravel(), panels):
    if grid is not None:
      ax.contour(*grid, levels=6, colors="0.75", linewidths=0.6)
    ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.35, color="C0", linewidths=0)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)
    ax.set_xticks([]), ax.set_yticks([])
  for ax in axes.ravel()[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def metrics_vs_nfe(rows, metrics, path, thresholds=None):
  """One panel per metric: value against NFE (log axis), a line per method.

  Args:
    rows: dicts with "method", "nfe" and each metric.
    metrics: metric names to plot.
    thresholds: optional {metric: value} drawn as a dashed line.
  """
  thresholds = thresholds or {}
  fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  for ax, m in zip(axes[0], metrics):
    for i, method in enumerate(methods):
      rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["nfe"])
      ax.plot([r["nfe"] for r in rs], [r[m] for r in rs], "o-", color=f"C{i}", label=method)
    if m in thresholds:
      ax.axhline(thresholds[m], color="0.5", ls="--", lw=1)
    ax.set(xscale="log", xlabel="NFE", title=m)
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
