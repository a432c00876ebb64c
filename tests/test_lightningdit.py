"""LightningDiT: parity with hustvl/LightningDiT's own forward and ODE sampler (fixture of their
outputs, tests/fixtures/make_lightningdit_fixture.py), their checkpoint layouts, and the model's
own invariants."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import assert_matches_fixture
from sendvae_cli.errors import UserError
from sendvae_cli.flow.samplers import ode_sample, ode_times
from sendvae_cli.generators.export import load_generator_export, save_generator_export
from sendvae_cli.generators.lightningdit import LightningDiT

FIXTURE = Path(__file__).parent / "fixtures" / "lightningdit_tiny.safetensors"


def _fixture():
    with safe_open(str(FIXTURE), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return json.loads(meta["runs"]), state, tensors


RUNS, STATE, TENSORS = _fixture()


@pytest.fixture
def their_checkpoint(tmp_path):
    """The fixture's weights as their train.py saves them (EMA = the weights, `model` perturbed)."""
    raw = {k: (v + 0.05 if k == "final_layer.linear.bias" else v) for k, v in STATE.items()}
    path = tmp_path / "0000100.pt"
    torch.save({"model": raw, "ema": STATE, "opt": {}, "config": {"model": {"model_type": "LightningDiT-tiny/2"}}},
               path)
    return path


def test_their_checkpoint_loads_with_every_switch_read_off_the_tensors(their_checkpoint, tmp_path):
    loaded = load_generator_export(their_checkpoint)
    arch = loaded.arch
    assert isinstance(loaded.model, LightningDiT) and loaded.generator == "LightningDiT-tiny/2"
    assert (arch["input_size"], arch["in_channels"], arch["patch_size"], arch["depth"], arch["width"],
            arch["heads"]) == (8, 6, 2, 2, 64, 2)
    assert arch["qk_norm"] and arch["swiglu"] and arch["rope"] and arch["rmsnorm"] and not arch["wo_shift"]
    assert loaded.num_classes == 10 and loaded.model.null_class == 10 and loaded.latent_mean is None
    assert loaded.meta["weights"] == "ema"
    # A bare state dict (the released file holds {"ema"} only, or nothing but the weights).
    torch.save(STATE, tmp_path / "bare.pt")
    bare = load_generator_export(tmp_path / "bare.pt").model
    assert torch.equal(bare.final_layer.linear.bias, loaded.model.final_layer.linear.bias)


def test_forward_matches_theirs_in_our_time_convention(their_checkpoint):
    """Their network at their time s is ours at t = 1 - s, with the velocity's sign turned."""
    model = load_generator_export(their_checkpoint).model
    x, s, y = TENSORS["forward.x"], TENSORS["forward.s"], TENSORS["forward.y"]
    with torch.no_grad():
        v = model(x, 1 - s, y)
    assert_matches_fixture(-v, TENSORS["forward.u"])


@pytest.mark.parametrize("name", list(RUNS))
def test_ode_sampler_matches_theirs(their_checkpoint, name):
    """Their Euler ODE with timestep shift, CFG interval start and CFG on 3 channels."""
    run = RUNS[name]
    model = load_generator_export(their_checkpoint).model
    guided = run["cfg_scale"] > 1
    out = ode_sample(model, TENSORS[f"{name}.z"], TENSORS[f"{name}.y"], steps=run["num_steps"] - 1,
                     cfg_scale=run["cfg_scale"], guidance_high=1 - run["cfg_interval_start"] if guided else 1.0,
                     null_class=model.null_class, cfg_channels=3 if guided else None,
                     timestep_shift=run["timestep_shift"] or 1.0)
    assert_matches_fixture(out.float(), TENSORS[f"{name}.out"])


def test_shifted_grid_is_their_formula_in_our_time():
    times = ode_times(8, shift=0.3)
    u = torch.linspace(0, 1, 9, dtype=torch.float64)
    assert torch.allclose(1 - times, 0.3 * u / (1 - 0.7 * u))
    assert times[0] == 1 and times[-1] == 0 and (times[1:] < times[:-1]).all()
    assert torch.equal(ode_times(4, shift=1.0), ode_times(4))


def test_export_roundtrip_and_variants(tmp_path):
    torch.manual_seed(0)
    for switches in ({}, {"swiglu": False, "rope": False, "rmsnorm": False, "wo_shift": True, "qk_norm": True}):
        model = LightningDiT(input_size=4, in_channels=4, patch_size=1, depth=2, width=32, heads=2, num_classes=3,
                             projector_dims=[8], encoder_depth=1, projector_width=16, **switches)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        folder = save_generator_export(tmp_path / str(len(switches)), model, generator="LightningDiT-custom")
        loaded = load_generator_export(folder).model
        x, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([0, 3])
        assert torch.equal(loaded(x, t, y), model(x, t, y))
        v, projected = model.forward_with_projections(x, t, y)
        assert torch.equal(v, model(x, t, y)) and projected[0].shape == (2, 16, 8)


def test_a_checkpoint_that_does_not_fit_is_one_line(tmp_path):
    state = dict(STATE)
    state["blocks.1.mlp.w3.weight"] = torch.zeros(3, 3)
    torch.save({"ema": state}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="does not fit the LightningDiT"):
        load_generator_export(tmp_path / "bad.pt", option="MODEL")


def test_released_size_has_their_parameter_count():
    """LightningDiT-XL/1 on VA-VAE's 32 x 16 x 16 latents: hustvl's model has 675,256,736 parameters,
    counting its fixed `pos_embed` (a frozen parameter there, a buffer here: 256 x 1152 values)."""
    from sendvae_cli.registry import Registry

    with torch.device("meta"):
        model = Registry(load_outside=False).generator("LightningDiT-XL/1").build(input_size=16, in_channels=32,
                                                                                num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) + model.pos_embed.numel() == 675_256_736
    assert model.state_dict()["feat_rope.freqs_cos"].shape == (256, 72)
