"""The built-in datasets, registered through the same hook as any outside plugin."""

from sendvae_cli.hookspecs import hookimpl
from sendvae_cli.specs import DatasetSpec

SHAPES = DatasetSpec(
    name="shapes",
    description="procedural shapes: 7 independent factors, 30 binary attributes, 5 classes; any size and resolution",
    factory="sendvae_cli.data.shapes:build",
    num_classes=5,
)


@hookimpl
def register_datasets(register):
    register(SHAPES)
