"""`sendvae fid`: figures against straightforward numpy computations on the same Inception features.

The Inception network is torch-fidelity's real architecture with random weights saved to a local
file (`--inception-weights`). Its forward costs ~0.3 s per image on one busy CPU core, so the
in-process runs share one extractor that remembers the features of every image it has seen
(keyed by the image bytes): each image goes through the network once, whichever reader (folder,
.npz, compressed .npz) delivered it. One subprocess run covers the real command end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sendvae_cli.cli import app
from sendvae_cli.data.shapes import ShapesSource
from sendvae_cli.eval.fid import FidOptions, evaluate, fid_table, strided_rows
from sendvae_cli.eval.frechet import Gaussian, Moments, frechet_distance, trace_sqrt_product
from sendvae_cli.eval.inception import SPATIAL_DIM, WEIGHTS_FILE, InceptionFeatures, random_inception_weights
from sendvae_cli.eval.inputs import open_image_input
from sendvae_cli.eval.metric import Metric, Row, show
from sendvae_cli.eval.metrics import inception_score, precision_recall, split_bounds
from sendvae_cli.hookspecs import hookimpl
from sendvae_cli.specs import MetricSpec
from metric_references import ref_precision_recall

N = 16  # images per set: IS needs >= 10 (10 splits), P/R >= 4 (k = 3)


# --------------------------------------------------------------------------------------------
# independent reference computations (numpy, float64, no shared code)
# --------------------------------------------------------------------------------------------
def ref_fid(x1: np.ndarray, x2: np.ndarray) -> float:
    """Fréchet distance from features; tr sqrt(S1 S2) = nuclear norm of X1c X2c^T / sqrt((n1-1)(n2-1)).

    S1 S2 = X1c^T X1c X2c^T X2c / ((n1-1)(n2-1)) has the non-zero eigenvalues of A A^T with
    A = X1c X2c^T / sqrt((n1-1)(n2-1)), i.e. the squared singular values of the small matrix A: exact
    even when n < d makes both covariances singular.
    """
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    n1, n2 = len(x1), len(x2)
    trace1 = np.sum(c1 * c1) / (n1 - 1)
    trace2 = np.sum(c2 * c2) / (n2 - 1)
    cross = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = x1.mean(0) - x2.mean(0)
    return float(diff @ diff + trace1 + trace2 - 2 * cross)


def ref_inception_score(logits: np.ndarray, splits: int = 10) -> float:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        p = np.exp(part)
        kl = p * (part - np.log(p.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))




def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
class MemoExtractor:
    """The real extractor, run at most once per distinct image."""

    def __init__(self, inner: InceptionFeatures):
        self.inner, self.memo, self.computed = inner, {}, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, images: torch.Tensor):
        keys = [hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest() for image in images]
        missing, new = [], set()
        for i, key in enumerate(keys):
            if key not in self.memo and key not in new:
                missing.append(i)
                new.add(key)
        if missing:
            out = self.inner(images[missing])
            for j, i in enumerate(missing):
                self.memo[keys[i]] = tuple(t[j].clone() for t in out)
            self.computed += len(missing)
        return tuple(torch.stack([self.memo[key][t] for key in keys]) for t in range(3))


def write_set(folder, npz, seed: int, resolution: int, count: int = N, compressed_npz=None):
    source = ShapesSource(count, resolution, seed=seed)
    pixels = np.stack([source[i][0].permute(1, 2, 0).numpy() for i in range(count)])
    folder.mkdir(parents=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    np.savez(npz, arr_0=pixels)
    if compressed_npz is not None:
        np.savez_compressed(compressed_npz, arr_0=pixels)
    return pixels


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SENDVAE_CACHE", str(root / "cache"))
        weights = random_inception_weights(root / "inception.pth", seed=0)
        pixels_a = write_set(root / "A", root / "A.npz", seed=0, resolution=32, compressed_npz=root / "A_compressed.npz")
        pixels_b = write_set(root / "B", root / "B.npz", seed=1, resolution=48)
        extractor = MemoExtractor(InceptionFeatures.load(weights))
        feats = {}
        for name in ("A", "B"):
            images = open_image_input(root / name, "test")
            parts = [extractor(batch) for batch in images.batches(8)]
            feats[name] = tuple(torch.cat([p[t] for p in parts]).double().numpy() for t in range(3))
        yield {"root": root, "weights": weights, "extractor": extractor, "feats": feats, "A": pixels_a, "B": pixels_b}


def run(work, samples, ref, **kwargs):
    kwargs.setdefault("json_out", work["root"] / "out" / f"{abs(hash((str(samples), str(ref), str(kwargs))))}.json")
    options = FidOptions(samples=samples, ref=ref, quiet=True, workers=0, **kwargs)
    return evaluate(options, extractor=work["extractor"])


@pytest.fixture(scope="module")
def result_ab(work):
    root = work["root"]
    return run(work, root / "A", root / "B", save_stats=root / "B-stats.npz")


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------
def test_frechet_matches_plain_eigenvalue_formula_and_stays_finite_when_singular():
    rng = np.random.default_rng(0)
    d = 40
    x1 = rng.normal(size=(400, d)) @ rng.normal(size=(d, d))
    x2 = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) + 0.5
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    plain = float(np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None))))
    assert rel(trace_sqrt_product(s1, s2), plain) < 1e-10
    fd = frechet_distance(Gaussian(x1.mean(0), s1), Gaussian(x2.mean(0), s2))
    assert rel(fd, ref_fid(x1, x2)) < 1e-10

    # Diagonal covariances: closed form sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    fd = frechet_distance(Gaussian(np.zeros(d), np.diag(a)), Gaussian(np.zeros(d), np.diag(b)))
    assert rel(fd, float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))) < 1e-12

    # Fewer samples than dimensions: both covariances singular (rank 11, 15 of 600).
    y1 = rng.normal(size=(12, 600)) * 3
    y2 = rng.normal(size=(16, 600)) + 1
    g1 = Gaussian(y1.mean(0), np.cov(y1, rowvar=False))
    g2 = Gaussian(y2.mean(0), np.cov(y2, rowvar=False))
    value = frechet_distance(g1, g2)
    assert np.isfinite(value) and rel(value, ref_fid(y1, y2)) < 1e-8
    assert rel(frechet_distance(g2, g1), value) < 1e-10
    assert frechet_distance(g1, g1) < 1e-9 * np.trace(g1.sigma)


def test_streamed_moments_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(203, 17)) * 5 + 100  # a large offset: the shifted sums keep full precision
    m = Moments(17)
    for start in range(0, len(x), 50):
        m.update(torch.from_numpy(x[start : start + 50]))
    g = m.gaussian()
    assert g.count == 203
    np.testing.assert_allclose(g.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(g.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


def test_metric_helpers_match_reference_computations():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(57, 1008)) * 4
    mean, std = inception_score(logits)
    assert rel(mean, ref_inception_score(logits)) < 1e-10 and std > 0
    assert [hi - lo for lo, hi in split_bounds(57, 10)] == [len(p) for p in np.array_split(np.arange(57), 10)]
    ref, smp = rng.normal(size=(70, 32)), rng.normal(size=(50, 32)) * 1.3 + 0.2
    got = precision_recall(ref, smp, budget_bytes=4 * 70 * 7)  # blocks of 7 rows: the batching is exercised
    assert got == ref_precision_recall(ref, smp)
    assert list(strided_rows(10, 4)) == [0, 2, 5, 7] and list(strided_rows(3, 4)) == [0, 1, 2]


# --------------------------------------------------------------------------------------------
# the pipeline on real (random-weight) Inception features
# --------------------------------------------------------------------------------------------
def test_features_have_the_adm_shapes(work):
    pool, spatial, logits = work["feats"]["A"]
    assert pool.shape == (N, 2048) and spatial.shape == (N, SPATIAL_DIM) == (N, 17 * 17 * 7) and logits.shape == (N, 1008)
    assert np.all(np.isfinite(pool)) and pool.std() > 0.01 and (spatial >= 0).all()  # spatial: after the ReLU
    assert work["extractor"].model.get_submodule("Mixed_6d.branch1x1").conv.out_channels == 192


def test_fid_of_a_set_against_itself_is_zero(work):
    root = work["root"]
    result = run(work, root / "A", root / "A.npz")  # the same images, read as an .npz reference
    assert result["reference"]["kind"] == "npz-images"
    pool, spatial, _ = work["feats"]["A"]
    m = result["metrics"]
    assert m["fid"] < 1e-9 * np.trace(np.cov(pool, rowvar=False))
    assert m["sfid"] < 1e-9 * np.trace(np.cov(spatial, rowvar=False))
    assert m["precision"] == 1.0 and m["recall"] == 1.0


def test_figures_equal_independent_numpy_computations(work, result_ab):
    (pa, sa, la), (pb, sb, _) = work["feats"]["A"], work["feats"]["B"]
    m = result_ab["metrics"]
    assert rel(m["fid"], ref_fid(pa, pb)) <= 1e-6
    assert rel(m["sfid"], ref_fid(sa, sb)) <= 1e-6
    assert rel(m["inception_score"], ref_inception_score(la)) <= 1e-6
    assert (m["precision"], m["recall"]) == ref_precision_recall(pb, pa)
    assert m["fid"] > 1.0 and m["inception_score"] > 1.0
    assert result_ab["samples"]["used"] == N and result_ab["reference"]["statistics_count"] == N
    with open(result_ab["json"]) as f:
        assert json.load(f)["metrics"] == m


def test_kid_is_torch_fidelitys_kid(work, result_ab):
    """KID against torch-fidelity's own function on the same features: fed float64, it makes the
    same draws (RandomState(2020), 100 subsets) and the same float64 algebra as ours."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    from sendvae_cli.eval.kid import kernel_distance

    (pa, _, _), (pb, _, _) = work["feats"]["A"], work["feats"]["B"]

    def theirs(size):
        found = kid_features_to_metric(torch.from_numpy(pa), torch.from_numpy(pb), kid_subsets=100,
                                       kid_subset_size=size, kid_kernel="poly", kid_kernel_poly_degree=3,
                                       kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=2020, verbose=False)
        return found[KEY_METRIC_KID_MEAN], found[KEY_METRIC_KID_STD]

    # fid takes subsets of all 16 rows (fewer than 1,000): every subset holds the same rows, so the
    # rounds agree and their spread is rounding only.
    mean, _ = theirs(N)
    m = result_ab["metrics"]
    assert mean != 0 and rel(m["kid"], mean) <= 1e-9 and abs(m["kid_std"]) <= 1e-9 * abs(mean)
    assert result_ab["protocol"]["metrics"]["kid"]["subset_size"] == N
    text = " ".join(str(cell) for row in result_ab["metric_rows"] for cell in row)
    assert "KID" in text and "100 subsets of 16" in text
    # Subsets smaller than the sets: the draws differ from round to round, and still match theirs.
    ours_mean, ours_std, size = kernel_distance(pa, pb, subset_size=10)
    their_mean, their_std = theirs(10)
    assert size == 10 and rel(ours_mean, their_mean) <= 1e-9 and rel(ours_std, their_std) <= 1e-9 and their_std > 0


