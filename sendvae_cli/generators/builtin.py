"""The built-in generators: every SiT size, registered through the same hook as any outside plugin.

Names follow REPA: `SiT-XL/1` is the XL size with 1 x 1 patches; lower-case names are aliases
(`sit-xl/1`). Sizes S, B, L, XL with patches 1, 2 and 4, plus `SiT-tiny/*` for tests and CPU
smoke runs. Factory contract (`sendvae_cli.generators.sit:build_from_spec`):

    spec.build(input_size=H, in_channels=C, num_classes=K, projector_dims=[D, ...], **overrides) -> SiT

This module never imports torch.
"""

from sendvae_cli.generators.sizes import PROJECTOR_WIDTH, sit_sizes
from sendvae_cli.hookspecs import hookimpl
from sendvae_cli.specs import GeneratorSpec

FACTORY = "sendvae_cli.generators.sit:build_from_spec"


def _spec(name: str, depth: int, width: int, heads: int, patch_size: int, encoder_depth: int) -> GeneratorSpec:
    tiny = "tiny" in name
    what = "tests and CPU smoke runs only" if tiny else f"REPA aligns block {encoder_depth}"
    return GeneratorSpec(
        name=name, factory=FACTORY, depth=depth, width=width, heads=heads, patch_size=patch_size,
        encoder_depth=encoder_depth, projector_width=PROJECTOR_WIDTH, aliases=(name.lower(),),
        description=f"SiT, {depth} blocks, width {width}, {heads} heads, patch {patch_size}; {what}",
    )


GENERATORS = [_spec(name, **sizes) for name, sizes in sit_sizes().items()]


@hookimpl
def register_generators(register):
    for spec in GENERATORS:
        register(spec)
