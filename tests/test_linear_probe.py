"""The linear probe core (`fit_probe`) and its metrics (`attribute_metrics`), against scikit-learn."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from sendvae_cli.data.source import TEST, TRAIN, VAL
from sendvae_cli.eval.attribute_metrics import attribute_metrics
from sendvae_cli.eval.linear_probe import ProbeSettings, _Rows, fit_probe

ROWS, ATTRIBUTES, DIM = 3000, 12, 64


def linear_data(seed: int = 0, noise: float = 0.1, rows: int = ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attributes Bernoulli(0.3); features a random linear function of them plus Gaussian noise,
    with constant and large-offset / large-scale columns appended to exercise the standardisation."""
    rng = np.random.default_rng(seed)
    attributes = (rng.random((rows, ATTRIBUTES)) < 0.3).astype(np.uint8)
    weights = rng.standard_normal((ATTRIBUTES, DIM))
    features = attributes @ weights + noise * rng.standard_normal((rows, DIM))
    constant = np.full((rows, 3), 7.0)
    offset = 500.0 + 40.0 * features[:, :3]  # informative, but far from 0 and wide
    features = np.concatenate([features, constant, offset], axis=1).astype(np.float32)
    splits = rng.choice([TRAIN, VAL, TEST], size=rows, p=[0.7, 0.15, 0.15]).astype(np.int8)
    return features, attributes, splits


@pytest.fixture(scope="module")
def data():
    return linear_data()


@pytest.fixture(scope="module")
def fitted(data):
    features, attributes, splits = data
    return fit_probe(features, attributes, splits, ProbeSettings(epochs=20, seed=0))


def sklearn_f1(truth: np.ndarray, predicted: np.ndarray) -> dict:
    return {average: f1_score(truth, predicted, average=average, zero_division=0)
            for average in ("macro", "micro", None)}


def assert_f1_match(metrics: dict, truth: np.ndarray, predicted: np.ndarray) -> None:
    reference = sklearn_f1(truth, predicted)
    assert metrics["macro_f1"] == pytest.approx(reference["macro"], abs=1e-12)
    assert metrics["micro_f1"] == pytest.approx(reference["micro"], abs=1e-12)
    np.testing.assert_allclose(metrics["per_attribute_f1"], reference[None], atol=1e-12)


def test_probe_recovers_a_linear_function(data, fitted):
    features, attributes, splits = data
    result = fitted
    assert result.in_memory
    assert result.rows == {name: int((splits == code).sum()) for code, name in enumerate(("train", "val", "test"))}
    assert result.metrics["macro_f1"] > 0.95
    assert result.val_metrics["macro_f1"] > 0.95
    # Every F1 figure equals scikit-learn's on the same predictions.
    truth = attributes[result.test_rows]
    np.testing.assert_array_equal(result.test_rows, np.flatnonzero(splits == TEST))
    np.testing.assert_array_equal(result.test_predictions, result.test_scores > 0)
    assert_f1_match(result.metrics, truth, result.test_predictions)
    assert result.metrics["support"] == truth.sum(axis=0).tolist()
    # Constant columns are standardised to 0 (std floored to 1), not divided by ~0.
    assert np.all(result.feature_std[DIM : DIM + 3] == 1.0)
    assert result.feature_mean[DIM] == pytest.approx(7.0)
    train = features[splits == TRAIN].astype(np.float64)
    np.testing.assert_allclose(result.feature_mean, train.mean(axis=0), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(result.feature_std[:DIM], train.std(axis=0)[:DIM], rtol=1e-9)
    # The kept probe reproduces the test scores.
    x = (features[result.test_rows] - result.feature_mean) / result.feature_std
    np.testing.assert_allclose(x @ result.weight.T + result.bias, result.test_scores, atol=1e-3)
    history = [h["val_loss"] for h in result.history]
    assert result.best_epoch == 1 + int(np.argmin(history))
    assert set(result.to_dict()) >= {"metrics", "val_metrics", "best_epoch", "epochs_run", "history", "seconds",
                                     "rows", "in_memory"}
    assert set(result.seconds) >= {"load", "stats", "train", "eval"}
    assert json.loads(json.dumps(result.to_dict()))["metrics"] == result.metrics  # JSON-able as it is


def test_probe_is_deterministic(data, fitted):
    features, attributes, splits = data
    settings = ProbeSettings(epochs=3, patience=10, seed=0)
    first = fit_probe(features, attributes, splits, settings)
    again = fit_probe(features, attributes, splits, settings)
    assert first.history == again.history
    assert first.metrics == again.metrics and first.val_metrics == again.val_metrics
    np.testing.assert_array_equal(first.test_scores, again.test_scores)
    assert first.history == fitted.history[:3]  # a longer run starts the same way
    other = fit_probe(features, attributes, splits, ProbeSettings(epochs=3, patience=10, seed=1))
    assert other.history != first.history


def test_global_rng_untouched(data):
    features, attributes, splits = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_probe(features[:600], attributes[:600], splits[:600], ProbeSettings(epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_streaming_and_in_memory_from_hdf5(tmp_path, data):
    features, attributes, splits = data
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features.astype(np.float16), chunks=(1, features.shape[1]))
    events: list[str] = []
    with h5py.File(path, "r") as f:
        table = f["features"]
        # 1e-4 GB = 100 kB, the table is 384 kB: streamed in slabs of ~180 rows.
        settings = ProbeSettings(epochs=15, memory_gb=1e-4)
        streamed = fit_probe(table, attributes, splits, settings, progress=lambda event, **_: events.append(event))
        assert not streamed.in_memory and streamed.slab_rows < 300
        assert streamed.metrics["macro_f1"] > 0.95
        assert_f1_match(streamed.metrics, attributes[streamed.test_rows], streamed.test_predictions)
        again = fit_probe(table, attributes, splits, settings)
        assert again.history == streamed.history
        loaded = fit_probe(table, attributes, splits, ProbeSettings(epochs=15))
        assert loaded.in_memory and loaded.metrics["macro_f1"] > 0.95
    assert {"read", "epoch", "batch", "epoch_end", "test"} <= set(events)
    assert events.count("epoch_end") == streamed.epochs_run


@pytest.mark.parametrize("slab_rows", [20, 100, 128])
def test_streaming_keeps_batches_full(data, slab_rows):
    """Rows left at a slab's end start the next slab's first batch: every batch but the last is
    full, also when a slab holds fewer rows than a batch; every train row comes once."""
    features, _, splits = data
    rows = np.flatnonzero(splits == TRAIN)
    source = _Rows(features, None, torch.device("cpu"), slab_rows=slab_rows, batch_size=64)
    sizes, seen = [], []
    for part, x in source.train_batches(rows, np.random.default_rng([0, 1])):
        sizes.append(len(part))
        seen.append(part)
        np.testing.assert_array_equal(x.numpy(), features[part])
    assert all(size == 64 for size in sizes[:-1]) and 0 < sizes[-1] <= 64
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), rows)