class NormMetric(Metric):
    """A third-party metric, written only against eval/metric.py."""

    name = "norm2"

    def compute(self, features):
        return {"norm2": 2 * float(np.linalg.norm(features.samples, axis=1).mean())}

    def rows(self, figures):
        return [Row("Twice the mean norm", show(figures["norm2"]), "a test plugin's metric")]


class NormPlugin:
    """The plugin object that registers it through the hook."""

    @staticmethod
    @hookimpl
    def register_metrics(register):
        register(MetricSpec(name="norm2", factory=NormMetric, description="twice the mean feature norm"))


def test_a_metric_registered_by_a_plugin_appears_in_fids_table(work):
    from rich.console import Console

    from sendvae_cli.registry import Registry

    registry = Registry(load_outside=False)
    registry.register_plugin("test-metric", NormPlugin)
    assert registry.names("metric") == ["kid", "norm2"] and registry.plugin_of("metric", "norm2") == "test-metric"
    root = work["root"]
    result = evaluate(FidOptions(samples=root / "A", ref=root / "B", quiet=True, workers=0,
                                 json_out=root / "out" / "plugin.json"), extractor=work["extractor"], registry=registry)
    expected = 2 * np.linalg.norm(work["feats"]["A"][0].astype(np.float32), axis=1).mean()
    assert rel(result["metrics"]["norm2"], expected) <= 1e-6 and result["metrics"]["kid"] is not None
    console = Console(width=200, record=True)
    console.print(fid_table(result))
    text = console.export_text()
    assert "Twice the mean norm" in text and f"{expected:.4f}" in text and "KID" in text



