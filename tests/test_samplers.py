"""The flow samplers against REPA-E's own sampler outputs (tests/fixtures/README_samplers.md)."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sendvae_cli.flow.samplers import (function_evaluations, guided_at, ode_sample, ode_times, sde_sample,
                                       sde_times)
from sendvae_cli.generators.export import import_repa_checkpoint

from conftest import assert_matches_fixture

FIXTURE = Path(__file__).parent / "fixtures" / "repae_samplers_runs.safetensors"


def _fixture():
    with safe_open(str(FIXTURE), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return json.loads(meta["arch"]), json.loads(meta["runs"]), tensors


ARCH, RUNS, TENSORS = _fixture()


def _run(sampler_model_fn, name, run):
    x1, y = TENSORS[f"{name}.x1"], TENSORS[f"{name}.y"]
    common = dict(cfg_scale=run["cfg_scale"], guidance_low=run["guidance_low"],
                  guidance_high=run["guidance_high"], null_class=ARCH["num_classes"])
    if run["mode"] == "ode":
        return ode_sample(sampler_model_fn, x1, y, steps=run["steps"], heun=run["heun"], **common)
    noise = TENSORS[f"{name}.noise"]
    return sde_sample(sampler_model_fn, x1, y, steps=run["steps"], noise_fn=lambda i: noise[i], **common)


class Replay:
    """A model_fn that checks each call against REPA-E's recorded call and answers with its recorded output."""

    def __init__(self, name, calls):
        self.name, self.calls, self.k = name, calls, 0

    def __call__(self, x, t, y):
        key = f"{self.name}.call{self.k:02d}"
        assert self.k < self.calls, "more model calls than REPA-E's sampler made"
        assert x.dtype == torch.float32 and t.dtype == torch.float32
        assert x.shape == TENSORS[key + ".x"].shape, (self.k, x.shape)  # doubled exactly where theirs was
        assert_matches_fixture(x, TENSORS[key + ".x"])
        torch.testing.assert_close(t, TENSORS[key + ".t"], atol=0, rtol=0)
        assert torch.equal(y, TENSORS[key + ".y"])
        self.k += 1
        return TENSORS[key + ".v"]


RECORDED = [name for name, run in RUNS.items() if run["calls"] and f"{name}.call00.x" in TENSORS]


@pytest.mark.parametrize("name", RECORDED)
def test_step_by_step_against_repae(name):
    """Same model inputs at every call (batch doubling, times, labels incl. the null class) and same result."""
    run = RUNS[name]
    replay = Replay(name, run["calls"])
    out = _run(replay, name, run)
    assert replay.k == run["calls"]
    assert out.dtype == torch.float64
    assert_matches_fixture(out, TENSORS[f"{name}.out"])


def test_fixture_covers_the_protocol():
    assert {"ode_euler_cfg", "ode_heun_cfg", "sde_cfg"} <= set(RECORDED)
    assert RUNS["ode_heun_cfg"]["calls"] == function_evaluations("ode", RUNS["ode_heun_cfg"]["steps"], heun=True)
    assert RUNS["sde_cfg"]["calls"] == function_evaluations("sde", RUNS["sde_cfg"]["steps"])


def test_time_grids():
    assert ode_times(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert ode_times(2, start=0.5).tolist() == [0.5, 0.25, 0.0]


def test_ode_from_a_point_on_the_path_integrates_from_there():
    """From x_t = (1 - t) x + t eps, the exact velocity eps - x brings Euler back to x."""
    x, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    times = []

    def model_fn(state, t, y):
        times.append(float(t[0]))
        return (eps - x).to(state.dtype)

    start = 0.6
    out = ode_sample(model_fn, (1 - start) * x + start * eps, None, steps=3, start=start)
    assert times == pytest.approx([0.6, 0.4, 0.2])
    assert torch.allclose(out.float(), x, atol=1e-5)
    grid = sde_times(250)
    assert len(grid) == 251 and grid[0] == 1.0 and grid[-2] == pytest.approx(0.04) and grid[-1] == 0.0


def test_guidance_interval_is_closed_and_cfg_one_is_off():
    assert guided_at(0.5, 1.5, 0.5, 0.75) and guided_at(0.75, 1.5, 0.5, 0.75)
    assert not guided_at(0.8, 1.5, 0.5, 0.75) and not guided_at(0.49, 1.5, 0.5, 0.75)
    assert not guided_at(0.6, 1.0, 0.0, 1.0)


def test_single_pass_without_guidance_and_doubled_batch_only_inside_interval():
    batches = []

    def model_fn(x, t, y):
        batches.append((x.shape[0], float(t[0]), y.tolist()))
        return -x

    x1, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    ode_sample(model_fn, x1, y, steps=4, cfg_scale=1.0, null_class=10)
    assert [b for b, _, _ in batches] == [2, 2, 2, 2]
    batches.clear()
    ode_sample(model_fn, x1, y, steps=4, cfg_scale=2.0, guidance_low=0.3, guidance_high=0.6, null_class=10)
    assert [(b, t) for b, t, _ in batches] == [(2, 1.0), (2, 0.75), (4, 0.5), (2, 0.25)]
    assert batches[2][2] == [1, 2, 10, 10]  # the null class is num_classes


def test_unconditional_model_takes_no_labels():
    seen = []

    def model_fn(x, t, y):
        seen.append(y)
        return torch.zeros_like(x)

    out = sde_sample(model_fn, torch.zeros(1, 4, 8, 8), None, steps=3, noise_fn=lambda i: torch.zeros(1, 4, 8, 8))
    assert seen == [None, None, None] and torch.count_nonzero(out) == 0
    with pytest.raises(ValueError):
        ode_sample(model_fn, torch.zeros(1, 4, 8, 8), None, steps=2, cfg_scale=1.5)


def test_sde_noise_is_requested_in_step_order():
    asked = []

    def noise_fn(i):
        asked.append(i)
        return torch.zeros(1, 4, 8, 8)

    sde_sample(lambda x, t, y: torch.zeros_like(x), torch.zeros(1, 4, 8, 8), None, steps=5, noise_fn=noise_fn)
    assert asked == [0, 1, 2, 3]  # the final mean step draws none


def _fixture_model_as_checkpoint(tmp_path):
    """REPA-E's tiny SiT as the `.pt` their training writes, opened by sendvae's importer."""
    state = {k[len("model."):]: v for k, v in TENSORS.items() if k.startswith("model.")}
    path = tmp_path / "repae-tiny.pt"
    torch.save({"ema": state, "model": state, "args": argparse.Namespace(encoder_depth=ARCH["encoder_depth"])}, path)
    loaded = import_repa_checkpoint(path, heads=ARCH["num_heads"])
    torch.testing.assert_close(loaded.latent_mean, state["bn.running_mean"])
    torch.testing.assert_close(loaded.latent_std, state["bn.running_var"].sqrt())
    return loaded.model


@pytest.mark.parametrize("name", sorted(RUNS))
def test_imported_repae_sit_matches_their_sampler(name, tmp_path):
    """From the same noise (and SDE noise sequence), sendvae's SiT + samplers give REPA-E's samples."""
    model = _fixture_model_as_checkpoint(tmp_path)
    out = _run(model, name, RUNS[name])
    assert_matches_fixture(out, TENSORS[f"{name}.out"])
