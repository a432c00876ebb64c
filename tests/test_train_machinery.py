"""Training machinery on its own: the batch stream, checkpoints, run folders, metrics."""

import json

import pytest
import torch

from sendvae_cli.errors import UserError
from sendvae_cli.train.checkpoint import Checkpoints
from sendvae_cli.train.ema import EMA, warmed_up_decay
from sendvae_cli.train.metrics import MetricsLog, read_metrics
from sendvae_cli.train.run_config import prepare_run_dir, resolve
from sendvae_cli.train.batches import StreamBatchSampler


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_stream_is_resumable_and_independent_of_the_split():
    one = StreamBatchSampler(10, micro_batch=4, world=1, rank=0, accumulation=2, seed=3)
    batches = take(one, 8)  # 4 optimizer steps of 8 rows
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10))  # first epoch is a permutation
    resumed = StreamBatchSampler(10, micro_batch=4, world=1, rank=0, accumulation=2, seed=3, start_step=2)
    assert take(resumed, 4) == batches[4:8]
    # Two ranks, no accumulation: same global batches, split by rank.
    r0 = StreamBatchSampler(10, micro_batch=4, world=2, rank=0, accumulation=1, seed=3)
    r1 = StreamBatchSampler(10, micro_batch=4, world=2, rank=1, accumulation=1, seed=3)
    for step, (a, b) in enumerate(zip(take(r0, 4), take(r1, 4))):
        assert a + b == batches[2 * step] + batches[2 * step + 1]


def test_checkpoints_round_trip_and_latest_pointer(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ckpts = Checkpoints(tmp_path / "ck", keep=2)
    for step in (1, 2, 3):
        ckpts.save(step, {"m": model}, {"optimizer": opt.state_dict(), "rng": {"cpu": torch.get_rng_state()}})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["latest", "step-000002", "step-000003"]
    fresh = torch.nn.Linear(3, 2)
    state = Checkpoints(tmp_path / "ck").load(Checkpoints(tmp_path / "ck").latest(), {"m": fresh})
    assert state["step"] == 3 and torch.equal(fresh.weight, model.weight)
    other_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    other_opt.load_state_dict(state["optimizer"])
    # A damaged checkpoint is a one-line error naming it.
    (tmp_path / "ck" / "step-000003" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="step-000003 is damaged"):
        ckpts.load(ckpts.latest(), {"m": fresh})
    with pytest.raises(UserError, match="'m' weights do not fit"):
        ckpts.load(tmp_path / "ck" / "step-000002", {"m": torch.nn.Linear(3, 5)})


def test_run_folder_refuses_another_configuration(tmp_path):
    out = tmp_path / "run"
    assert prepare_run_dir(out, {"lr": 1e-4, "workers": 2}, ignore=["workers"], is_main=True) is False
    assert prepare_run_dir(out, {"lr": 1e-4, "workers": 8}, ignore=["workers"], is_main=True) is True
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "latest").write_text("step-000001")  # a step was saved: the run is one to resume
    before = (out / "config.json").read_text()
    with pytest.raises(UserError, match=r"another configuration \(lr: 0.0001 there, 0.0003 now\)"):
        prepare_run_dir(out, {"lr": 3e-4, "workers": 8}, ignore=["workers"], is_main=True)
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-4 and before
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        prepare_run_dir(tmp_path / "full", {}, ignore=[], is_main=True)
    assert resolve({"a": 1, "b": 2}, {"a": None, "b": 5}) == {"a": 1, "b": 5}


def test_metrics_log_drops_steps_redone_after_resume(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in (10, 20, 30):
        log.write(step, {"loss": step / 10, "bad": float("nan")})
    MetricsLog(tmp_path / "m.jsonl", resume_step=20)
    rows = read_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in rows] == [10, 20] and rows[0]["bad"] is None


def test_ema_warms_up_so_a_short_run_forgets_its_random_start():
    assert warmed_up_decay(0.999, 0) == pytest.approx(0.1)
    assert warmed_up_decay(0.999, 100) == pytest.approx(101 / 110)
    assert warmed_up_decay(0.9999, 10**6) == 0.9999  # long runs: the plain average
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 0.0)
    ema = EMA(model, 0.999)
    torch.nn.init.constant_(model.weight, 1.0)
    for step in range(1200):
        ema.update(model, step)
    # Without the warm-up 0.999 ** 1200 = 30% of the initial 0 would remain.
    assert 1.0 - ema.shadow.weight.item() < 1e-6
