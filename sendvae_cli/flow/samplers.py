"""Samplers for the linear flow: Euler / Heun ODE and Euler-Maruyama SDE, with CFG on an interval.

Conventions (docs/sit.md): t = 0 is data, t = 1 is noise, x_t = (1 - t) x + t eps and the model predicts
v = eps - x. Sampling integrates t from 1 down to 0.

The samplers follow the protocol of REPA / REPA-E's sampling code step for step, because published FIDs
depend on it (ODE vs SDE alone moves FID by more than a point):

- ODE: `steps` uniform steps on 1 -> 0; Heun adds a corrector at every step except the last
  (NFE = 2 * steps - 1).
- SDE: Euler-Maruyama with diffusion g(t) = 2t on `steps - 1` stochastic steps of the grid
  linspace(1, 0.04, steps), then one deterministic mean step from 0.04 to 0 (NFE = steps).
- Classifier-free guidance on all channels, against the model's null class (`null_class`, the
  label the generator declares). Guidance applies at a step when its start time t lies in
  [guidance_low, guidance_high]; only there is the doubled (conditional + null) batch evaluated.
  `cfg_scale == 1` is one plain pass everywhere. `cfg_channels = k` guides the first k channels
  only and keeps the conditional velocity on the others, as DiT, SiT and LightningDiT's code does
  "for exact reproducibility" of their published numbers (k = 3 there).
- ODE time grid: uniform, or with hustvl/LightningDiT's timestep shift `timestep_shift = a`, which
  in their time s = 1 - t maps each uniform point u to a u / (1 + (a - 1) u); a < 1 spends the
  steps near the noise (their release samples with a = 0.3), a = 1 is the uniform grid.
- The state and the update arithmetic are float64; the model sees the dtype of the initial noise.

`model_fn(x, t, y) -> v` is any velocity model: x (B, C, H, W), t (B,) float, y (B,) long or None for an
unconditional model. Wrap autocast, compilation or a model's own calling convention around it.
"""

from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
NoiseFn = Callable[[int], torch.Tensor]

SDE_LAST_TIME = 0.04  # where the stochastic steps stop and the final mean step to t = 0 begins


#################################################################################
#                                  Time grids                                   #
#################################################################################

