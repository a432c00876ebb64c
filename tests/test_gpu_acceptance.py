"""benchmarks/gpu_acceptance.py: the one command a lent GPU runs. Here, its --smoke run (the same
steps on CPU at toy sizes) must pass and report every row, so that the script still works the day a
GPU comes; and its user errors are one line."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace

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
    # Caps five times the smoke run's own: on a CI machine busy with the other tests' processes a
    # step may take several times its quiet time, and this test is about the script, not the timing.
    proc = run("--smoke", "--cap-scale", "5", "--out", tmp_path, timeout=1500)
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
    one_line_error(run("--smoke", "--cap-scale", "0", "--out", tmp_path), "--cap-scale 0.0", "above 0")


def test_without_cuda_the_gpu_run_points_to_the_smoke_run(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    one_line_error(proc, "no CUDA device", "--smoke")


# -- the GPU branch, on the figures the benchmarks write on a GPU ------------------------------------


def load_script():
    if "gpu_acceptance" not in sys.modules:  # a script, not a package module: loaded from its path
        spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_acceptance"] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules["gpu_acceptance"]


def step_figures(images_per_s, mfu, **extra):
    return {"wall_s": 1.0, "cpu_s": 1.0, "warmup_s": 2.0, "images_per_s": images_per_s,
            "achieved_tflops": 989 * mfu, "mfu": mfu, **extra}


# What train_sit_step.py, train_vae_step.py, sample_throughput.py, fid_throughput.py and
# extract_throughput.py write with --json on CUDA (the keys the report reads; made-up figures).
GPU_FIGURES = {
    "train-sit-xl1": {"batch": 128, "batches_tried": [256, 192, 128], "skipped": {},
                      "whole": step_figures(300.0, 0.47, peak_memory_gib=61.0), "bare": step_figures(310.0, 0.5),
                      "whole_sdpa": step_figures(280.0, 0.44), "whole_vs_bare": {"wall_s": 0.97, "cpu_s": 0.97},
                      "xformers_vs_sdpa": {"wall_s": 1.07, "cpu_s": 1.0},
                      "whole_compiled": step_figures(320.0, 0.5, graphs=2), "compiled_vs_eager": {"wall_s": 1.07}},
    "train-sit-repae": {"batch": 128, "whole": step_figures(300.0, 0.47), "repae": step_figures(250.0, 0.4),
                        "whole_vs_repae": {"wall_s": 1.2, "cpu_s": 1.2}},
    "train-sit-xl2": {"batch": 256, "skipped": {}, "whole": step_figures(900.0, 0.3, peak_memory_gib=40.0),
                      "bare": step_figures(950.0, 0.32), "whole_vs_bare": {"wall_s": 0.95, "cpu_s": 0.95}},
    "train-vae": {"images_per_s": 40.0, "batch": 32, "precision": "bf16", "utilisation": 0.2,
                  "achieved_tflops": 198.0, "peak_memory_gib": 30.0},
    "sample": {"images_per_s": 20.0, "seconds_for_50k_at_this_rate": 2500.0, "projected_images_per_s": 2.6,
               "projected_hours_for_50k": 5.3, "batch_size": 256, "steps": 25, "ratio_vs_repae": 1.5,
               "repae": {"images_per_s": 13.0, "projected_images_per_s": 1.73}},
    "fid": {"extractors": {"inception": {"seconds_for_50000_images": 20.0, "pipeline_images_per_s": 2500.0,
                                         "images": 5000, "ratio": 0.95},
                           "dinov2-l": {"seconds_for_50000_images": 150.0, "pipeline_images_per_s": 333.0,
                                        "images": 5000, "ratio": 0.97}}},
    "extract": {"ratio": 0.93, "extract_images_per_s": 900.0, "bare_images_per_s": 970.0, "teacher": "dinov2-b",
                "resolution": 256},
}


def test_gpu_rows_are_read_from_the_benchmarks_figures(tmp_path, monkeypatch):
    ga = load_script()
    device = {"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1, "xformers": "0.0.28", "dictdot": True,
              "python": "3.11", "torch": "2.5.1"}
    report = ga.Report(tmp_path / "gpu-report.json", "gpu", device, 480, ["gpu_acceptance.py"])
    ga.declare_rows(report, ga.GPU)
    runner = ga.Runner(tmp_path, 480, dict(os.environ))
    acceptance = ga.Acceptance(SimpleNamespace(smoke=False, repae=tmp_path, peak_tflops=None), ga.GPU, report,
                               runner)
    acceptance.step_deadline = time.monotonic() + 3600
    called = []

    def bench(name, script, args, cap_s):
        called.append((name, args))
        log = runner.logs / f"{name}.log"
        log.write_text("")
        return ga.Outcome(0, 1.0, log), GPU_FIGURES[name]

    monkeypatch.setattr(acceptance, "bench", bench)
    for step in (acceptance.train_sit, acceptance.train_vae, acceptance.sample, acceptance.fid, acceptance.extract):
        step()
    rows = {r.id: r for r in report.rows}
    status = {id: rows[id].status for id in rows if not id.startswith(("tests.", "ddp."))}
    assert status == {
        "train-sit.xl1.throughput": "ok", "train-sit.xl1.mfu": "ok", "train-sit.xl1.whole-vs-bare": "ok",
        "train-sit.xl1.xformers-vs-sdpa": "ok", "train-sit.xl1.memory": "ok", "train-sit.xl1.compile": "ok",
        "train-sit.xl1.vs-repae": "short", "train-sit.xl2.throughput": "ok", "train-sit.xl2.mfu": "ok",
        "train-sit.xl2.whole-vs-bare": "ok", "train-sit.xl2.memory": "ok", "train-vae.throughput": "ok",
        "train-vae.mfu": "ok", "train-vae.memory": "ok", "sample.throughput": "ok", "sample.vs-repae": "ok",
        "fid.inception": "ok", "fid.teacher": "short", "extract.throughput": "ok"}
    assert rows["train-sit.xl1.mfu"].figure == "47.0% (465 of 989 TFLOP/s)"
    assert rows["train-sit.xl1.mfu"].note == "batch 256 does not fit"
    assert rows["train-sit.xl1.memory"].figure == "61.0 GiB of 79"
    # REPA-E's step runs on the batch the first run found; the card's peak goes to every step benchmark.
    repae_args = dict(called)["train-sit-repae"]
    assert repae_args[repae_args.index("--batch") + 1] == "128" and str(tmp_path) in repae_args
    assert all(args[args.index("--peak-tflops") + 1] == "989.0" for name, args in called
               if name.startswith(("train-sit", "train-vae")))
    saved = json.loads((tmp_path / "gpu-report.json").read_text())
    assert [r["id"] for r in saved["rows"]] == ROWS and saved["device"]["name"] == "NVIDIA H100 80GB HBM3"


def test_a_compile_that_captures_nothing_fails_its_row(tmp_path, monkeypatch):
    ga = load_script()
    report = ga.Report(tmp_path / "r.json", "gpu", {"name": "NVIDIA H200", "memory_gib": 139.8, "xformers": None},
                       480, [])
    ga.declare_rows(report, ga.GPU)
    runner = ga.Runner(tmp_path, 480, dict(os.environ))
    acceptance = ga.Acceptance(SimpleNamespace(smoke=False, repae=None, peak_tflops=None), ga.GPU, report, runner)
    acceptance.step_deadline = time.monotonic() + 3600
    figures = json.loads(json.dumps(GPU_FIGURES))
    figures["train-sit-xl1"]["whole_compiled"]["graphs"] = 0
    del figures["train-sit-xl1"]["whole_sdpa"], figures["train-sit-xl1"]["xformers_vs_sdpa"]
    figures["train-sit-xl1"]["skipped"] = {"whole_sdpa": "xformers is not installed (pip install -e '.[cuda]')"}

    def bench(name, script, args, cap_s):
        (runner.logs / f"{name}.log").write_text("")
        return ga.Outcome(0, 1.0, runner.logs / f"{name}.log"), figures[name]

    monkeypatch.setattr(acceptance, "bench", bench)
    acceptance.train_sit()
    rows = {r.id: r for r in report.rows}
    assert rows["train-sit.xl1.compile"].status == "failed" and "no graph" in rows["train-sit.xl1.compile"].note
    assert rows["train-sit.xl1.xformers-vs-sdpa"].status == "skipped"
    assert "xformers" in rows["train-sit.xl1.xformers-vs-sdpa"].note
    assert rows["train-sit.xl1.vs-repae"].status == "skipped"


def test_gpu_tests_rows_come_from_pytest_lines_even_when_killed(tmp_path, monkeypatch):
    ga = load_script()
    report = ga.Report(tmp_path / "r.json", "gpu", {"name": "NVIDIA H100 80GB HBM3", "xformers": "0.0.28"}, 480, [])
    ga.declare_rows(report, ga.GPU)
    runner = ga.Runner(tmp_path, 480, dict(os.environ))
    acceptance = ga.Acceptance(SimpleNamespace(smoke=False, repae=None, peak_tflops=None), ga.GPU, report, runner)
    acceptance.step_deadline = time.monotonic() + 3600
    log = runner.logs / "tests.log"

    def run(name, cmd, cap_s):
        assert "-v" in cmd and "--ignore=tests/test_gpu_attention.py" not in cmd
        log.write_text("tests/test_gpu.py::test_a PASSED [ 25%]\ntests/test_gpu.py::test_b FAILED [ 50%]\n"
                       f"tests/test_gpu_attention.py::{ga.PARITY_TEST} PASSED [ 75%]\n"
                       "tests/test_gpu_attention.py::test_c[dtype0] ")
        return ga.Outcome(None, 80.0, log)  # killed at its cap during the fourth test

    monkeypatch.setattr(runner, "run", run)
    acceptance.tests()
    rows = {r.id: r for r in report.rows}
    assert (rows["tests.gpu"].status, rows["tests.gpu"].figure) == ("failed", "2 of 3 passed")
    assert "test_b" in rows["tests.gpu"].note
    assert rows["tests.attention-parity"].status == "ok"
    assert ga.pytest_outcomes("tests/t.py::test_x PASSED [ 50%]\ntests/t.py::test_x ERROR [ 50%]\n") == \
        {"test_x": "failed"}


def test_the_documented_command_is_one_line_and_its_options_exist():
    """DEVELOPERS.md and benchmarks/README.md give the same one line, and the script takes every option in it."""
    lines = [[line for line in (REPO / doc).read_text().splitlines() if "benchmarks/gpu_acceptance.py --out" in line]
             for doc in ("DEVELOPERS.md", "benchmarks/README.md")]
    assert len(lines[0]) == 1 and lines[0] == lines[1]
    command = lines[0][0]
    assert command.startswith('pip install -e ".[cuda,dev]"')  # xformers, and pytest for the GPU tests
    help_text = run("--help").stdout
    for option in re.findall(r"(--[a-z-]+)", command.split("gpu_acceptance.py", 1)[1]):
        assert option in help_text, option
