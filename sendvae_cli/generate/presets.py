"""Named sampling protocols and the accepted option values (no torch: the CLI checks flags with them)."""

# The protocol of the paper's tables (docs/sample.md): 50k class-balanced samples, SDE Euler-Maruyama with
# 250 steps, CFG 2.5 on t in [0, 0.75] (REPA-E's interval). Explicit flags win over it.
PAPER = {"count": 50_000, "mode": "sde", "steps": 250, "cfg_scale": 2.5, "guidance_low": 0.0,
         "guidance_high": 0.75, "labels": "balanced"}
# hustvl/LightningDiT's release protocol (configs/reproductions/*_800ep_cfg.yaml, inference.py):
# 50k samples with i.i.d. random labels, Euler ODE on 250 grid points (249 steps) shifted by 0.3,
# CFG 6.7 on the first 3 channels, off while their time s < 0.125 (ours: t > 0.875).
LIGHTNINGDIT = {"count": 50_000, "mode": "ode", "steps": 249, "cfg_scale": 6.7, "guidance_low": 0.0,
                "guidance_high": 0.875, "labels": "random", "cfg_channels": 3, "timestep_shift": 0.3}
PRESETS = {"paper": PAPER, "lightningdit": LIGHTNINGDIT}
MODES = ("ode", "sde")
PRECISIONS = ("auto", "fp32", "bf16", "fp64")
