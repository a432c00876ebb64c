"""The SiT model: shapes, REPA projections, labels, the size table and its registration."""

import json

import pytest
import torch

from sendvae_cli.generators.sit import SIT_MODELS, SiT, build_sit, sincos_2d


def tiny(**overrides):
    torch.manual_seed(0)
    kwargs = dict(input_size=8, in_channels=4, patch_size=2, depth=2, width=32, heads=2, num_classes=10,
                  encoder_depth=1, projector_dims=[16, 24], projector_width=32)
    return SiT(**{**kwargs, **overrides})


def randomise(model):
    """Move every weight off DiT's zero init, so outputs depend on all of them."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_forward_shapes_and_projections():
    model = randomise(tiny()).eval()
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 3, 10])
    v, projected = model.forward_with_projections(x, t, y)
    assert v.shape == x.shape
    assert [tuple(p.shape) for p in projected] == [(3, 16, 16), (3, 16, 24)]
    assert torch.equal(model(x, t, y), v)
    # A scalar time means the same time for every sample.
    assert torch.allclose(model(x, torch.tensor(0.3), y), model(x, torch.full((3,), 0.3), y))
    with pytest.raises(ValueError, match=r"\(B, 4, 8, 8\)"):
        model(torch.randn(1, 4, 16, 16), t[:1], y[:1])


def test_fresh_model_predicts_zero_and_blocks_start_as_identity():
    model = tiny().eval()  # adaLN-Zero: gates and the output layer start at zero
    assert model(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])).abs().max() == 0


def test_label_dropout_is_explicit_and_deterministic():
    model = randomise(tiny()).train()
    x, t, y = torch.randn(4, 4, 8, 8), torch.rand(4), torch.tensor([1, 2, 3, 4])
    assert torch.equal(model(x, t, y), model(x, t, y))  # no hidden randomness in train mode
    drop = torch.tensor([True, False, True, False])
    null = torch.full_like(y, model.null_class)
    assert torch.equal(model(x, t, y, drop_labels=drop), model(x, t, torch.where(drop, null, y)))
    masks = [model.label_drop_mask(10_000, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(*masks) and 0.08 < masks[0].float().mean() < 0.12
    no_null = tiny(class_dropout=0.0)
    assert no_null.null_class is None and no_null.y_embedder.embedding_table.num_embeddings == 10
    with pytest.raises(ValueError, match="no null class"):
        no_null(x, t, y, drop_labels=drop)


def test_arch_rebuilds_the_same_model_and_is_json():
    model = tiny(qk_norm=True)
    arch = json.loads(json.dumps(model.arch))
    again = SiT(**arch)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert "attention" not in arch and again.arch == model.arch


def test_state_dict_names_follow_repa():
    keys = set(tiny(qk_norm=True).state_dict())
    for key in ("x_embedder.proj.weight", "pos_embed", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
                "y_embedder.embedding_table.weight", "blocks.1.attn.qkv.weight", "blocks.1.attn.q_norm.weight",
                "blocks.1.attn.k_norm.bias", "blocks.1.attn.proj.weight", "blocks.0.mlp.fc1.weight",
                "blocks.0.mlp.fc2.bias", "blocks.0.adaLN_modulation.1.weight", "final_layer.linear.weight",
                "final_layer.adaLN_modulation.1.bias", "projectors.0.0.weight", "projectors.1.4.weight"):
        assert key in keys, key


def test_positions_are_the_mae_sincos_grid():
    pos = sincos_2d(8, 3)  # 3 x 3 grid, width 8: columns in the first half, rows in the second
    assert pos.shape == (9, 8)
    assert torch.allclose(pos[1, :4], torch.tensor([0.8414710, 0.0099998, 0.5403023, 0.9999500]), atol=1e-6)
    assert torch.allclose(pos[1, 4:], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(pos[3, 4:], pos[1, :4])  # token 3 is row 1, column 0


def test_size_table_and_parameter_counts():
    assert {"SiT-S/1", "SiT-B/2", "SiT-L/4", "SiT-XL/1", "SiT-tiny/1"} <= set(SIT_MODELS)
    model = build_sit("sit-tiny/2", input_size=4, in_channels=8, num_classes=3, projector_dims=[12])
    assert (model.arch["depth"], model.arch["width"], model.arch["heads"], model.patch_size) == (2, 64, 2, 2)
    mini = build_sit("SiT-mini/4", input_size=16, in_channels=4, num_classes=5, projector_dims=[12])
    assert (mini.arch["depth"], mini.arch["width"], mini.arch["heads"], mini.patch_size) == (4, 128, 4, 4)
    assert mini.arch["encoder_depth"] == 2 and mini.pos_embed.shape[-2] == 16  # the main job's 4x4 tokens
    with pytest.raises(KeyError, match="unknown SiT"):
        build_sit("SiT-XXL/1", input_size=4, in_channels=4)
    # SiT-B/2 on SD-VAE latents (32 x 32 x 4) without projectors: DiT-B/2's published 130M.
    with torch.device("meta"):
        b2 = build_sit("SiT-B/2", input_size=32, in_channels=4, num_classes=1000)
    trainable = sum(p.numel() for p in b2.parameters())
    assert 129_000_000 < trainable < 131_000_000


def test_generators_are_registered_without_torch(fresh_registry):
    import subprocess
    import sys

    code = ("import sys; from sendvae_cli.registry import Registry; r = Registry(load_outside=False); "
            "s = r.generator('sit-xl/1'); a = s.arch; print(len(r.names('generator')), s.family, a['depth'], "
            "a['width'], a['heads'], a['patch_size'], a['encoder_depth'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["28", "SiT", "28", "1152", "16", "1", "8", "False"]  # 18 SiT and 10 LightningDiT names
    from sendvae_cli.registry import Registry

    registry = Registry(load_outside=False)
    assert registry.plugin_of("generator", "SiT-B/1") == "sendvae.generators"
    model = registry.generator("SiT-tiny/1").build(input_size=4, in_channels=8, num_classes=5, projector_dims=[16])
    assert isinstance(model, SiT) and model.arch["encoder_depth"] == 1 and len(model.projectors) == 1
    assert registry.generator("SiT-B/2").arch["encoder_depth"] == 4
    assert registry.generator("SiT-L/2").arch["encoder_depth"] == 8
