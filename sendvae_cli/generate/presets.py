"""Named sampling protocols and the accepted option values (no torch: the CLI checks flags with them)."""

# The protocol of the paper's tables (docs/sample.md): 50k class-balanced samples, SDE Euler-Maruyama with
# 250 steps, CFG 2.5 on t in [0, 0.75] (REPA-E's interval). Explicit flags win over it.
PAPER = {"count": 50_000, "mode": "sde", "steps": 250, "cfg_scale": 2.5, "guidance_low": 0.0,
         "guidance_high": 0.75, "labels": "balanced"}
PRESETS = {"paper": PAPER}
MODES = ("ode", "sde")
PRECISIONS = ("auto", "fp32", "bf16", "fp64")
