"""The linear path, time sampling and the velocity + REPA loss, on hand-made tensors."""

import math

import pytest
import torch

from sendvae_cli.flow.interpolant import interpolate, sample_path, sample_time, velocity
from sendvae_cli.flow.loss import flow_loss, negative_cosine, repa_loss, velocity_mse


def test_linear_path_ends_and_target():
    x, eps = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 3.0)
    t = torch.tensor([0.0, 1.0])
    xt = interpolate(x, eps, t)
    assert torch.equal(xt[0], x[0]) and torch.equal(xt[1], eps[1])  # t = 0 data, t = 1 noise
    assert torch.allclose(interpolate(x, eps, torch.tensor([0.25, 0.5])).flatten(1)[:, 0], torch.tensor([1.5, 2.0]))
    assert torch.equal(velocity(x, eps), eps - x)


def test_sample_path_is_seeded_and_consistent():
    x = torch.randn(5, 3, 4, 4)
    a = sample_path(x, generator=torch.Generator().manual_seed(7))
    b = sample_path(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.t, b.t) and torch.equal(a.noise, b.noise)
    assert torch.allclose(a.x_t, (1 - a.t.view(-1, 1, 1, 1)) * x + a.t.view(-1, 1, 1, 1) * a.noise)
    assert torch.allclose(a.target, a.noise - x)


def test_time_schedules():
    g = torch.Generator().manual_seed(0)
    u = sample_time(20_000, generator=g)
    assert u.dtype == torch.float32 and 0 <= u.min() and u.max() <= 1 and abs(u.mean() - 0.5) < 0.01
    ln = sample_time(20_000, schedule="lognormal", generator=g)
    # t = sigma / (1 + sigma) with log sigma ~ N(0, 1): the median time is 0.5, logit(t) ~ N(0, 1).
    logit = torch.log(ln / (1 - ln))
    assert abs(logit.mean()) < 0.03 and abs(logit.std() - 1) < 0.03
    # A mean above 0 moves the times toward the noise: the median is sigmoid(mean).
    shifted = sample_time(20_000, schedule="lognormal", generator=g, mean=0.5)
    assert abs(torch.log(shifted / (1 - shifted)).mean() - 0.5) < 0.03
    assert abs(shifted.median() - torch.sigmoid(torch.tensor(0.5))) < 0.01
    with pytest.raises(ValueError, match="uniform, lognormal"):
        sample_time(2, schedule="cosine")


def test_velocity_mse_value():
    pred, target = torch.zeros(2, 1, 1, 2), torch.tensor([1.0, 2.0, 3.0, 4.0]).view(2, 1, 1, 2)
    assert velocity_mse(pred, target).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_negative_cosine_reduction():
    # Sample 0: two tokens, cos 1 and 0; sample 1: cos -1 and cos 45 degrees. Norms must not matter.
    projected = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]]])
    teacher = torch.tensor([[[5.0, 0.0], [3.0, 0.0]], [[-1.0, 0.0], [0.0, 7.0]]])
    expected = -(1 + 0 + -1 + math.sqrt(0.5)) / 4
    assert negative_cosine(projected, teacher).item() == pytest.approx(expected, abs=1e-6)
    # Two teachers average; REPA's order is teachers x samples, so equal sizes weigh equally.
    same = torch.tensor([[[1.0, 2.0]]])
    assert repa_loss([projected, same], [teacher, same]).item() == pytest.approx((expected - 1) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="one projector per teacher"):
        repa_loss([projected], [teacher, teacher])
    with pytest.raises(ValueError, match="differ in shape"):
        negative_cosine(projected, teacher[:, :1])


def test_flow_loss_total_and_repa_off():
    pred, target = torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2)
    z = torch.tensor([[[1.0, 0.0]]])
    loss = flow_loss(pred, target, [z], [z], proj_weight=0.5)
    assert loss.total.item() == pytest.approx(1.0 - 0.5) and loss.repa.item() == pytest.approx(-1.0)
    off = flow_loss(pred, target, proj_weight=0.0)  # no teacher needed
    assert off.repa is None and off.total.item() == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_finite_float32(dtype):
    g = torch.Generator().manual_seed(0)
    pred, target = (torch.randn(4, 4, 8, 8, generator=g) * 100).to(dtype), torch.randn(4, 4, 8, 8, generator=g).to(dtype)
    # Tiny projector outputs: squaring them underflows in fp16, float32 normalisation copes.
    projected = (torch.randn(4, 16, 32, generator=g) * 1e-4).to(dtype)
    teacher = (torch.randn(4, 16, 32, generator=g) * 300).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = flow_loss(pred, target, [projected], [teacher])
    for value in (loss.total, loss.velocity, loss.repa):
        assert value.dtype == torch.float32 and torch.isfinite(value)
    reference = negative_cosine(projected.float(), teacher.float())
    assert loss.repa.item() == pytest.approx(reference.item(), abs=1e-6)
