"""benchmarks/toy_thesis.py: its statistics, and (slow) its whole chain at toy size."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import toy_thesis  # noqa: E402


def test_pearson_and_spearman_agree_with_their_definitions():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert toy_thesis.pearson(x, 3 * x + 1) == pytest.approx(1.0)
    assert toy_thesis.pearson(x, -x) == pytest.approx(-1.0)
    assert toy_thesis.spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone, not linear
    assert toy_thesis.pearson(x, np.exp(x)) < 1.0
    assert list(toy_thesis.ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    ours = toy_thesis.pearson(a, b)
    assert ours == pytest.approx(float(np.corrcoef(a, b)[0, 1]))


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=12)
    y = -x + 0.5 * rng.normal(size=12)
    c = toy_thesis.correlation(x, y, rounds=500)
    for kind in ("pearson", "spearman"):
        assert -1 <= c[kind]["low"] <= c[kind]["r"] <= c[kind]["high"] <= 1
    assert c["pearson"]["high"] < 0  # a clear negative correlation stays negative
    assert toy_thesis.correlation(x, y, rounds=500) == c


def test_correlations_skip_missing_values_and_the_scatter_is_drawn(tmp_path):
    rows = [{"arm": f"r{i}", "probe_macro_f1": 0.1 * i, "in_training_probe": 0.1 * i if i else None,
             "fd": 10.0 - i, "sample_class_accuracy": None} for i in range(5)]
    table = toy_thesis.correlations(rows)
    assert set(table) == {"probe_macro_f1 ~ fd", "in_training_probe ~ fd"}
    assert table["probe_macro_f1 ~ fd"]["n"] == 5 and table["in_training_probe ~ fd"]["n"] == 4
    assert table["probe_macro_f1 ~ fd"]["pearson"]["r"] == pytest.approx(-1.0)
    assert toy_thesis.scatter(rows, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_toy_thesis_runs_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "thesis"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "toy_thesis.py"), "--out", str(out), "--seeds", "0",
                    "--recipes", "align-0", "align-0.3", "align-1", "--num-images", "64", "--vae-steps", "4",
                    "--sit-steps", "4", "--num-samples", "20", "--ref-images", "40", "--probe-images", "100",
                    "--recon-images", "16", "--eval-images", "60", "--sample-steps", "2", "--no-judge",
                    "--device", "cpu"], check=True, capture_output=True, text=True, timeout=1800, cwd=REPO)
    result = json.loads((out / "toy_thesis.json").read_text())
    assert [r["arm"] for r in result["runs"]] == ["align-0", "align-0.3", "align-1"]
    assert all(r["in_training_probe"] is not None and r["fd"] >= 0 for r in result["runs"])
    assert set(result["correlations"]) == {"probe_macro_f1 ~ fd", "in_training_probe ~ fd"}
    assert (out / "toy_thesis.png").is_file()
