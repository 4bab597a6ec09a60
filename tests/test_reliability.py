"""Trust in long runs: one writer per workdir, damaged checkpoints found and passed over,
no non-finite state saved, and a full disk reported in one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toy
from meanflow_jax import training
from meanflow_jax.errors import MeanFlowError, NonFiniteError
from meanflow_jax.training import builders, inference, loop
from tests.test_training import _leaves, override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model.mlp.width": 16, "model.mlp.depth": 1, "model.mlp.time_dim": 8,
        "train.batch_size": 16, "train.log_every": 2, "train.checkpoint_every": 2,
        "train.sample_every": 0}
TINY_FLAGS = [f"--config.{k}={v}" for k, v in TINY.items()]
LOCK = "lock.0"  # the lock file of process 0 of a run


def tiny(**overrides):
  """configs/toy.py shrunk to a 16-wide MLP; the scripts below train the same model."""
  return override(toy.get_config(), {**TINY, **overrides})


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _train_script(workdir, *flags):
  """scripts/train.py on the tiny toy model, running until it is stopped."""
  return subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", "configs/toy.py",
       "--workdir", str(workdir), *TINY_FLAGS, "--config.train.steps=1000000",
       "--config.train.checkpoint_every=20", "--config.train.log_every=20", *flags],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, workdir, step=20):
  """Waits until `proc` has committed checkpoint `step` (its lock is then taken)."""
  done = os.path.join(workdir, "checkpoints", str(step))
  while not os.path.exists(done):
    if proc.poll() is not None:
      pytest.fail(f"the first run ended early: {proc.communicate()[1][-3000:]}")
    time.sleep(0.05)


# --- one writer per workdir ---------------------------------------------------------------

def test_second_writer_is_refused_while_the_first_runs(tmp_path):
  work = tmp_path / "run"
  first = _train_script(work)
  try:
    _wait_for_checkpoint(first, work)
    config_before = (work / "config.json").read_bytes()
    with pytest.raises(MeanFlowError) as info:
      training.train(tiny(**{"optimizer.lr": 5e-3, "train.steps": 30}), str(work))
    message = str(info.value)
    assert "\n" not in message and f"pid {first.pid}" in message, message
    assert "--workdir" in message  # how to proceed
    assert (work / "config.json").read_bytes() == config_before
    assert first.poll() is None  # the first run goes on
  finally:
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=1800)
  assert first.returncode == 128 + signal.SIGTERM, err[-3000:]
  assert not (work / LOCK).exists()  # released on SIGTERM
  assert json.loads((work / "config.json").read_bytes())["optimizer"]["lr"] == tiny().optimizer.lr


def test_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
  work = tmp_path / "run"
  first = _train_script(work)
  try:
    _wait_for_checkpoint(first, work)
  finally:
    first.kill()
    first.communicate(timeout=1800)
  assert (work / LOCK).exists(), "kill -9 left no lock file behind"
  assert json.loads((work / LOCK).read_text())["pid"] == first.pid
  last = _steps(work)[-1]
  state = training.train(tiny(**{"train.steps": last + 2}), str(work))
  assert int(state.step) == last + 2
  err = capsys.readouterr().err
  taken = [l for l in err.splitlines() if f"pid {first.pid}" in l]
  assert len(taken) == 1 and "taking it over" in taken[0], err
  assert not (work / LOCK).exists()  # released on a normal exit


# --- damaged checkpoints ------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A run with checkpoints 2 and 4, the raw parameters of each, and the parameters of
  a run that went straight to step 6."""
  base = tmp_path_factory.mktemp("base")
  training.train(tiny(**{"train.steps": 4}), str(base))
  straight = training.train(tiny(**{"train.steps": 6}), str(tmp_path_factory.mktemp("straight")))
  params = {s: inference.load_run(str(base), params="raw", step=s).params for s in (2, 4)}
  return base, params, straight


