"""Quality of a trained run at several NFE.

  python scripts/evaluate.py --workdir runs/toy --nfe 1 2 4 --num 20000
  python scripts/evaluate.py --workdir runs/digits --nfe 1 2 --num 2000
  python scripts/evaluate.py --workdir runs/cifar10 --nfe 1 2 --num 50000 \
      --inception inception_fid.npz --ref cifar10_train_stats.npz
  python scripts/evaluate.py --workdir runs/digits_imf --nfe 1 2 --omega 1,2,4 \
      --interval 0,1 --interval 0.2,0.8     # iMF: guidance scales and intervals swept
  python scripts/evaluate.py --workdir runs/in256_b2 --nfe 1 2 --num 50000 \
      --vae sd_vae_ft_mse.npz --inception inception_fid.npz --ref imagenet256_stats.npz

Built-in mixtures are scored exactly against the probability-flow map of the same
noise; labelled images with the project's classifier (Frechet distance in its
features, "clf_fd", which is not FID; class agreement), and with --inception
(converted FID Inception weights; see meanflow_jax/metrics/inception.py) by FID
against --ref statistics (or the training data's). Sample i's noise is
fold_in(key, i); batches are split over all local devices. Writes WORKDIR/eval.json
(one row per NFE), WORKDIR/eval.md and WORKDIR/eval.png (samples; one row per class
for conditional image runs with at most 16 classes). A run on VAE latents is decoded
with --vae (converted SD-VAE weights, scripts/convert_vae_weights.py) and scored by
FID. In a multi-process job (--coordinator_address, --num_processes, --process_id, as
for scripts/train.py) every process runs this command: each scores its share of the samples on its own devices and the
statistics are combined; process 0 writes the files.
"""
import json
import os

import jax
from absl import flags

from meanflow_jax import cli, evaluate, plotting
from meanflow_jax.errors import ConfigError
from meanflow_jax.training import inference

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/).")
_NFE = flags.DEFINE_multi_integer("nfe", [1, 2], "NFE values to evaluate.")
_NUM = flags.DEFINE_integer("num", None, "Samples per NFE (default 20000 for mixtures, 2000 for "
                            "images).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise.")
_PARAMS = flags.DEFINE_enum("params", None, ["ema", "raw"],
                            "Parameters (default: the run's sample.params).")
_METHOD = flags.DEFINE_enum("method", None, ["euler", "heun"], "Flow-matching solver.")
_EMA = flags.DEFINE_float("ema", None, "Decay of the EMA copy to use (default: the first).")
_INCEPTION = flags.DEFINE_string("inception", None, "FID Inception weights (.npz, see "
                                 "scripts/convert_inception_weights.py): adds the fid column.")
_REF = flags.DEFINE_string("ref", None, "FID reference statistics (.npz with mu, sigma; "
                           "scripts/fid_stats.py); default: the run's training data.")
_VAE = flags.DEFINE_string("vae", None, "Runs on VAE latents: the VAE weights (.npz, see "
                           "scripts/convert_vae_weights.py) that decode the samples.")
_BATCH = flags.DEFINE_integer("batch", 500, "Samples per sampler call.")
_OMEGA = flags.DEFINE_list("omega", None, "iMF, class-conditional: guidance scales to sample "
                           "at, all from the one trained model, e.g. --omega 1,2,4; default: "
                           "the run's sample.omega.")
_INTERVAL = flags.DEFINE_multi_string("interval", None, "iMF: the guidance interval "
                                      "t_min,t_max at sampling (default: the run's "
                                      "sample.t_min, sample.t_max); repeat it to sweep "
                                      "intervals: --interval 0,1 --interval 0.2,0.8.")
_DISTRIBUTED = cli.DistributedFlags()
flags.mark_flags_as_required(["workdir"])

TOY_COLUMNS = ["method", "nfe", "transport_rms", "low_density_frac", "mode_tv", "sliced_w2",
               "samples_per_s"]
MAX_GRID_CLASSES = 16
IMAGE_COLUMNS = ["method", "nfe", "clf_fd", "agreement", "class_tv", "samples_per_s"]


def _toy(workdir, nfes):
  ev = evaluate.evaluate_toy(workdir, nfes, num=_NUM.value or 20_000, seed=_SEED.value,
                             params=_PARAMS.value, method=_METHOD.value, ema=_EMA.value,
                             progress=True)
  n = 4000
  panels = [("exact flow map", ev.exact[:n])] + [
      (f"{ev.rows[0]['method']}, {k} NFE", s[:n]) for k, s in ev.samples.items()]
  if jax.process_index() == 0:
    plotting.scatter(panels, os.path.join(workdir, "eval.png"), log_prob=ev.mixture.log_prob)
  return ev.rows, TOY_COLUMNS


