"""The built-in metrics `sendvae fid` adds to its own figures, registered through the same hook
as any outside plugin. This module never imports torch."""

from sendvae_cli.hookspecs import hookimpl
from sendvae_cli.specs import MetricSpec

METRICS = [
    MetricSpec(name="kid", factory="sendvae_cli.eval.kid:KID",
               description="Kernel Inception Distance: unbiased cubic-kernel MMD², 100 subsets of 1,000 (torch-fidelity's)"),
]


@hookimpl
def register_metrics(register):
    for spec in METRICS:
        register(spec)