def _copy(base, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(base, work)
  return work


def _flip_quietly(step_dir):
  """Flips one bit of one stored parameter so that Orbax reads it back without a word.

  The state is read with Orbax, one float of the output layer's kernel changed, and the
  state written back in Orbax's own format: the bytes decode cleanly, as silent damage
  on a disk or in a copy would, and only the checksums saved with the step can tell.
  (Flipping bytes of the files in place hits compressed data or index nodes whose own
  checks fail loudly, or, depending on the layout Orbax chose, data it does not read.)
  """
  import orbax.checkpoint as ocp
  state_dir = os.path.join(step_dir, "state")
  with ocp.StandardCheckpointer() as c:
    tree = c.restore(state_dir)
  kernel = np.array(tree["params"]["params"]["out"]["kernel"])
  kernel.view(np.uint32)[3, 1] ^= np.uint32(1 << 20)
  tree["params"]["params"]["out"]["kernel"] = kernel
  with ocp.StandardCheckpointer() as c:
    c.save(state_dir + ".rewritten", tree)
  shutil.rmtree(state_dir)
  os.rename(state_dir + ".rewritten", state_dir)


def _flip_loudly(step_dir):
  """Flips 8 bytes in the middle of every data file of the state (the arrays and the
  index that finds them): they no longer decode."""
  for path in [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
               for f in fs if os.path.basename(r) == "d"]:
    b = bytearray(open(path, "rb").read())
    for i in range(len(b) // 2, min(len(b), len(b) // 2 + 8)):
      b[i] ^= 0x55
    open(path, "wb").write(bytes(b))


def _empty(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


def _garbage(*parts):
  def damage(step_dir):
    with open(os.path.join(step_dir, *parts), "wb") as f:
      f.write(b"\xff\xfe\x00 not json \x83" * 7)
  return damage


DAMAGE = {"flipped bytes": _flip_quietly, "unreadable arrays": _flip_loudly,
          "empty step folder": _empty, "garbage config": _garbage("config", "metadata"),
          "garbage state metadata": _garbage("state", "_METADATA")}


def _damage_lines(err, step):
  return [l for l in err.splitlines() if f"checkpoints/{step}" in l and "damaged" in l]


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(runs, tmp_path, capsys,
                                                                         case):
  base, params, straight = runs
  work = _copy(base, tmp_path)
  damaged = os.path.join(work, "checkpoints", "4")
  DAMAGE[case](damaged)
  files_before = {os.path.relpath(os.path.join(r, f), damaged): open(os.path.join(r, f), "rb").read()
                  for r, _, fs in os.walk(damaged) for f in fs}
  capsys.readouterr()

  # Sampling: the newest intact step, said once, and the damaged one left as it is.
  run = inference.load_run(str(work), params="raw")
  for a, b in zip(_leaves(run.params), _leaves(params[2])):
    np.testing.assert_array_equal(a, b)
  assert inference.load_config(str(work)).train.steps == 4
  err = capsys.readouterr().err
  lines = _damage_lines(err, 4)
  assert lines and all("step 2" in l for l in lines), err
  assert len([l for l in err.splitlines() if l.startswith("warning:")]) <= 2, err
  assert os.path.isdir(damaged)
  with pytest.raises(MeanFlowError, match="checkpoints/4 is damaged"):
    inference.load_run(str(work), step=4)  # asked for by number: no other step instead

  # Training: resumes from step 2 and ends where a straight run ends; the damaged step is
  # moved aside, not deleted.
  state = training.train(tiny(**{"train.steps": 6}), str(work))
  for a, b in zip(_leaves(state), _leaves(straight)):
    np.testing.assert_array_equal(a, b)
  err = capsys.readouterr().err
  lines = _damage_lines(err, 4)
  assert len(lines) == 1 and "resuming from step 2" in lines[0], err
  assert _steps(work) == [2, 4, 6]
  kept = work / "damaged_checkpoints" / "4"
  files_after = {os.path.relpath(os.path.join(r, f), kept): open(os.path.join(r, f), "rb").read()
                 for r, _, fs in os.walk(kept) for f in fs}
  assert files_after == files_before


def test_no_intact_checkpoint_is_one_line(runs, tmp_path):
  base, _, _ = runs
  work = _copy(base, tmp_path)
  _empty(os.path.join(work, "checkpoints", "4"))
  _flip_quietly(os.path.join(work, "checkpoints", "2"))
  for attempt in (lambda: inference.load_run(str(work)),
                  lambda: training.train(tiny(**{"train.steps": 6}), str(work))):
    with pytest.raises(MeanFlowError) as info:
      attempt()
    message = str(info.value)
    assert "\n" not in message and "checkpoints/4" in message and "checkpoints/2" in message, message
  assert _steps(work) == [2, 4]  # nothing deleted nor moved


def test_checkpoints_without_checksums_still_load(runs, tmp_path, capsys):
  """Runs saved before checksums existed: unverified, but they load and resume."""
  base, params, straight = runs
  work = _copy(base, tmp_path)
  for s in (2, 4):
    shutil.rmtree(os.path.join(work, "checkpoints", str(s), "checksums"), ignore_errors=True)
  run = inference.load_run(str(work), params="raw")
  for a, b in zip(_leaves(run.params), _leaves(params[4])):
    np.testing.assert_array_equal(a, b)
  state = training.train(tiny(**{"train.steps": 6}), str(work))
  for a, b in zip(_leaves(state), _leaves(straight)):
    np.testing.assert_array_equal(a, b)
  assert "damaged" not in capsys.readouterr().err


@pytest.mark.parametrize("on_host", [False, True])  # the jitted pass, NumPy for small states
def test_checksums_equal_a_numpy_reference_and_see_one_flipped_bit(on_host):
  from meanflow_jax.training import checkpoint as ckpt_lib

  def reference(x):
    """The checksum pair of `ckpt_lib.leaf_checksums`, in NumPy."""
    x = np.asarray(x)
    if x.dtype.itemsize == 2:
      u = x.view(np.uint16).astype(np.uint64)
    else:
      u = x.view(np.uint32).astype(np.uint64)
    u = u.reshape(-1)
    mask = (1 << 32) - 1

    def fmix(h):
      h = h ^ (h >> 16)
      h = (h * 0x85EBCA6B) & mask
      h = h ^ (h >> 13)
      h = (h * 0xC2B2AE35) & mask
      return h ^ (h >> 16)

    i = np.arange(u.size, dtype=np.uint64)
    s1 = int(np.sum((u * (fmix(i) | 1)) & mask) & mask)
    s2 = int(np.sum(fmix(u ^ fmix(i ^ 0x9E3779B9))) & mask)
    return [s1, s2]

  rng = np.random.default_rng(0)
  tree = {"w": rng.normal(size=(5, 7)).astype(np.float32),
          "b": jnp.asarray(rng.normal(size=(3,)), jnp.bfloat16),
          "step": np.int32(12345), "empty": np.zeros((0, 4), np.float32),
          "flag": np.array([True, False, True]), "u8": np.arange(5, dtype=np.uint8)}
  checksums = lambda tree: ckpt_lib.state_checksums(tree, on_host=on_host)
  finite, sums = checksums(tree)
  assert all(finite.values()) and set(sums) == {f"['{k}']" for k in tree}
  for k in tree:
    want = reference(tree[k].astype(np.uint32) if k in ("flag", "u8") else tree[k])
    assert sums[f"['{k}']"] == want, k
  flipped = tree["w"].copy()
  flipped.view(np.uint32)[3, 4] ^= 1 << 17
  assert checksums(dict(tree, w=flipped))[1]["['w']"] != sums["['w']"]
  moved = tree["w"].copy()
  moved[[0, 1]] = moved[[1, 0]]  # the same values in other places
  assert checksums(dict(tree, w=moved))[1]["['w']"] != sums["['w']"]
  for v in (np.inf, np.nan):
    bad = tree["w"].copy()
    bad[2, 2] = v
    assert not checksums(dict(tree, w=bad))[0]["['w']"]
    half = np.asarray(tree["b"]).copy()
    half[1] = v
    assert not checksums(dict(tree, b=half))[0]["['b']"]


def test_small_states_are_summed_on_the_host_and_others_on_the_device():
  from meanflow_jax.training import checkpoint as ckpt_lib
  small = [np.zeros((3, 4), np.float32), jnp.zeros(5, jnp.bfloat16), np.int32(3)]
  assert ckpt_lib._fits_host(small)
  assert not ckpt_lib._fits_host(small + [jax.random.key(0)])  # key data: the device's words
  assert not ckpt_lib._fits_host(small + [np.zeros(2, np.complex64)])
  big = jax.ShapeDtypeStruct((ckpt_lib.HOST_WORDS + 1,), jnp.float32)
  assert not ckpt_lib._fits_host(small + [big])


# --- a non-finite state is never saved -----------------------------------------------------

def _poison(monkeypatch, field, from_step):
  """Makes `field` ("params" or "ema_params") of the state NaN from update `from_step` on,
  while that update's loss and gradient stay finite."""
  real = builders.train_step

  def poisoned(state, *args, **kwargs):
    new, metrics = real(state, *args, **kwargs)
    nan = jnp.where(new.step >= from_step, jnp.nan, 0.0)
    return new.replace(**{field: jax.tree.map(lambda p: p + nan, getattr(new, field))}), metrics

  monkeypatch.setattr(builders, "train_step", poisoned)


def test_non_finite_parameters_of_the_first_update_are_not_saved(tmp_path, monkeypatch):
  _poison(monkeypatch, "params", 1)
  with pytest.raises(NonFiniteError) as info:
    training.train(tiny(**{"train.steps": 5, "train.checkpoint_every": 1}), str(tmp_path))
  message = str(info.value)
  assert "step 1" in message and "no checkpoint was saved yet" in message, message
  assert "step None" not in message
  assert _steps(tmp_path) == []
  assert not (tmp_path / LOCK).exists()  # released on an error


def test_non_finite_ema_is_not_saved_and_the_last_checkpoint_is_good(tmp_path, monkeypatch):
  # The EMA never feeds the loss: only a check of the saved state itself sees it.
  _poison(monkeypatch, "ema_params", 3)
  with pytest.raises(NonFiniteError) as info:
    training.train(tiny(**{"train.steps": 8, "train.checkpoint_every": 1}), str(tmp_path))
  message = str(info.value)
  assert "step 3" in message and "last checkpoint (step 2)" in message, message
  assert "ema_params" in message
  assert _steps(tmp_path) == [1, 2]
  monkeypatch.undo()
  run = inference.load_run(str(tmp_path), params="ema")
  assert all(np.isfinite(x).all() for x in _leaves(run.params))


# --- a full disk ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
  """A 4 MiB tmpfs (needs root; skipped otherwise)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4096k", "tmpfs", str(mount)],
                        capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs to fill (needs root): {proc.stderr.strip()}")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount, leave):
  """Writes a file that leaves `leave` bytes free on `mount`."""
  st = os.statvfs(mount)
  with open(os.path.join(mount, "filler"), "wb") as f:
    f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_full_disk_stops_at_that_save_in_one_line(small_disk):
  work = small_disk / "run"
  script = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config",
            "configs/toy.py", "--workdir", str(work), *TINY_FLAGS,
            "--config.train.log_every=100"]
  # The runs before and after are trained here; the one that meets the full disk is the
  # script a user runs, whose stderr is the point.
  training.train(tiny(**{"train.log_every": 100, "train.steps": 2}), str(work))
  _fill(small_disk, 16 * 1024)  # the logs and lock fit, a checkpoint (~150 KB) does not
  full = subprocess.run(script + ["--config.train.steps=8"], cwd=ROOT, capture_output=True,
                        text=True, timeout=1800)
  lines = full.stderr.strip().splitlines()
  assert full.returncode not in (0, 1) and full.returncode > 0, full.stderr[-3000:]
  assert "Traceback" not in full.stderr and len(lines) < 20, full.stderr[-3000:]
  assert lines[-1].startswith("error:") and "checkpoint 4" in lines[-1], lines[-1]
  assert "No space left on device" in lines[-1] and str(work / "checkpoints") in lines[-1]
  assert not (work / LOCK).exists()
  os.remove(small_disk / "filler")
  assert _steps(work) == [2]
  run = inference.load_run(str(work), params="raw")
  assert all(np.isfinite(x).all() for x in _leaves(run.params))
  # With space again, the run resumes.
  training.train(tiny(**{"train.log_every": 100, "train.steps": 4}), str(work))
  assert _steps(work) == [2, 4]
