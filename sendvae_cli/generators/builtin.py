"""The built-in generators: every SiT and LightningDiT size, registered through the same hook as any
outside plugin.

Names follow REPA and hustvl/LightningDiT: `SiT-XL/1` is SiT's XL size with 1 x 1 patches,
`LightningDiT-XL/1` LightningDiT's; lower-case names are aliases (`sit-xl/1`). SiT: sizes S, B, L,
XL with patches 1, 2 and 4; LightningDiT: B, L, XL and 1p0B with patches 1 and 2. Each family has
`*-tiny/*` sizes for tests and CPU smoke runs. The factory of each spec is the model class itself:

    spec.build(input_size=H, in_channels=C, num_classes=K, projector_dims=[D, ...]) -> SiT | LightningDiT

This module never imports torch.
"""

from sendvae_cli.generators.sizes import lightningdit_sizes, sit_sizes
from sendvae_cli.hookspecs import hookimpl
from sendvae_cli.specs import GeneratorSpec

FAMILIES = {
    "SiT": "sendvae_cli.generators.sit:SiT",
    "LightningDiT": "sendvae_cli.generators.lightningdit:LightningDiT",
}


def _spec(family: str, name: str, arch: dict) -> GeneratorSpec:
    tiny = "tiny" in name
    what = "tests and CPU smoke runs only" if tiny else f"REPA aligns block {arch['encoder_depth']}"
    return GeneratorSpec(
        name=name, family=family, factory=FAMILIES[family], arch=arch, aliases=(name.lower(),),
        description=f"{family}, {arch['depth']} blocks, width {arch['width']}, {arch['heads']} heads, "
                    f"patch {arch['patch_size']}; {what}",
    )


GENERATORS = ([_spec("SiT", name, arch) for name, arch in sit_sizes().items()]
              + [_spec("LightningDiT", name, arch) for name, arch in lightningdit_sizes().items()])


@hookimpl
def register_generators(register):
    for spec in GENERATORS:
        register(spec)
