"""Whether a component's weights are on this machine, read from the caches' folders."""

from sendvae_cli.registry import get_registry
from sendvae_cli.weights import local_weights


def test_hub_snapshots_and_hub_checkpoints_are_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    registry = get_registry()
    teachers, vaes = registry.components["teacher"], registry.components["vae_base"]
    assert local_weights(teachers["dinov2-s"].spec) == "no"
    snapshot = tmp_path / "hub" / "models--timm--vit_small_patch14_dinov2.lvd142m" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert local_weights(teachers["dinov2-s"].spec) == "no"  # an empty snapshot holds nothing
    (snapshot / "model.safetensors").write_bytes(b"")
    assert local_weights(teachers["dinov2-s"].spec) == "yes"
    clip = tmp_path / "hub" / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / "x"
    clip.mkdir(parents=True)
    (clip / "open_clip_model.safetensors").write_bytes(b"")
    assert local_weights(teachers["clip-b16"].spec) == "yes"
    assert local_weights(vaes["tiny"].spec) == "-"
    assert local_weights(vaes["va-vae"].spec) == "no"
