"""benchmarks/gpu_acceptance.py: the one command a lent GPU runs. Here, its --smoke run (the same
steps on CPU at toy sizes) must pass and report every row, so that the script still works the day a
GPU comes; and its user errors are one line."""

import json
import os
import subprocess
import sys

from conftest import REPO, one_line_error

SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"

# Every promise the GPU run settles, one row each (the list).
ROWS = [
    "tests.gpu", "tests.attention-parity",
    "train-sit.xl1.throughput", "train-sit.xl1.mfu", "train-sit.xl1.whole-vs-bare",
    "train-sit.xl1.xformers-vs-sdpa", "train-sit.xl1.memory", "train-sit.xl1.compile", "train-sit.xl1.vs-repae",
    "train-sit.xl2.throughput", "train-sit.xl2.mfu", "train-sit.xl2.whole-vs-bare", "train-sit.xl2.memory",
    "train-vae.throughput", "train-vae.mfu", "train-vae.memory",
    "sample.throughput", "sample.vs-repae",
    "fid.inception", "fid.teacher",
    "extract.throughput",
    "ddp.torchrun", "ddp.ddp-step",
]
# What a CPU can measure; the rest needs CUDA, xformers or a REPA-E checkout, and says so.
MEASURED = [
    "train-sit.xl1.throughput", "train-sit.xl1.mfu", "train-sit.xl1.whole-vs-bare",
    "train-sit.xl2.throughput", "train-sit.xl2.mfu", "train-sit.xl2.whole-vs-bare",
    "train-vae.throughput", "train-vae.mfu", "sample.throughput", "fid.inception", "fid.teacher",
    "extract.throughput", "ddp.torchrun", "ddp.ddp-step",
]


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_smoke_run_passes_and_reports_every_row(tmp_path):
    proc = run("--smoke", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-report.json").read_text())
    assert report["mode"] == "smoke" and report["device"]["torch"] and "cpu" in report["device"]
    rows = {r["id"]: r for r in report["rows"]}
    assert list(rows) == ROWS
    assert {r["status"] for r in rows.values()} <= {"ok", "short", "skipped"}, \
        [(r["id"], r["note"]) for r in rows.values() if r["status"] not in ("ok", "short", "skipped")]
    for id in MEASURED:
        assert rows[id]["status"] in ("ok", "short") and rows[id]["figure"] and rows[id]["value"] is not None, rows[id]
    for id in set(ROWS) - set(MEASURED):
        assert rows[id]["status"] == "skipped" and rows[id]["note"], rows[id]
    assert rows["ddp.ddp-step"]["status"] == "ok" and "gloo" in rows["ddp.ddp-step"]["figure"]
    assert set(report["steps"]) == {"tests", "train-sit", "train-vae", "sample", "fid", "extract", "ddp"}
    table = (tmp_path / "gpu-report.md").read_text()
    assert table.startswith("| step | row | figure | goal | status | note |") and len(table.splitlines()) == len(ROWS) + 2
    assert "| step | row |" in proc.stdout  # the table is printed too
    assert (tmp_path / "logs" / "train-sit-xl1.log").exists()


def test_user_errors_are_one_line(tmp_path):
    one_line_error(run("--only", "tests,bogus", "--out", tmp_path), "--only", "'bogus'", "train-sit")
    one_line_error(run("--repae", tmp_path, "--out", tmp_path), "--repae", "not a REPA-E checkout")
    one_line_error(run("--smoke", "--repae", tmp_path, "--out", tmp_path), "--repae is for the GPU run")


def test_without_cuda_the_gpu_run_points_to_the_smoke_run(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    one_line_error(proc, "no CUDA device", "--smoke")
