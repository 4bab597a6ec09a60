"""The priors study end to end on a tiny budget (slow: six short trainings)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_study_priors_tiny(tmp_path):
  proc = subprocess.run(
      [sys.executable, "scripts/study_priors.py", "--config", "configs/digits.py",
       "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
       "--config.train.steps=20", "--config.train.checkpoint_every=20",
       "--config.train.log_every=10", "--config.train.sample_every=0",
       "--config.model.dit.hidden_size=32", "--config.model.dit.depth=1",
       "--config.model.dit.num_heads=2", "--num", "200", "--num_paths", "32",
       "--path_steps", "4", "--fm_nfe", "1,2"],
      capture_output=True, text=True, timeout=3600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.load(open(tmp_path / "out" / "results.json"))
  rows = out["rows"]
  assert len(rows) == 3 * 2 * 2  # (prior, coupling) x objective x NFE
  dist = {(r["prior"], r["coupling"]): r["pair_sq_dist"] for r in rows}
  # OT re-pairs the same noise more cheaply; the structured prior sits next to its image.
  assert (dist["lowfreq", "independent"] < dist["gaussian", "minibatch_ot"]
          < dist["gaussian", "independent"])
  # The polygon through the states is never shorter than its chord (up to float rounding).
  assert all(np.isfinite(r["clf_fd"]) and r["path_length_ratio"] >= 1.0 - 1e-5 for r in rows), [
      r["path_length_ratio"] for r in rows]
  for name in ("table.md", "priors.png", "curvature.png", "samples.png"):
    assert os.path.getsize(tmp_path / "out" / name) > 1000