def test_early_stopping():
    features, attributes, splits = linear_data(seed=3, noise=3.0, rows=1500)
    # 400 pure-noise features on ~1,000 train rows: the probe overfits within a few epochs.
    junk = np.random.default_rng(1).standard_normal((len(features), 400)).astype(np.float32)
    features = np.concatenate([features, junk], axis=1)
    result = fit_probe(features, attributes, splits, ProbeSettings(epochs=40, patience=1, lr=1e-2))
    assert result.epochs_run < 40
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == result.history[int(np.argmin(losses))]["epoch"]
    assert result.epochs_run == result.best_epoch + 1  # patience 1: stops at the first non-improving epoch
    assert [h["epoch"] for h in result.history] == list(range(1, result.epochs_run + 1))


@pytest.mark.parametrize("case, match", [
    ("empty_val", "val split has no rows"),
    ("nan", "row 17 holds a non-finite"),
    ("attribute_2", "attributes must be 0 or 1: row 5, attribute 3 holds 2"),
    ("lengths", "same number of rows"),
    ("split_code", "splits must be"),
])
def test_errors(case, match):
    features, attributes, splits = linear_data(rows=40)
    if case == "empty_val":
        splits = np.where(splits == VAL, TRAIN, splits).astype(np.int8)
    elif case == "nan":
        features[17, 5] = np.nan
    elif case == "attribute_2":
        attributes[5, 3] = 2
    elif case == "lengths":
        attributes = attributes[:-1]
    elif case == "split_code":
        splits[0] = 7
    with pytest.raises(ValueError, match=match):
        fit_probe(features, attributes, splits, ProbeSettings(epochs=1))


# -- attribute_metrics ---------------------------------------------------------------------------
def test_metrics_edge_cases_match_sklearn():
    rng = np.random.default_rng(0)
    truth = (rng.random((50, 6)) < 0.4).astype(np.uint8)
    predicted = (rng.random((50, 6)) < 0.4).astype(np.uint8)
    truth[:, 0] = predicted[:, 0] = 0  # no true and no predicted positives: F1 0
    predicted[:, 1] = 0  # true positives, none predicted: F1 0
    truth[:, 2] = 0  # predicted positives, none true: F1 0
    metrics = attribute_metrics(truth, predicted, rng.standard_normal((50, 6)))
    assert_f1_match(metrics, truth, predicted)
    assert metrics["per_attribute_f1"][:3] == [0.0, 0.0, 0.0]
    assert metrics["support"] == truth.sum(axis=0).tolist()
    assert metrics["accuracy"] == pytest.approx((truth == predicted).mean())
    nothing = attribute_metrics(np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((4, 3)))
    assert nothing["macro_f1"] == nothing["micro_f1"] == nothing["top5_recall"] == 0.0
    assert nothing["accuracy"] == 1.0


def test_top_k_recall_by_hand():
    truth = np.array([[1, 0, 0, 1, 0, 0, 0],  # 2 positives: one in the top 2, one ranked last
                      [0, 0, 0, 0, 0, 0, 0],  # no positives: adds nothing
                      [0, 1, 1, 1, 0, 0, 0]])  # 3 positives, two in the top 2
    scores = np.array([[9, 8, 7, 0, 6, 5, 4],
                       [9, 8, 7, 6, 5, 4, 3],
                       [0, 5, 5, 1, 9, 0, 0]], dtype=np.float32)  # tie 5/5: the lower index first
    metrics = attribute_metrics(truth, scores > 4, scores, k=2)
    assert metrics["top2_recall"] == pytest.approx(2 / 5)  # row 0: {0}; row 2: top 2 = {4, 1}
    assert attribute_metrics(truth, scores > 4, scores, k=3)["top3_recall"] == pytest.approx(3 / 5)
    assert attribute_metrics(truth, scores > 4, scores)["top5_recall"] == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="only 0 and 1"):
        attribute_metrics(truth * 2, truth, scores)
