"""train-vae as a researcher uses it: trackers, SIGTERM and rerun, a failed then corrected start,
its config.json passed back with --config. In-process runs of a few tiny steps."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke
from sendvae_cli.train import loop

BASE = ["train-vae", "shapes", "--teacher", "dinov2-s", "--vae", "tiny", "--preset", "tiny", "--resolution", "32",
        "--num-images", "16", "--batch-size", "2", "--steps", "6", "--checkpoint-every", "4", "--sample-every", "3",
        "--log-every", "1", "--workers", "0", "--lpips-weight", "0"]
RUN = BASE + ["--random-weights"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("habits") / "whole"
    proc = invoke(*RUN, "--tracker", "tensorboard", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def weights(run):
    return load_file(str(run / "checkpoints" / "step-000006" / "weights.safetensors"))


def test_tensorboard_receives_scalars_grids_and_config(whole):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, proc = whole
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("align")] == [row["step"] for row in logged] == [1, 2, 3, 4, 5, 6]
    assert {"recon", "kl", "grad_norm", "images_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Images("recon")] == [3, 6]
    assert "config/text_summary" in events.Tags()["tensors"]
    assert "checkpoint step-000004: " in proc.stderr and "optimizer" in proc.stderr and "--keep N" in proc.stderr


def test_sigterm_then_rerun_matches_the_uninterrupted_run(whole, tmp_path, monkeypatch):
    out = tmp_path / "cut"
    real = loop.micro_batch_seed

    def scheduler_sends_sigterm_during_step_3(seed, step, micro):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(seed, step, micro)

    monkeypatch.setattr(loop, "micro_batch_seed", scheduler_sends_sigterm_during_step_3)
    proc = invoke(*RUN, "--out", out)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "SIGTERM received; stopped at step 3 of 6" in proc.stderr and "Rerun the same command" in proc.stderr
    assert (out / "checkpoints" / "latest").read_text() == "step-000003" and not (out / "export").exists()

    monkeypatch.setattr(loop, "micro_batch_seed", real)
    proc = invoke(*RUN, "--out", out)
    assert proc.returncode == 0 and "continuing at step 3 of 6" in proc.stderr
    reference, cut = weights(whole[0]), weights(out)
    assert all(torch.equal(reference[k], cut[k]) for k in reference)

    proc = invoke(*RUN, "--out", out)
    assert "already complete" in proc.stderr and "continuing" not in proc.stderr and "resuming" not in proc.stderr


def test_a_failed_start_leaves_the_folder_to_the_corrected_command(tmp_path):
    out = tmp_path / "run"
    failed = invoke(*BASE, "--out", out)  # no teacher weights on this machine
    assert failed.returncode == 2 and "pretrained weights not found" in failed.stderr
    corrected = invoke(*RUN, "--steps", "1", "--out", out)
    assert corrected.returncode == 0, corrected.stderr
    assert "no step was saved under its earlier configuration (random_weights: False there, True now" in corrected.stderr


def test_a_runs_config_json_reruns_it(whole, tmp_path):
    out = whole[0]
    proc = invoke("train-vae", "--config", out / "config.json", "--out", out)
    assert proc.returncode == 0 and "already complete" in proc.stderr  # the same configuration, exactly
    proc = invoke("train-vae", "--config", out / "config.json", "--lr", "2e-3", "--out", out)
    assert proc.returncode == 2 and "lr: 0.001 there, 0.002 now" in proc.stderr  # the flag won
