"""scripts/study_obstruction.py end to end on a tiny sweep: the files it writes, and the
exact references in them against closed forms (slow: two trainings and exact flows)."""
import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM, STD, GAP_STDS, SEPARATIONS = 4000, 0.25, 1.0, (1.0, 2.0)
pytestmark = pytest.mark.slow


def study(tmp_path, *args):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "study_obstruction.py"), "--dims", "2",
       "--separations", ",".join(f"{s:g}" for s in SEPARATIONS), "--num", str(NUM),
       "--std", str(STD), "--gap_stds", str(GAP_STDS), "--flow_steps", "128",
       "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), *args],
      capture_output=True, text=True, cwd=ROOT, timeout=3600)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("obstruction")
  proc = study(tmp_path, "--steps", "150")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "out" / "results.json") as f:
    return tmp_path, json.load(f)


def test_writes_table_png_and_json(result):
  tmp_path, res = result
  rows = res["rows"]
  assert sorted((r["separation"], r["nfe"]) for r in rows) == [
      (s, k) for s in SEPARATIONS for k in (1, 2)]
  table = (tmp_path / "out" / "table.md").read_text()
  lines = [l for l in table.splitlines() if l.startswith("| 2 |")]
  assert len(lines) == 4 + 2  # every row, then the change 1 -> 2 NFE per separation
  header = next(l for l in table.splitlines() if l.startswith("| dim |"))
  col = [c.strip() for c in header.strip("|").split("|")].index("between")
  for line, r in zip(lines, rows):
    assert float(line.strip("|").split("|")[col]) == pytest.approx(r["between"], rel=1e-3)
  image = matplotlib.image.imread(tmp_path / "out" / "obstruction.png")
  assert image.shape[0] > 300 and image.shape[1] > 1000


def test_exact_references(result):
  _, res = result
  mc = lambda p: 4 * np.sqrt(p * (1 - p) / NUM) + 1e-3  # 4 sigma of a share of NUM samples
  for r in res["rows"]:
    sep = r["separation"]
    k = GAP_STDS
    closed = stats.norm.cdf(-k) - stats.norm.cdf(k - sep / STD)
    assert r["between_closed"] == pytest.approx(closed, rel=1e-6)
    # The exact map of Gaussian noise is the data distribution: both match the closed form.
    assert abs(r["between_data"] - closed) < mc(closed)
    assert abs(r["between_exact"] - closed) < mc(closed)
    assert r["mode_tv_exact"] < mc(0.5)
    assert abs(r["w_right_exact"] - 0.5) < mc(0.5)
    assert abs(r["low_density_exact"] - 0.01) < mc(0.01)
    assert r["log10_slope"] == pytest.approx(np.log10(STD * np.exp(sep ** 2 / (8 * STD ** 2))))
    assert r["min_lipschitz"] > 0
    for key in ("between", "low_density", "transport_rms", "mode_tv"):
      assert np.isfinite(r[key])


def test_exact_flow_straightens_less_with_separation(result):
  _, res = result
  first = {r["separation"]: r for r in res["rows"] if r["nfe"] == 1}
  s = [first[sep] for sep in SEPARATIONS]
  # S grows with the separation at every scale; the ratio S / E||z_1 - z_0||^2 only
  # up to about separation 2 in 2-D (8 std), after which the displacement grows faster.
  assert s[0]["S_exact"] < s[1]["S_exact"]
  assert s[0]["curv_exact"] < s[1]["curv_exact"]
  assert s[0]["log10_slope"] < s[1]["log10_slope"]
  # A single Gaussian N(0, 0.25^2 I) in 2-D has S = 2 * 0.25 (2 - pi/2) = 0.215: two
  # modes are always harder.
  assert s[0]["S_exact"] > 2 * STD * (2 - np.pi / 2)


def test_rerun_with_another_budget_is_refused(result):
  tmp_path, _ = result
  proc = study(tmp_path, "--steps", "151")
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "another config" in proc.stderr and "train.steps" in proc.stderr
  assert "--workdir" in proc.stderr