def test_npz_inputs_and_saved_statistics_give_the_same_numbers_as_folders(work, result_ab):
    root = work["root"]
    expected = result_ab["metrics"]

    def same(result, tol=1e-12):
        for key, value in expected.items():
            assert rel(result["metrics"][key], value) <= tol, (key, result["metrics"][key], value)

    stats = run(work, root / "A.npz", root / "B-stats.npz")
    same(stats)
    assert stats["reference"]["kind"] == "stats" and stats["reference"]["from"]["fid"] == "file"

    # An ADM reference batch: mu/sigma/mu_s/sigma_s (float64, as np.cov computes them) + arr_0 images.
    pb, sb, _ = work["feats"]["B"]
    np.savez(root / "adm_ref.npz", arr_0=work["B"], mu=pb.mean(0), sigma=np.cov(pb, rowvar=False),
             mu_s=sb.mean(0), sigma_s=np.cov(sb, rowvar=False))
    adm = run(work, root / "A_compressed.npz", root / "adm_ref.npz")
    same(adm, tol=1e-8)  # np.cov vs streamed moments: rounding only
    assert adm["reference"]["kind"] == "adm-reference"
    assert adm["reference"]["from"] == {"images": "computed", "fid": "file", "sfid": "file", "precision_recall": "images"}


