"""Reliability battery of the command-line tools, run as a user would run them.

  python scripts/bench_reliability.py --out results/reliability
  python scripts/bench_reliability.py --out results/reliability --kills 12 --terms 4 --seed 1

Four parts, each a table row per probe in `--out`/table.md (and results.json):
- kill -9 at random moments of a run that saves every step (many during an Orbax
  save), then resume: the final parameters must equal a run never killed, bit for bit;
- SIGTERM at random moments: exit 143, then resume, the same comparison;
- bad inputs (flags, configs, data files, resumes that change the run): each must end
  in one `error:` line on stderr, a non-zero exit and no traceback;
- damaged checkpoints (flipped bytes, truncated or empty files, an empty step): each
  must be reported, and sampling and resuming must fall back to the newest intact step.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import flags

from meanflow_jax import cli, training
from meanflow_jax.evaluate import markdown_table

_OUT = flags.DEFINE_string("out", "results/reliability", "Folder of table.md and results.json.")
_KILLS = flags.DEFINE_integer("kills", 12, "kill -9 probes.")
_TERMS = flags.DEFINE_integer("terms", 4, "SIGTERM probes.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "configs/toy.py", "--config.model.mlp.width=16",
        "--config.model.mlp.depth=1", "--config.model.mlp.time_dim=8",
        "--config.train.batch_size=16", "--config.train.sample_every=0"]
# ~4M parameters (a 64 MB state): a save lasts long enough for kills to land inside it.
BIG = ["--config", "configs/toy.py", "--config.model.mlp.width=1024",
       "--config.model.mlp.depth=2", "--config.train.batch_size=64",
       "--config.train.checkpoint_every=1", "--config.train.log_every=1",
       "--config.train.max_to_keep=2", "--config.train.sample_every=0"]
KILL_STEPS = 12


def _script(name, *args):
  return [sys.executable, os.path.join(ROOT, "scripts", name), *args]


def _run(cmd, env=None):
  p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
  return p.returncode, p.stderr


def _params(workdir):
  return [np.asarray(x) for x in jax.tree.leaves(training.load_run(workdir, params="raw").params)]


def _same(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _outcome(code, err):
  """How a run that should have refused its input ended."""
  if "Traceback" in err:
    return "traceback"
  if code == 0:
    return "accepted (exit 0)"
  last = err.strip().splitlines()[-1] if err.strip() else ""
  return "one-line error" if last.startswith("error:") else f"exit {code}, no error line"


def signal_probes(tmp, count, sig, rng, reference):
  """Runs `count` trainings stopped by `sig` at a random step (+ a random delay inside
  it), resumes each, and compares with the uninterrupted `reference` parameters."""
  rows = []
  train = _script("train.py", *BIG, f"--config.train.steps={KILL_STEPS}")
  for i in range(count):
    workdir = os.path.join(tmp, f"{signal.Signals(sig).name}_{i}")
    target, delay = rng.randint(1, KILL_STEPS - 2), rng.uniform(0.0, 0.3)
    proc = subprocess.Popen(train + ["--workdir", workdir], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ckpts = os.path.join(workdir, "checkpoints")
    while proc.poll() is None:  # wait for checkpoint `target`, then a little more
      if os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= target for d in os.listdir(ckpts)):
        break
      time.sleep(0.002)
    time.sleep(delay)
    during_save = os.path.isdir(ckpts) and any(".orbax-checkpoint-tmp" in d
                                               for d in os.listdir(ckpts))
    proc.send_signal(sig)
    _, err = proc.communicate()
    steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []
    code, rerr = _run(train + ["--workdir", workdir])
    equal = code == 0 and _same(_params(workdir), reference)
    rows.append({"probe": f"{signal.Signals(sig).name} #{i}", "after_checkpoint": target,
                 "delay_s": round(delay, 3), "during_save": during_save,
                 "exit": proc.returncode, "last_saved": steps[-1] if steps else None,
                 "resumed_exit": code, "equal_to_straight_run": equal,
                 "note": "" if code == 0 else rerr.strip().splitlines()[-1][:120]})
    print(f"{rows[-1]['probe']}: exit {proc.returncode}, resumed {code}, equal {equal}")
  return rows


def bad_input_probes(tmp):
  """(name, command) pairs a careless user might type; each should be refused in one line."""
  run = os.path.join(tmp, "run")
  assert _run(_script("train.py", *TINY, "--config.train.steps=10", "--workdir", run))[0] == 0
  x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
  files = {"nan.npy": np.where(np.arange(100).reshape(50, 2) == 7, np.nan, x),
           "rank3.npy": x.reshape(5, 10, 2), "ok.npy": x}
  for name, a in files.items():
    np.save(os.path.join(tmp, name), a)
  np.savetxt(os.path.join(tmp, "x.csv"), x, delimiter=",")
  np.savetxt(os.path.join(tmp, "x.txt"), x)
  with open(os.path.join(tmp, "syntax.py"), "w") as f:
    f.write("def get_config(:\n")
  open(os.path.join(tmp, "a_file"), "w").close()
  new = lambda: os.path.join(tmp, f"w{random.getrandbits(32)}")
  train = lambda *a, workdir=None: _script("train.py", *TINY, "--config.train.steps=2",
                                           "--workdir", workdir or new(), *a)
  points = lambda f: ["--config.data.source=points", f"--config.data.path={os.path.join(tmp, f)}"]
  cases = [
      ("unknown config key", train("--config.train.stepz=3")),
      ("config file missing", _script("train.py", "--config", "nothere.py", "--workdir", new())),
      ("config file with a syntax error", _script("train.py", "--config",
                                                  os.path.join(tmp, "syntax.py"), "--workdir",
                                                  new())),
      ("argument to a config that takes none", _script("train.py", "--config",
                                                       "configs/toy.py:XL/2", "--workdir", new())),
      ("--workdir is a file", train(workdir=os.path.join(tmp, "a_file"))),
      ("data.path without data.source=points", train(
          f"--config.data.path={os.path.join(tmp, 'ok.npy')}")),
      ("points with NaN", train(*points("nan.npy"))),
      ("points of rank 3", train(*points("rank3.npy"))),
      ("points as CSV", train(*points("x.csv"))),
      ("points as text", train(*points("x.txt"))),
      ("points file missing", train(*points("none.npy"))),
      ("optimizer.grad_clip=-1", train("--config.optimizer.grad_clip=-1")),
      ("optimizer.b1=2.0", train("--config.optimizer.b1=2.0")),
      ("optimizer.weight_decay=-5", train("--config.optimizer.weight_decay=-5")),
      ("optimizer.warmup_steps=-10", train("--config.optimizer.warmup_steps=-10")),
      ("optimizer.lr=0", train("--config.optimizer.lr=0")),
      ("model.mlp.width=0", train("--config.model.mlp.width=0")),
      ("train.batch_size=0", train("--config.train.batch_size=0")),
      ("time.ratio_r_neq_t=1.5", train("--config.time.ratio_r_neq_t=1.5")),
      ("unknown objective", train("--config.objective=meanflw")),
      ("unknown model", train("--config.model.name=transformer")),
      ("DiT keys on an MLP run", train("--config.model.dit.depth=3")),
      ("guidance on an unconditional run", train("--config.guidance.omega=2.0")),
      ("resume with another seed", _script("train.py", *TINY, "--config.train.steps=12",
                                           "--workdir", run, "--config.seed=1")),
      ("resume with another loss.p", _script("train.py", *TINY, "--config.train.steps=12",
                                             "--workdir", run, "--config.loss.p=1.0")),
      ("resume with another mixture", _script("train.py", *TINY, "--config.train.steps=12",
                                              "--workdir", run, "--config.data.mixture=gaussian")),
      ("resume with another batch size", _script("train.py", *TINY, "--config.train.steps=12",
                                                 "--workdir", run,
                                                 "--config.train.batch_size=32")),
      ("resume with another model width", _script("train.py", *TINY, "--config.train.steps=12",
                                                  "--workdir", run,
                                                  "--config.model.mlp.width=32")),
      ("sample: --out is a directory", _script("sample.py", "--workdir", run, "--out", tmp)),
      ("sample: --out not .npy", _script("sample.py", "--workdir", run, "--out", "x.png")),
      ("sample: --nfe 0", _script("sample.py", "--workdir", run, "--nfe", "0", "--out",
                                  os.path.join(tmp, "s.npy"))),
      ("sample: --num -3", _script("sample.py", "--workdir", run, "--num", "-3", "--out",
                                   os.path.join(tmp, "s.npy"))),
      ("sample: noise of the wrong shape", _script("sample.py", "--workdir", run, "--noise",
                                                   os.path.join(tmp, "rank3.npy"), "--out",
                                                   os.path.join(tmp, "s.npy"))),
      ("sample: --class on an unconditional run", _script("sample.py", "--workdir", run,
                                                          "--class", "3", "--out",
                                                          os.path.join(tmp, "s.npy"))),
      ("sample: no run", _script("sample.py", "--workdir", new(), "--out",
                                 os.path.join(tmp, "s.npy"))),
      ("evaluate: --batch 0", _script("evaluate.py", "--workdir", run, "--batch", "0")),
      ("evaluate: --batch -1", _script("evaluate.py", "--workdir", run, "--batch", "-1")),
      ("evaluate: --num 0", _script("evaluate.py", "--workdir", run, "--num", "0")),
      ("evaluate: --ema of a decay not kept", _script("evaluate.py", "--workdir", run, "--ema",
                                                      "0.5")),
      ("evaluate: no run", _script("evaluate.py", "--workdir", new())),
  ]
  rows = []
  for name, cmd in cases:
    code, err = _run(cmd)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    rows.append({"probe": name, "exit": code, "outcome": _outcome(code, err),
                 "stderr_lines": len(err.strip().splitlines()), "message": last[:160]})
    print(f"{name}: {rows[-1]['outcome']}: {last[:120]}")
  return rows


def _flip(path):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 8)):
      data[i] ^= 0xFF
    f.seek(0)
    f.write(data)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _empty_step(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


def damage_probes(tmp):
  """Damages the latest of three checkpoints in each way, then samples and resumes."""
  base = os.path.join(tmp, "damage_base")
  train = lambda workdir, steps: _script("train.py", *TINY, f"--config.train.steps={steps}",
                                         "--config.train.checkpoint_every=5",
                                         "--config.train.log_every=5", "--workdir", workdir)
  assert _run(train(base, 15))[0] == 0
  state = os.path.join(base, "checkpoints", "15", "state")
  # Orbax (OCDBT) keeps the array bytes in files under folders named "d".
  arrays = sorted(os.path.relpath(os.path.join(d, f), base) for d, _, fs in os.walk(state)
                  for f in fs if os.path.basename(d) == "d")
  kinds = [(f"flipped bytes in array file {i}", lambda w, p=p: _flip(os.path.join(w, p)))
           for i, p in enumerate(arrays)]
  step = lambda w, *p: os.path.join(w, "checkpoints", "15", *p)
  kinds += [
      ("flipped bytes in state/_METADATA", lambda w: _flip(step(w, "state", "_METADATA"))),
      ("truncated state/_METADATA", lambda w: _truncate(step(w, "state", "_METADATA"))),
      ("garbage _CHECKPOINT_METADATA", lambda w: open(step(w, "_CHECKPOINT_METADATA"),
                                                      "wb").write(b"\xff\xfe garbage")),
      ("garbage config metadata", lambda w: open(step(w, "config", "metadata"),
                                                 "wb").write(b"\x00\x01{not json")),
      ("garbage meta metadata", lambda w: open(step(w, "meta", "metadata"), "w").write("[")),
      ("empty step directory", lambda w: _empty_step(step(w))),
      ("manifest.ocdbt truncated", lambda w: _truncate(step(w, "state", "manifest.ocdbt"))),
  ]
  rows = []
  for name, damage in kinds:
    workdir = os.path.join(tmp, f"damaged_{len(rows)}")
    shutil.copytree(base, workdir)
    damage(workdir)
    out = os.path.join(workdir, "s.npy")
    code_s, err_s = _run(_script("sample.py", "--workdir", workdir, "--num", "64", "--out", out))
    finite = code_s == 0 and bool(np.isfinite(np.load(out)).all())
    code_t, err_t = _run(train(workdir, 20))
    said = [ln for ln in (err_s + err_t).splitlines() if "15" in ln and "Traceback" not in ln]
    rows.append({"probe": name, "sample_exit": code_s, "samples_finite": finite,
                 "resume_exit": code_t, "reported": bool(said),
                 "traceback": "Traceback" in err_s + err_t,
                 "message": said[0].strip()[:160] if said else ""})
    print(f"{name}: sample {code_s} finite {finite}, resume {code_t}, reported {bool(said)}")
  return rows


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  rng = random.Random(_SEED.value)
  with tempfile.TemporaryDirectory() as tmp:
    straight = os.path.join(tmp, "straight")
    code, err = _run(_script("train.py", *BIG, f"--config.train.steps={KILL_STEPS}",
                             "--workdir", straight))
    if code:
      raise SystemExit(f"error: the reference run failed: {err.strip().splitlines()[-1]}")
    reference = _params(straight)
    parts = {"kill": signal_probes(tmp, _KILLS.value, signal.SIGKILL, rng, reference),
             "sigterm": signal_probes(tmp, _TERMS.value, signal.SIGTERM, rng, reference),
             "bad_input": bad_input_probes(tmp),
             "damaged_checkpoint": damage_probes(tmp)}
  with open(os.path.join(_OUT.value, "results.json"), "w") as f:
    json.dump(parts, f, indent=1)
  kills = parts["kill"] + parts["sigterm"]
  summary = [
      f"- kill -9 / SIGTERM: {sum(r['equal_to_straight_run'] for r in kills)} of {len(kills)} "
      f"resumed to parameters bit-identical to an uninterrupted run "
      f"({sum(r['during_save'] for r in kills)} stopped while a save was being written).",
      f"- bad inputs: {sum(r['outcome'] == 'one-line error' for r in parts['bad_input'])} of "
      f"{len(parts['bad_input'])} refused with one `error:` line and no traceback.",
      f"- damaged checkpoints: {sum(r['reported'] and r['samples_finite'] and not r['resume_exit'] and not r['traceback'] for r in parts['damaged_checkpoint'])} "
      f"of {len(parts['damaged_checkpoint'])} reported, then sampled (finite) and resumed "
      "from an intact step without a traceback."]
  with open(os.path.join(_OUT.value, "table.md"), "w") as f:
    f.write("# Reliability battery\n\n" + "\n".join(summary) + "\n")
    for name, rows in parts.items():
      f.write(f"\n## {name}\n\n" + markdown_table(rows, list(rows[0])) + "\n")
  print("\n".join(summary))
  print(f"wrote {_OUT.value}/table.md and results.json")


if __name__ == "__main__":
  cli.run(main)
