"""`train-vae --eval-every`: evaluation rows in metrics.jsonl, exact under kill -9, OUT/best and
OUT/eval.png; `sendvae eval-vae` gives a finished VAE the same row."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import invoke, run_cli
from sendvae_cli.train.metrics import MetricsLog, read_metrics

BASE = ["train-vae", "shapes", "--teacher", "dinov2-s", "--random-weights", "--vae", "tiny", "--preset", "tiny",
        "--resolution", "32", "--num-images", "32", "--batch-size", "4", "--steps", "8", "--checkpoint-every", "2",
        "--sample-every", "8", "--log-every", "2", "--workers", "0"]
EVAL = ["--eval-data", "shapes", "--eval-images", "60", "--eval-every", "4", "--eval-extractor", "tv-mobilenet-v2"]
TIMINGS = ("images_per_s", "eval/seconds", "eval/probe_seconds")  # wall-clock figures: the only ones that differ between runs


def rows(run):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_metrics(run / "metrics.jsonl")]


def evaluations(run):
    return [r for r in rows(run) if "eval/probe_macro_f1" in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "ref"
    run_cli(*BASE, *EVAL, "--keep-best", "rfd", "--quiet", "--out", out)
    return out


def test_evaluation_rows_best_export_and_curves(reference):
    evals = evaluations(reference)
    assert [r["step"] for r in evals] == [4, 8]
    for r in evals:
        assert 0 <= r["eval/probe_macro_f1"] <= 1 and 0 <= r["eval/probe_micro_f1"] <= 1
        assert r["eval/psnr"] > 0 and -1 <= r["eval/ssim"] <= 1 and r["eval/rfd"] >= 0
    assert [r["step"] for r in rows(reference) if "recon" in r] == [2, 4, 6, 8]  # the losses are logged as before
    best = json.loads((reference / "best" / "vae.json").read_text())["provenance"]["best"]
    lowest = min(evals, key=lambda r: r["eval/rfd"])
    assert best == {"metric": "eval/rfd", "value": lowest["eval/rfd"], "step": lowest["step"]}
    assert (reference / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((reference / "config.json").read_text())
    assert config["eval_data"] == "shapes" and config["eval_every"] == 4


def test_evaluation_leaves_training_as_it_was(reference, tmp_path):
    plain = tmp_path / "plain"
    run_cli(*BASE, "--quiet", "--out", plain)
    assert (plain / "export" / "vae.safetensors").read_bytes() == (reference / "export" / "vae.safetensors").read_bytes()
    assert rows(plain) == [r for r in rows(reference) if "eval/probe_macro_f1" not in r]


def test_kill_9_during_an_evaluation_then_rerun_gives_the_same_rows(reference, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sendvae_cli", *BASE, *EVAL, "--keep-best", "rfd", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200"))
    deadline = time.time() + 300
    for line in proc.stdout:  # the line is printed as the evaluation starts; it takes seconds
        if "evaluating at step 4" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "latest").read_text() == "step-000002"  # step 4's checkpoint comes after its evaluation
    assert evaluations(out) == []  # nothing of the interrupted evaluation was logged
    run_cli(*BASE, *EVAL, "--keep-best", "rfd", "--quiet", "--out", out)
    assert rows(out) == rows(reference)
    assert (out / "best" / "vae.safetensors").read_bytes() == (reference / "best" / "vae.safetensors").read_bytes()


def test_a_resume_at_a_step_without_its_evaluation_runs_it_first(reference, tmp_path):
    out = tmp_path / "late"
    run_cli(*BASE, "--steps", "4", "--quiet", "--out", out)  # 4 steps (the last --steps counts), no evaluation
    run_cli(*BASE, *EVAL, "--quiet", "--out", out)  # resumed at step 4 with evaluations on
    assert evaluations(out) == evaluations(reference)


def test_eval_vae_gives_a_finished_vae_the_logged_row(reference, tmp_path):
    summary = tmp_path / "row.json"
    run_cli("eval-vae", reference / "export", "--eval-data", "shapes", "--eval-images", "60", "--eval-extractor",
            "tv-mobilenet-v2", "--random-weights", "--json", summary, "--quiet")
    (entry,) = json.loads(summary.read_text())["rows"]
    row = {k: v for k, v in entry["row"].items() if k not in TIMINGS}
    assert {k: v for k, v in evaluations(reference)[-1].items() if k != "step"} == row


@pytest.mark.parametrize("args, fragments", [
    (["--eval-every", "4"], ["--eval-every", "goes with --eval-data"]),
    (["--eval-data", "shapes", "--keep-best", "psnr"], ["--keep-best psnr", "probe", "rfd"]),
    (["--eval-data", "nosuchset"], ["--eval-data"]),
    (["--eval-data", "shapes", "--eval-extractor", "nosuch"], ["--eval-extractor nosuch"]),
    (["--eval-data", "shapes", "--eval-every", "0"], ["--eval-every"]),
])
def test_bad_evaluation_options_are_one_line(tmp_path, args, fragments):
    one_error(invoke(*BASE, *args, "--quiet", "--out", tmp_path / "bad"), *fragments)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def one_error(result, *fragments):
    """Exit code 2 and one `error:` line (after --random-weights' warning) holding every fragment."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and all(f in lines[0] for f in fragments), result.stderr


def test_eval_data_without_attributes_names_the_option(tmp_path):
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(folder / f"{i}.png")
    one_error(invoke(*BASE, "--eval-data", tmp_path / "images", "--quiet", "--out", tmp_path / "run"), "--eval-data",
              "has no attributes")


def test_metrics_log_drops_a_line_a_kill_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "a": 1.0}\n{"step": 4, "eval/probe_macro_f1": 0.5}\n{"step": 6, "a"')
    log = MetricsLog(path, resume_step=4)
    assert [r["step"] for r in log.rows] == [2, 4]
    log.write(6, {"a": 2.0})
    assert [r["step"] for r in read_metrics(path)] == [2, 4, 6]


def test_two_processes_share_the_evaluation_and_log_one_row(tmp_path):
    from test_torchrun import torchrun

    out = tmp_path / "two"
    torchrun(*BASE, *EVAL, "--steps", "4", "--quiet", "--out", out)
    (row,) = evaluations(out)
    assert row["step"] == 4
    summary = tmp_path / "row.json"
    run_cli("eval-vae", out / "export", "--eval-data", "shapes", "--eval-images", "60", "--eval-extractor",
            "tv-mobilenet-v2", "--random-weights", "--json", summary, "--quiet")
    one = json.loads(summary.read_text())["rows"][0]["row"]
    # Two shares of 30 images are batched apart from one process's 32 + 28: equal up to float rounding.
    for key in ("eval/psnr", "eval/ssim", "eval/rfd"):
        assert row[key] == pytest.approx(one[key], rel=1e-4, abs=1e-9), key
    assert row["eval/probe_macro_f1"] == pytest.approx(one["eval/probe_macro_f1"], abs=0.05)
