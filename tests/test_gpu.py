"""GPU-only paths: bf16 autocast on CUDA. Run on a GPU machine with `python -m pytest -m gpu -n 0`."""

import json

import h5py
import numpy as np
import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def needs_cuda():
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device")


def test_extract_bf16_on_cuda_matches_fp32_closely(tmp_path):
    args = ["extract", "shapes", "--teacher", "dinov2-s", "--random-weights", "--num-images", "64",
            "--resolution", "256", "--quiet"]
    run_cli(*args, "--device", "cuda", "--precision", "bf16", "--out", tmp_path / "bf16.h5")
    run_cli(*args, "--device", "cuda", "--precision", "fp32", "--out", tmp_path / "fp32.h5")
    with h5py.File(tmp_path / "bf16.h5") as a, h5py.File(tmp_path / "fp32.h5") as b:
        x, y = a["tokens"][:].astype(np.float32), b["tokens"][:].astype(np.float32)
    cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
    assert cos.mean() > 0.99


def test_train_vae_bf16_on_cuda_stays_finite(tmp_path):
    out = tmp_path / "run"
    run_cli("train-vae", "shapes", "--teacher", "dinov2-b", "--random-weights", "--vae", "f16d32-scratch",
            "--resolution", "256", "--num-images", "64", "--batch-size", "16", "--micro-batch", "8", "--steps", "6",
            "--log-every", "2", "--checkpoint-every", "3", "--device", "cuda", "--precision", "bf16", "--quiet",
            "--out", out)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(v is not None for r in rows for v in r.values())


def test_probe_on_cuda_agrees_with_cpu(tmp_path):
    """The linear probe trained on the GPU (table on the device) lands where the CPU one does."""
    from sendvae_cli.eval.linear_probe import ProbeSettings, fit_probe

    rng = np.random.default_rng(0)
    attributes = (rng.random((4000, 10)) < 0.3).astype(np.uint8)
    features = (attributes @ rng.normal(size=(10, 512)) + 0.5 * rng.normal(size=(4000, 512))).astype(np.float16)
    splits = np.repeat(np.array([0, 1, 2], dtype=np.int8), [3000, 500, 500])
    cpu = fit_probe(features, attributes, splits, ProbeSettings(device="cpu", epochs=30))
    gpu = fit_probe(features, attributes, splits, ProbeSettings(device="cuda", epochs=30))
    assert gpu.table_on_device
    assert abs(gpu.metrics["macro_f1"] - cpu.metrics["macro_f1"]) < 0.02
    assert gpu.metrics["macro_f1"] > 0.9