def ode_times(steps: int, start: float = 1.0, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 float64 times from `start` (1: pure noise) to 0, shifted by `shift` (see above)."""
    if not shift > 0:
        raise ValueError(f"timestep shift {shift}: expected a number above 0 (1 = uniform steps)")
    times = torch.linspace(start, 0.0, steps + 1, dtype=torch.float64)
    if shift == 1.0:
        return times
    # 1 - a u / (1 + (a - 1) u) with u = 1 - t (LightningDiT's time), in a form exact at both ends.
    return times / (1.0 + (shift - 1.0) * (1.0 - times))


def sde_times(steps: int) -> torch.Tensor:
    """steps + 1 float64 times: `steps` from 1 to SDE_LAST_TIME, then 0."""
    stochastic = torch.linspace(1.0, SDE_LAST_TIME, steps, dtype=torch.float64)
    return torch.cat([stochastic, torch.zeros(1, dtype=torch.float64)])


def function_evaluations(mode: str, steps: int, heun: bool = False) -> int:
    """Model evaluations per sample (a guided evaluation counts once although its batch is doubled)."""
    if mode == "ode" and heun:
        return 2 * steps - 1
    return steps


def guided_at(t: float, cfg_scale: float, guidance_low: float, guidance_high: float) -> bool:
    """Whether a step starting at time t uses guidance (the interval is closed)."""
    return cfg_scale > 1.0 and guidance_low <= t <= guidance_high


#################################################################################
#                          Guided velocity evaluation                           #
#################################################################################

class _Guidance:
    """Evaluates the model on the plain or doubled batch and folds the doubled result back."""

    def __init__(self, model_fn: ModelFn, y, *, cfg_scale: float, guidance_low: float,
                 guidance_high: float, null_class: int | None, cfg_channels: int | None, model_dtype: torch.dtype):
        if cfg_scale > 1.0 and y is None:
            raise ValueError("classifier-free guidance needs class labels")
        if cfg_scale > 1.0 and null_class is None:
            raise ValueError("classifier-free guidance needs a model with a null class")
        self.model_fn = model_fn
        self.y = y
        self.null = None if y is None or null_class is None else torch.full_like(y, null_class)
        self.channels = cfg_channels
        self.cfg_scale = cfg_scale
        self.low, self.high = guidance_low, guidance_high
        self.model_dtype = model_dtype

    def active(self, t: torch.Tensor) -> bool:
        return guided_at(float(t), self.cfg_scale, self.low, self.high)

    def evaluate(self, x: torch.Tensor, t: torch.Tensor, guided: bool):
        """(model input, float64 velocity) for the float64 state x at the float64 time t."""
        if guided:
            x_in = torch.cat([x, x])
            y_in = torch.cat([self.y, self.null])
        else:
            x_in, y_in = x, self.y
        t_in = torch.full((x_in.shape[0],), float(t), dtype=torch.float64, device=x.device)
        v = self.model_fn(x_in.to(self.model_dtype), t_in.to(self.model_dtype), y_in)
        return x_in, v.to(torch.float64)

    def combine(self, d: torch.Tensor, guided: bool) -> torch.Tensor:
        """uncond + scale * (cond - uncond) on the doubled batch (on the first `cfg_channels`
        channels, the conditional velocity on the rest); identity otherwise."""
        if not guided:
            return d
        cond, uncond = d.chunk(2)
        guided_d = uncond + self.cfg_scale * (cond - uncond)
        if self.channels is None:
            return guided_d
        return torch.cat([guided_d[:, :self.channels], cond[:, self.channels:]], dim=1)


#################################################################################
#                                  ODE sampler                                  #
#################################################################################

@torch.no_grad()
def ode_sample(model_fn: ModelFn, x1: torch.Tensor, y, *, steps: int = 50, heun: bool = False,
               cfg_scale: float = 1.0, guidance_low: float = 0.0, guidance_high: float = 1.0,
               null_class: int | None = None, cfg_channels: int | None = None, timestep_shift: float = 1.0,
               start: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = v from x1 (noise, t = 1; or the path's point at t = `start`) to t = 0;
    returns float64 latents."""
    guide = _Guidance(model_fn, y, cfg_scale=cfg_scale, guidance_low=guidance_low, guidance_high=guidance_high,
                      null_class=null_class, cfg_channels=cfg_channels, model_dtype=x1.dtype)
    times = ode_times(steps, start, timestep_shift)
    x = x1.to(torch.float64)
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        guided = guide.active(t)
        _, v = guide.evaluate(x, t, guided)
        d = guide.combine(v, guided)
        x_euler = x + (t_next - t) * d
        if heun and i < steps - 1:
            # the corrector keeps the guidance decision of the step's start time
            _, v_end = guide.evaluate(x_euler, t_next, guided)
            d_end = guide.combine(v_end, guided)
            x = x + (t_next - t) * (0.5 * d + 0.5 * d_end)
        else:
            x = x_euler
    return x


#################################################################################
#                                  SDE sampler                                  #
#################################################################################

def _score(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Score of the linear path from its velocity: grad log p_t(x) = -(x + (1 - t) v) / t."""
    return -(x + (1.0 - t) * v) / t


def _drift(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, diffusion: torch.Tensor) -> torch.Tensor:
    """Reverse-SDE drift for dt < 0: v - g/2 * score (g the squared diffusion coefficient)."""
    return v - 0.5 * diffusion * _score(v, x, t)


@torch.no_grad()
def sde_sample(model_fn: ModelFn, x1: torch.Tensor, y, *, steps: int = 250, cfg_scale: float = 1.0,
               guidance_low: float = 0.0, guidance_high: float = 1.0, null_class: int | None = None,
               cfg_channels: int | None = None, noise_fn: NoiseFn | None = None) -> torch.Tensor:
    """Euler-Maruyama from x1 (t = 1) to t = 0; returns float64 latents.

    noise_fn(step) gives the standard normal noise (shape of x1) for stochastic step 0 .. steps - 2;
    by default it is drawn with torch.randn_like.
    """
    if steps < 2:
        raise ValueError("the SDE sampler needs at least 2 steps")
    if noise_fn is None:
        noise_fn = lambda step: torch.randn_like(x1)  # noqa: E731
    guide = _Guidance(model_fn, y, cfg_scale=cfg_scale, guidance_low=guidance_low, guidance_high=guidance_high,
                      null_class=null_class, cfg_channels=cfg_channels, model_dtype=x1.dtype)
    times = sde_times(steps)
    x = x1.to(torch.float64)
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        dt = t_next - t
        diffusion = 2.0 * t
        guided = guide.active(t)
        x_in, v = guide.evaluate(x, t, guided)
        d = guide.combine(_drift(v, x_in, t, diffusion), guided)
        if i < steps - 1:
            noise = noise_fn(i).to(device=x.device, dtype=torch.float64)
            x = x + d * dt + torch.sqrt(diffusion) * torch.sqrt(dt.abs()) * noise
        else:
            x = x + d * dt  # the last step to t = 0 takes the mean
    return x
