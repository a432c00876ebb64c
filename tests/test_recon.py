"""`sendvae recon`: PSNR / SSIM against scikit-image, exact reconstructions, rFD, caches, bad input.

The extractor is a tiny random-weight DINOv2 (the real code path, 32-d CLS features) and LPIPS has
random weights (the real VGG16 + lin layers; an exact pair still gives 0), so a run over a dozen
32 px images takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sendvae_cli.data.shapes import ShapesSource
from sendvae_cli.errors import UserError
from sendvae_cli.eval.extractors import TeacherExtractor
from sendvae_cli.eval.image_quality import psnr, ssim
from sendvae_cli.images import to_levels
from sendvae_cli.eval.requests import parse_request
from sendvae_cli.eval.recon import ReconOptions, Reconstructor, psnr_summary, recon_table, run_recon
from metric_references import ref_fd

N = 12




# --------------------------------------------------------------------------------------------
# PSNR and SSIM: torchmetrics against scikit-image
# --------------------------------------------------------------------------------------------
def test_psnr_and_ssim_agree_with_scikit_image():
    source = ShapesSource(6, 48, seed=4)
    originals = torch.stack([source[i][0] for i in range(6)]).double()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(-40, 41, originals.shape, generator=generator).double()
    blurred = torch.nn.functional.avg_pool2d(originals, 3, stride=1, padding=1, count_include_pad=False).round()
    for changed in ((originals + noise).clamp(0, 255), blurred):
        ours_psnr, ours_ssim = psnr(changed, originals), ssim(changed, originals)
        for i in range(len(originals)):
            a = originals[i].permute(1, 2, 0).numpy().astype(np.uint8)
            b = changed[i].permute(1, 2, 0).numpy().astype(np.uint8)
            want_psnr = peak_signal_noise_ratio(a, b, data_range=255)
            want_ssim = structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True,
                                              sigma=1.5, use_sample_covariance=False)
            assert abs(float(ours_psnr[i]) - want_psnr) <= 1e-4
            assert abs(float(ours_ssim[i]) - want_ssim) <= 1e-4
    assert torch.isposinf(psnr(originals, originals)).all()
    assert torch.allclose(ssim(originals, originals), torch.ones(6, dtype=torch.float64))


def test_levels_are_what_a_saved_png_holds():
    x = torch.tensor([-1.5, -1.0, -0.0039, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, -1)
    assert to_levels(x).flatten().tolist() == [0.0, 0.0, 127.0, 128.0, 255.0, 255.0, 255.0]


def test_psnr_summary_defines_infinity():
    assert psnr_summary(np.array([np.inf, np.inf])) == {"psnr": None, "identical_images": 2, "psnr_note": "identical"}
    assert psnr_summary(np.array([30.0, np.inf, 20.0])) == {"psnr": 25.0, "identical_images": 1, "psnr_note": None}
    json.dumps(psnr_summary(np.array([np.inf])), allow_nan=False)  # valid JSON: no Infinity


# --------------------------------------------------------------------------------------------
# whole runs
# --------------------------------------------------------------------------------------------
class Identity(torch.nn.Module):
    """A VAE whose decoder inverts its encoder exactly."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def reconstruct(self, x):
        return (x * self.scale) / self.scale


class Blur(torch.nn.Module):
    """A lossy 'VAE': 2x average-pool down, nearest up."""

    def reconstruct(self, x):
        return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2.0)


