"""The linear flow path of SiT / REPA, and how training draws its times.

    x_t = (1 - t) * x + t * eps        t = 0 is data, t = 1 is noise
    v   = d x_t / d t = eps - x        what the model learns to predict

Times are drawn per sample, either uniform on [0, 1] (REPA's default) or "lognormal": sigma =
exp(N(mean, std)) and t = sigma / (1 + sigma), the linear path's time at which the noise-to-
signal ratio t / (1 - t) is sigma (EDM's log-normal noise levels, REPA's `--weighting lognormal`).

Random numbers come from an explicit `torch.Generator` when one is given, drawn on that
generator's device and then moved, so a seeded run draws the same numbers on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TIME_SCHEDULES = ("uniform", "lognormal")


def _draw(kind, shape, generator: torch.Generator | None, device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    values = kind(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return values.to(device)


def sample_time(batch: int, *, schedule: str = "uniform", generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """(batch,) float32 flow times in [0, 1]. `mean` / `std` are those of log(sigma) for "lognormal"."""
    if schedule == "uniform":
        return _draw(torch.rand, (batch,), generator, device)
    if schedule == "lognormal":
        sigma = torch.exp(mean + std * _draw(torch.randn, (batch,), generator, device))
        return sigma / (1 + sigma)
    raise ValueError(f"time schedule {schedule!r}: expected one of {', '.join(TIME_SCHEDULES)}")


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) times shaped (B, 1, 1, ...) to broadcast over a sample's dimensions."""
    return t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x + t noise, with t of shape (B,)."""
    t = _per_sample(t, x)
    return (1 - t) * x + t * noise


def velocity(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The target velocity eps - x (constant along the linear path)."""
    return noise - x


@dataclass
class PathSample:
    """One training draw: times t (B,), the noise, the noisy input x_t and the velocity target."""

    t: torch.Tensor
    noise: torch.Tensor
    x_t: torch.Tensor
    target: torch.Tensor


def sample_path(x: torch.Tensor, *, schedule: str = "uniform", generator: torch.Generator | None = None,
                mean: float = 0.0, std: float = 1.0) -> PathSample:
    """Draw t and eps for clean latents x (B, ...) and return the point on the path and the target."""
    t = sample_time(x.shape[0], schedule=schedule, generator=generator, device=x.device, mean=mean, std=std)
    noise = _draw(torch.randn, tuple(x.shape), generator, x.device).to(x.dtype)
    return PathSample(t=t, noise=noise, x_t=interpolate(x, noise, t), target=velocity(x, noise))


__all__ = ["TIME_SCHEDULES", "sample_time", "interpolate", "velocity", "PathSample", "sample_path"]
