"""Every registered built-in teacher, built at a tiny size with random weights."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from sendvae_cli.errors import UserError
from sendvae_cli.registry import Registry
from sendvae_cli.teachers import Teacher

REGISTRY = Registry(load_outside=False)
BUILTIN = [n for n in REGISTRY.names("teacher") if REGISTRY.plugin_of("teacher", n) == "sendvae.teachers"]
# Prefix tokens each family's architecture puts before the patch tokens.
PREFIX = {"DINOv2": 1, "DINOv3": 5, "CLIP": 1, "SigLIP": 0, "MAE": 1, "I-JEPA": 0}


def tiny(name, seed=0):
    spec = REGISTRY.teacher(name)
    torch.manual_seed(seed)
    return spec, spec.build(random_weights=True, arch=spec.tiny)


def wrapped_module(teacher):
    (module,) = [m for n, m in teacher.named_children()]
    return module


def images(n=2, size=64, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", BUILTIN)
def test_tiny_teacher_contract(name):
    spec, teacher = tiny(name)
    assert isinstance(teacher, Teacher)
    for size, grid in ((64, 4), (32, 2)):
        tokens = teacher(images(size=size))
        assert tokens.shape == (2, grid * grid, teacher.width)
        assert torch.isfinite(tokens).all()
    assert teacher.input_size(256) == (16 * spec.patch_size, 16 * spec.patch_size)  # REPA: 224 for patch 14
    # Frozen: no gradients, stays in eval mode even when a training loop calls .train().
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    with pytest.raises(ValueError, match="multiple of 16"):
        teacher(images(size=40))


@pytest.mark.parametrize("name", BUILTIN)
def test_prefix_tokens_are_dropped(name):
    spec, teacher = tiny(name)
    pixels = teacher.preprocess(images(size=64))
    ours = teacher.tokens(pixels)
    module = wrapped_module(teacher)
    if spec.family == "CLIP":
        # Against open_clip's own forward at the tower's native size (no position resampling).
        native = module.image_size[0] if isinstance(module.image_size, tuple) else module.image_size
        pixels = teacher.preprocess(images(size=native // spec.patch_size * 16))
        module.output_tokens = True
        _, reference = module(pixels)
        ours = teacher.tokens(pixels)
        assert torch.allclose(ours, reference, atol=1e-5)
        full = module.positional_embedding.shape[0]  # CLS + patches at the native size
    elif spec.family in ("SigLIP", "I-JEPA"):
        full = module(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state.shape[1]
    else:
        everything = module.forward_features(pixels)
        full = everything.shape[1]
        assert torch.equal(everything[:, -ours.shape[1]:], ours)
    prefix = 5 if name.endswith("-reg") else PREFIX[spec.family]  # CLS + 4 registers
    assert full == ours.shape[1] + prefix


@pytest.mark.parametrize("name", BUILTIN)
def test_save_load_round_trip_through_teacher_weights(name, tmp_path):
    spec, teacher = tiny(name, seed=3)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in wrapped_module(teacher).state_dict().items()}, str(path))
    torch.manual_seed(99)  # a different init, overwritten by the file
    loaded = spec.build(weights=path, arch=spec.tiny)
    x = images(size=64)
    assert torch.equal(loaded(x), teacher(x))
    # The same through a plain torch file wrapped the way training scripts save.
    pt = tmp_path / "weights.pth"
    torch.save({"model": wrapped_module(teacher).state_dict()}, pt)
    assert torch.equal(spec.build(weights=pt, arch=spec.tiny)(x), teacher(x))


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    _, small = tiny("dinov2-s")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in wrapped_module(small).state_dict().items()}, str(path))
    spec = REGISTRY.teacher("mae-b")
    with pytest.raises(UserError, match=r"does not fit teacher 'mae-b'"):
        spec.build(weights=path, arch={"embed_dim": 64, "depth": 2, "num_heads": 2})
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable weights file"):
        spec.build(weights=bad, arch=spec.tiny)
    with pytest.raises(UserError, match="no such file"):
        spec.build(weights=tmp_path / "nothing.safetensors", arch=spec.tiny)


def test_missing_pretrained_weights_offline_name_the_file(tmp_path):
    """With no network and an empty cache, each library's default source fails with one clear line."""
    code = (
        "import json\n"
        "from sendvae_cli.registry import Registry\n"
        "from sendvae_cli.errors import WeightsNotFound\n"
        "r = Registry(load_outside=False)\n"
        "out = {}\n"
        "for name in ('dinov2-s', 'clip-b16', 'siglip-b16'):\n"
        "    try:\n"
        "        r.teacher(name).build()\n"
        "        out[name] = 'loaded?!'\n"
        "    except WeightsNotFound as e:\n"
        "        out[name] = str(e)\n"
        "print(json.dumps(out))\n"
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TORCH_HOME": str(tmp_path / "torch"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    messages = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "vit_small_patch14_dinov2.lvd142m" in messages["dinov2-s"]
    assert "google/siglip-base-patch16-224" in messages["siglip-b16"]
    assert "ViT-B-16" in messages["clip-b16"]
    for message in messages.values():
        assert "--teacher-weights" in message and "\n" not in message