def reconstructor(label: str, module, downsample: int = 2) -> Reconstructor:
    return Reconstructor(parse_request(f"{label}={label}", "--vae"), module, module.reconstruct, downsample,
                         lambda res: (3, res // downsample, res // downsample), {"weights_sha256": label * 8})


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    data = root / "images"
    data.mkdir()
    source = ShapesSource(N, 32, seed=2)
    for i in range(N):
        Image.fromarray(source[i][0].permute(1, 2, 0).numpy()).save(data / f"{i:03d}.png")
    from sendvae_cli.registry import get_registry
    from sendvae_cli.vae.lpips import LPIPS

    registry = get_registry()
    spec = registry.teacher("dinov2-s")
    torch.manual_seed(0)
    extractor = TeacherExtractor(spec.build(random_weights=True, arch=spec.tiny), spec, "cpu", random_weights=True)
    torch.manual_seed(0)
    lpips = LPIPS(random_weights=True)
    return {"root": root, "data": data, "registry": registry, "extractor": extractor, "lpips": lpips}


def options(parts, out, **kwargs) -> ReconOptions:
    kwargs = {"resolution": 32, "workers": 0, "quiet": True, "device": "cpu", "extractor": "dinov2-s",
              "requests": [], **kwargs}
    return ReconOptions(data=str(parts["data"]), out=out, **kwargs)


def test_identity_and_lossy_vaes_side_by_side(parts):
    out = parts["root"] / "out"
    recs = [reconstructor("identity", Identity()), reconstructor("blur", Blur())]
    summary = run_recon(options(parts, out), parts["registry"], reconstructors=recs, extractor=parts["extractor"],
                        lpips=parts["lpips"])
    identity, blur = summary["results"]
    m = identity["metrics"]
    assert m["psnr"] is None and m["psnr_note"] == "identical" and m["identical_images"] == N
    assert m["lpips"] == 0.0 and m["ssim"] == pytest.approx(1.0, abs=1e-12) and m["mse"] == 0.0
    assert m["rfd"] <= 1e-9 and m["psnr_of_mean_mse"] is None
    b = blur["metrics"]
    assert 10 < b["psnr"] < 60 and b["identical_images"] == 0 and 0 < b["ssim"] < 1 and b["lpips"] > 0

    # rFD = the Fréchet distance of the extractor's features of the rounded reconstructions and originals
    originals = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                             for p in sorted(parts["data"].iterdir())])
    recon = to_levels(Blur().reconstruct(originals.float() / 127.5 - 1)).to(torch.uint8)
    fo, fr = (parts["extractor"](x)[0].double().numpy() for x in (originals, recon))
    assert abs(b["rfd"] - ref_fd(fr, fo)) <= 1e-6 * ref_fd(fr, fo)
    want_psnr = np.mean([peak_signal_noise_ratio(o.permute(1, 2, 0).numpy(), r.permute(1, 2, 0).numpy(), data_range=255)
                         for o, r in zip(originals, recon)])
    assert abs(b["psnr"] - want_psnr) <= 1e-4

    saved = json.loads((out / "recon.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert saved["extractor"] == "dinov2-s" and saved["fd_key"] == "rfd" and saved["fd_name"] == "rFD_dinov2-s"
    assert [r["label"] for r in saved["results"]] == ["identity", "blur"]
    for label in ("identity", "blur"):
        with Image.open(out / "images" / f"{label}.png") as image:
            assert image.size == (8 * 32, 2 * 32)  # originals over reconstructions
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(recon_table(summary))
    text = console.export_text()
    assert "∞ (identical)" in text and "rFD_dinov2-s" in text

    # Rerun: every cache and result is reused, the figures are the same.
    again = run_recon(options(parts, out), parts["registry"], reconstructors=recs, extractor=parts["extractor"],
                      lpips=parts["lpips"])
    assert again["results"] == summary["results"]
    assert len(list((out / "cache").glob("*.h5"))) == 3  # originals + one per VAE


def test_caches_are_keyed_by_the_vae_digest_not_its_label(parts):
    out = parts["root"] / "relabel"
    first = run_recon(options(parts, out, lpips=False), parts["registry"], reconstructors=[reconstructor("blur", Blur())],
                      extractor=parts["extractor"])
    renamed = reconstructor("other", Blur())
    renamed.identity = {"weights_sha256": "blur" * 8}  # the same weights under another label
    second = run_recon(options(parts, out, lpips=False), parts["registry"], reconstructors=[renamed],
                       extractor=parts["extractor"])
    assert len(list((out / "cache").glob("*recon*.h5"))) == 1
    assert first["results"][0]["metrics"] == second["results"][0]["metrics"]
    assert first["results"][0]["metrics"]["lpips"] is None and first["lpips"] is None


def test_bad_inputs_are_one_line_errors(parts, tmp_path):
    with pytest.raises(UserError, match="--vae f64: downsamples by 64, which does not divide --resolution 32"):
        run_recon(options(parts, tmp_path / "a"), parts["registry"], extractor=parts["extractor"], lpips=parts["lpips"],
                  reconstructors=[reconstructor("f16", Blur(), downsample=16), reconstructor("f64", Blur(), downsample=64)])
    assert not (tmp_path / "a").exists()  # refused before anything was written
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        run_recon(ReconOptions(data=str(tmp_path / "empty"), requests=[], out=tmp_path / "b", resolution=32,
                               quiet=True, device="cpu"), parts["registry"], reconstructors=[reconstructor("x", Blur())])
    with pytest.raises(UserError, match="--vae: missing"):
        run_recon(options(parts, tmp_path / "c"), parts["registry"])


def test_named_vae_bases_through_the_real_loader(parts, tmp_path):
    """`--vae tiny` twice under two labels: one set of rows; the untrained VAE loses information."""
    opts = options(parts, tmp_path / "out", requests=[parse_request("tiny", "--vae"), parse_request("again=tiny", "--vae")],
                   lpips=False, num_images=4)
    summary = run_recon(opts, parts["registry"], extractor=parts["extractor"])
    a, b = summary["results"]
    assert a["metrics"] == b["metrics"] and a["vae"]["weights_sha256"] == b["vae"]["weights_sha256"]
    assert a["latent_shape"] == [8, 2, 2] and a["metrics"]["psnr"] < 30
    assert len(list((tmp_path / "out" / "cache").glob("*recon*.h5"))) == 1


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def test_command_end_to_end(parts, tmp_path):
    """`sendvae recon` with the untrained `tiny` base and the real MobileNetV2 extractor, then a rerun."""
    from conftest import invoke

    out = tmp_path / "cli"
    args = ("recon", parts["data"], "--vae", "tiny", "--extractor", "tv-mobilenet-v2", "--no-lpips",
            "--resolution", 32, "--num-images", 4, "--out", out, "--workers", 0, "--device", "cpu", "--quiet")
    proc = invoke(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = json.loads((out / "recon.json").read_text())
    assert saved["fd_name"] == "rFD_tv-mobilenet-v2" and saved["extractor_details"]["release_weights"] is True
    assert saved["results"][0]["label"] == "tiny" and saved["results"][0]["metrics"]["lpips"] is None
    assert (out / "images" / "tiny.png").is_file()
    text = " ".join(proc.stdout.split())
    assert "rFD_tv-mobilenet-v2" in text and "tiny" in text
    before = (out / "recon.json").read_text()
    assert invoke(*args).returncode == 0 and (out / "recon.json").read_text() == before


def test_command_bad_inputs_are_one_line_errors(parts, tmp_path, monkeypatch):
    from conftest import invoke, one_line_error

    common = ("--resolution", 32, "--workers", 0, "--device", "cpu", "--quiet", "--out", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("recon", tmp_path / "empty", "--vae", "tiny", "--no-lpips", *common), "no images found")
    one_line_error(invoke("recon", parts["data"], *common), "--vae: missing")
    one_line_error(invoke("recon", parts["data"], "--vae", "tiny", "--extractor", "dinov9", "--no-lpips", *common),
                   "--extractor dinov9: unknown teacher")
    one_line_error(invoke("recon", parts["data"], "--vae", "tiny", "--no-lpips", "--lpips-vgg-weights", tmp_path, *common),
                   "--no-lpips")
    # LPIPS weights missing offline: one line naming the file, where to put it, and the escape
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_line_error(invoke("recon", parts["data"], "--vae", "tiny", "--extractor", "tv-mobilenet-v2", *common),
                   "vgg16-397923af.pth", str(tmp_path / "torch" / "hub" / "checkpoints"), "--no-lpips")
