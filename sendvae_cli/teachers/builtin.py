"""The built-in teachers, registered through the same hook as any outside plugin.

Table layout: one row per teacher. Widths and patch sizes are the real models'; `tiny` gives
architecture overrides that build the same code path at test size with random weights.
"""

from sendvae_cli.hookspecs import hookimpl
from sendvae_cli.specs import TeacherSpec

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

TIMM = "sendvae_cli.teachers.timm_vit:build"
OPEN_CLIP = "sendvae_cli.teachers.open_clip_vit:build"
HF = "sendvae_cli.teachers.hf_vit:build"

TIMM_TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


# The global feature (`Teacher.global_features`) each family is usually read out with: the CLS
# token of the final norm output for DINO models (FD_DINOv2), the mean of patch tokens for MAE.
GLOBAL_FEATURE = {"DINOv2": "cls", "DINOv3": "cls", "MAE": "mean"}


def _timm(name, family, width, patch, model, licence, aliases=()):
    options = {"timm_model": model, "global_feature": GLOBAL_FEATURE[family]}
    if family == "DINOv2":
        options["pos_embed"] = "dinov2"  # resampled as DINOv2's own code does (see timm_vit.py)
    return TeacherSpec(
        name=name, family=family, width=width, patch_size=patch, factory=TIMM,
        source=f"timm:{model}", licence=licence, aliases=tuple(aliases),
        options=options, tiny=TIMM_TINY,
    )


def _clip(name, width, patch, arch, hf_hub, aliases=()):
    return TeacherSpec(
        name=name, family="CLIP", width=width, patch_size=patch, factory=OPEN_CLIP,
        source=f"open_clip:{arch}/openai", licence="MIT", aliases=tuple(aliases),
        options={"arch": arch, "pretrained": "openai", "hf_hub": hf_hub},  # where open_clip fetches them
        tiny={"width": 64, "layers": 2, "head_width": 32, "image_size": 32, "output_dim": 32},
    )


def _hf(name, family, hf_family, hub_id, config, norm, licence, aliases=()):
    return TeacherSpec(
        name=name, family=family, width=config["hidden_size"], patch_size=config["patch_size"], factory=HF,
        source=f"transformers:{hub_id}", licence=licence, aliases=tuple(aliases),
        options={"hf_family": hf_family, "hf_id": hub_id, "config": config, "mean": norm[0], "std": norm[1]},
        tiny={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 2 * config["patch_size"]},
    )


def _vit_config(hidden, layers, heads, mlp, image, patch, eps=1e-6):
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": mlp, "image_size": image, "patch_size": patch, "layer_norm_eps": eps}


TEACHERS = [
    # DINOv2 (REPA's and Send-VAE's default teacher is dinov2-b); REPA names as aliases.
    _timm("dinov2-s", "DINOv2", 384, 14, "vit_small_patch14_dinov2.lvd142m", "Apache-2.0", ["dinov2-vit-s"]),
    _timm("dinov2-b", "DINOv2", 768, 14, "vit_base_patch14_dinov2.lvd142m", "Apache-2.0", ["dinov2-vit-b"]),
    _timm("dinov2-l", "DINOv2", 1024, 14, "vit_large_patch14_dinov2.lvd142m", "Apache-2.0", ["dinov2-vit-l"]),
    _timm("dinov2-g", "DINOv2", 1536, 14, "vit_giant_patch14_dinov2.lvd142m", "Apache-2.0", ["dinov2-vit-g"]),
    _timm("dinov2-s-reg", "DINOv2", 384, 14, "vit_small_patch14_reg4_dinov2.lvd142m", "Apache-2.0"),
    _timm("dinov2-b-reg", "DINOv2", 768, 14, "vit_base_patch14_reg4_dinov2.lvd142m", "Apache-2.0"),
    _timm("dinov2-l-reg", "DINOv2", 1024, 14, "vit_large_patch14_reg4_dinov2.lvd142m", "Apache-2.0"),
    _timm("dinov2-g-reg", "DINOv2", 1536, 14, "vit_giant_patch14_reg4_dinov2.lvd142m", "Apache-2.0"),
    # DINOv3 (gated on the hub: accept its licence there before downloading).
    _timm("dinov3-s", "DINOv3", 384, 16, "vit_small_patch16_dinov3.lvd1689m", "DINOv3 License"),
    _timm("dinov3-b", "DINOv3", 768, 16, "vit_base_patch16_dinov3.lvd1689m", "DINOv3 License"),
    _timm("dinov3-l", "DINOv3", 1024, 16, "vit_large_patch16_dinov3.lvd1689m", "DINOv3 License"),
    # CLIP (OpenAI weights through open_clip; QuickGELU as trained).
    _clip("clip-b16", 768, 16, "ViT-B-16-quickgelu", "timm/vit_base_patch16_clip_224.openai", ["clip-vit-b"]),
    _clip("clip-l14", 1024, 14, "ViT-L-14-quickgelu", "timm/vit_large_patch14_clip_224.openai", ["clip-vit-L", "clip-vit-l"]),
    # SigLIP (transformers).
    _hf("siglip-b16", "SigLIP", "siglip", "google/siglip-base-patch16-224",
        _vit_config(768, 12, 12, 3072, 224, 16), HALF, "Apache-2.0"),
    _hf("siglip-l16", "SigLIP", "siglip", "google/siglip-large-patch16-256",
        _vit_config(1024, 24, 16, 4096, 256, 16), HALF, "Apache-2.0"),
    _hf("siglip-so400m", "SigLIP", "siglip", "google/siglip-so400m-patch14-224",
        _vit_config(1152, 27, 16, 4304, 224, 14), HALF, "Apache-2.0"),
    # MAE (timm).
    _timm("mae-b", "MAE", 768, 16, "vit_base_patch16_224.mae", "CC-BY-NC-4.0", ["mae-vit-b"]),
    _timm("mae-l", "MAE", 1024, 16, "vit_large_patch16_224.mae", "CC-BY-NC-4.0", ["mae-vit-l"]),
    # I-JEPA (transformers).
    _hf("ijepa-h14", "I-JEPA", "ijepa", "facebook/ijepa_vith14_1k",
        _vit_config(1280, 32, 16, 5120, 224, 14), IMAGENET, "CC-BY-NC-4.0", ["jepa-vit-h"]),
    _hf("ijepa-g16", "I-JEPA", "ijepa", "facebook/ijepa_vitg16_22k",
        _vit_config(1408, 40, 16, 6144, 224, 16), IMAGENET, "CC-BY-NC-4.0"),
]


@hookimpl
def register_teachers(register):
    for spec in TEACHERS:
        register(spec)