def test_command_end_to_end(work, result_ab, monkeypatch):
    """The Typer command on the first 12 samples; B's statistics come from the cache the runs above filled.

    The command loads the extractor itself; here that load hands back the shared one (after checking
    it was asked for the file given on the command line), so no image goes through the network twice.
    """
    root = work["root"]
    asked = []

    def load(weights, device="cpu"):
        asked.append((weights, device))
        return work["extractor"]

    monkeypatch.setattr(InceptionFeatures, "load", staticmethod(load))
    out = root / "cli.json"
    result = CliRunner().invoke(app, ["fid", str(root / "A"), "--ref", str(root / "B"), "--inception-weights",
                                      str(work["weights"]), "--json", str(out), "--num-samples", "12",
                                      "--device", "cpu", "--batch-size", "8", "--workers", "0"],
                                env={"SENDVAE_CACHE": str(root / "cache"), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert asked == [(work["weights"], torch.device("cpu"))]
    saved = json.loads(out.read_text())
    (pa, sa, la), (pb, sb, _) = work["feats"]["A"], work["feats"]["B"]
    m = saved["metrics"]
    assert rel(m["fid"], ref_fid(pa[:12], pb)) <= 1e-6
    assert rel(m["sfid"], ref_fid(sa[:12], sb)) <= 1e-6
    assert rel(m["inception_score"], ref_inception_score(la[:12])) <= 1e-6
    assert (m["precision"], m["recall"]) == ref_precision_recall(pb, pa[:12])
    assert saved["samples"]["used"] == 12 and saved["samples"]["images"] == N
    assert saved["reference"]["from"]["images"] == "cache"  # computed once, by the first run against B
    text = " ".join(result.output.split())
    assert f"FID │ {m['fid']:.4f}" in text and "Recall" in text and "NOT the release file" in text
    assert "warning: Inception weights" in text  # random weights are flagged
    protocol = saved["protocol"]
    assert protocol["extractor"]["weights_sha256"] == hashlib.sha256(work["weights"].read_bytes()).hexdigest()
    assert protocol["inception_score"]["splits"] == 10 and protocol["precision_recall"]["k"] == 3


# --------------------------------------------------------------------------------------------
# bad input: one line, exit code 2
# --------------------------------------------------------------------------------------------
def one_error_line(args, expected, env=None):
    result = CliRunner().invoke(app, ["fid", *map(str, args)], env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.output
    return errors[0]


def test_bad_inputs_are_one_line_errors(work, tmp_path):
    root = work["root"]
    (tmp_path / "empty").mkdir()
    one_error_line([tmp_path / "empty", "--ref", root / "B"], "no images found")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, size in enumerate((32, 32, 40)):
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(mixed / f"{i}.png")
    one_error_line([root / "A", "--ref", mixed], "images of different sizes")

    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    one_error_line([tmp_path / "garbage.npz", "--ref", root / "B"], "not a readable .npz")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((12, 8, 8, 3), np.float32))
    one_error_line([tmp_path / "float.npz", "--ref", root / "B"], "expected uint8 (N, H, W, 3)")
    np.savez(tmp_path / "nchw.npz", arr_0=np.zeros((12, 3, 8, 8), np.uint8))
    one_error_line([tmp_path / "nchw.npz", "--ref", root / "B"], "NCHW?")
    np.savez(tmp_path / "nothing.npz", labels=np.zeros(3))
    one_error_line([root / "A", "--ref", tmp_path / "nothing.npz"], "neither images (arr_0) nor statistics")
    np.savez(tmp_path / "badstats.npz", mu=np.zeros(10), sigma=np.eye(10))
    one_error_line([root / "A", "--ref", tmp_path / "badstats.npz"], "expected float (2048,)")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((root / "A.npz").read_bytes()[:-500])
    one_error_line([truncated, "--ref", root / "B"], str(truncated))

    few = tmp_path / "few"
    few.mkdir()
    for i in range(5):
        Image.fromarray(work["A"][i]).save(few / f"{i}.png")
    one_error_line([few, "--ref", root / "B"], "needs at least 10")
    one_error_line([root / "A", "--ref", root / "B", "--num-samples", 500], "holds only 16 images")
    three = tmp_path / "three"
    three.mkdir()
    for i in range(3):
        Image.fromarray(work["B"][i]).save(three / f"{i}.png")
    one_error_line([root / "A", "--ref", three], "need at least 4")


def test_missing_and_mismatched_weights_are_one_line_errors(work, tmp_path):
    root = work["root"]
    line = one_error_line([root / "A", "--ref", root / "B"], WEIGHTS_FILE,
                          env={"TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"})
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in line and "--inception-weights" in line
    one_error_line([root / "A", "--ref", root / "B", "--inception-weights", tmp_path / "nope.pth"], "no such file")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    one_error_line([root / "A", "--ref", root / "B", "--inception-weights", tmp_path / "wrong.pth"],
                   "not torch-fidelity's Inception-v3")

    # Statistics saved with other weights are refused, not silently compared.
    state = torch.load(work["weights"], weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0
    other = tmp_path / "other.pth"
    torch.save(state, other)
    one_error_line([root / "A", "--ref", root / "B-stats.npz", "--inception-weights", other, "--quiet"],
                   "computed with Inception weights")


def test_saved_statistics_file_format(work, result_ab):
    with np.load(work["root"] / "B-stats.npz") as data:
        assert {"mu", "sigma", "mu_s", "sigma_s", "features", "sendvae_fid"} <= set(data.files)
        assert data["mu"].dtype == np.float64 and data["sigma"].shape == (2048, 2048)
        assert data["sigma_s"].shape == (SPATIAL_DIM, SPATIAL_DIM) and data["features"].shape == (N, 2048)
        meta = json.loads(str(data["sendvae_fid"]))
    assert meta["format"] == "sendvae-fid-stats" and meta["count"] == N
    assert meta["weights_sha256"] == work["extractor"].sha256
    with zipfile.ZipFile(work["root"] / "A.npz") as archive:  # np.savez stores: the reader memory-maps it
        assert archive.getinfo("arr_0.npy").compress_type == zipfile.ZIP_STORED
    assert open_image_input(work["root"] / "A.npz", "x").offset is not None
    assert open_image_input(work["root"] / "A_compressed.npz", "x").offset is None
    assert os.path.getsize(work["root"] / "A.npz") > N * 32 * 32 * 3


@pytest.mark.gpu
def test_gpu_features_and_metrics_agree_with_cpu(work):
    if not torch.cuda.is_available():  # as tests/test_gpu.py: `-m gpu` without a GPU is an error, not a pass
        pytest.fail("the gpu tests need a CUDA device")
    gpu = InceptionFeatures.load(work["weights"], "cuda")
    batch = next(open_image_input(work["root"] / "A", "test").batches(N))
    pool, spatial, logits = (t.double().cpu().numpy() for t in gpu(batch))
    cpu_pool, cpu_spatial, cpu_logits = work["feats"]["A"]
    for got, want in ((pool, cpu_pool), (spatial, cpu_spatial), (logits, cpu_logits)):
        assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()  # float32, TF32 off: rounding only
    ref, smp = cpu_pool[: N // 2], cpu_pool[N // 2 :]
    assert precision_recall(ref, smp, device="cuda") == precision_recall(ref, smp)