def _guidance_intervals():
  spans = cli.intervals(_INTERVAL.value)
  if spans is None or len(spans) == 1:
    return {"interval": spans[0] if spans else None}
  return {"intervals": spans}


def _images(workdir, nfes, config):
  k, per = config.model.num_classes, config.sample.grid_per_class
  k = k if k <= MAX_GRID_CLASSES else 0  # many classes: the first samples, one per class
  ev = evaluate.evaluate_images(workdir, nfes, num=_NUM.value or 2_000, seed=_SEED.value,
                                params=_PARAMS.value, method=_METHOD.value, ema=_EMA.value,
                                inception=_INCEPTION.value, ref=_REF.value, batch=_BATCH.value,
                                progress=True, omegas=cli.floats("--omega", _OMEGA.value),
                                vae=_VAE.value, keep=(k or per) * per, **_guidance_intervals())
  if jax.process_index():
    return ev.rows, None
  # Keys are NFE, or (NFE, omega) in an omega sweep.
  title = lambda n: (f"{ev.rows[0]['method']}, {n[0]} NFE, omega {n[1]:g}"
                     + (f" on [{n[2]:g}, {n[3]:g}]" if len(n) == 4 else "")
                     if isinstance(n, tuple) else f"{ev.rows[0]['method']}, {n} NFE")
  if k:
    panels = [(title(n), evaluate.class_rows(x, ev.labels, k, per)) for n, x in ev.samples.items()]
  else:
    panels = [(title(n), x[:per * per]) for n, x in ev.samples.items()]
  # An omega sweep: one row of panels per NFE, one panel per omega.
  sweep = len(set(n[1:] for n in ev.samples if isinstance(n, tuple)))
  plotting.image_grids(panels, os.path.join(workdir, "eval.png"), ncols=per,
                       row_labels=list(range(k)) if k else None, panels_per_row=sweep or None)
  columns = IMAGE_COLUMNS if "clf_fd" in ev.rows[0] else ["method", "nfe", "samples_per_s"]
  if "fid" in ev.rows[0]:
    columns = columns[:2] + ["fid"] + columns[2:]
  if (_OMEGA.value or "t_min" in ev.rows[0]) and "clf_fd" in ev.rows[0]:
    metrics = ["clf_fd", "agreement"] if "agreement" in ev.rows[0] else ["clf_fd"]
    plotting.metrics_vs_omega(ev.rows, metrics, os.path.join(workdir, "eval_omega.png"),
                              floor=ev.floor, log_metrics=("clf_fd",))
    print(f"wrote {workdir}/eval_omega.png")
    columns = columns[:2] + ["omega"] + (["t_min", "t_max"] if "t_min" in ev.rows[0]
                                         else []) + columns[2:]
  if "classifier_heldout_accuracy" in ev.floor:
    print(f"classifier held-out accuracy {ev.floor['classifier_heldout_accuracy']:.4f}")
  floor = [dict(ev.floor, method="real data (two halves)", nfe="")] if ev.floor else []
  return ev.rows + floor, columns


def main(argv):
  extra = argv[1:]  # absl takes one value per --nfe; accept the spelling --nfe 1 2 4 too
  if not all(a.isdigit() for a in extra):
    raise ConfigError(f"unexpected arguments {extra}; NFE values are positive integers.")
  nfes = _NFE.value + [int(a) for a in extra]
  if _NUM.value is not None and _NUM.value < 2:
    raise ConfigError(f"--num must be >= 2; got {_NUM.value}.")
  if _BATCH.value < 1:
    raise ConfigError(f"--batch must be >= 1 (samples per sampler call); got {_BATCH.value}.")
  workdir = _WORKDIR.value
  _DISTRIBUTED.join()  # before anything touches a device
  config = inference.load_config(workdir)
  if config.data.source == "mixture":
    rows, columns = _toy(workdir, nfes)
  elif config.data.source == "points":
    raise ConfigError(f"{workdir} trained on a user array of points: there is no exact flow "
                      "map or classifier to score it against.")
  else:
    rows, columns = _images(workdir, nfes, config)
  if jax.process_index():  # process 0 writes
    return
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(rows, f, indent=2)
  table = evaluate.markdown_table(rows, columns)
  with open(os.path.join(workdir, "eval.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  print(f"wrote {workdir}/eval.json, eval.md and eval.png")


if __name__ == "__main__":
  cli.run(main)
