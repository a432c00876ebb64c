"""The built-in datasets, registered through the same hook as any outside plugin.

Factories are "module:function" strings, resolved only when a dataset is built, so listing the
datasets (`sendvae plugins`) imports neither torch nor numpy.
"""

from sendvae_cli.hookspecs import hookimpl
from sendvae_cli.specs import DatasetSpec

# CelebA's attribute columns, in the order of list_attr_celeba.txt.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)

SHAPES = DatasetSpec(
    name="shapes",
    description="procedural shapes: 7 independent factors, 30 binary attributes, 5 classes; any size and resolution",
    factory="sendvae_cli.data.shapes:build",
    num_classes=5,
)
CELEBA = DatasetSpec(
    name="celeba",
    description="CelebA aligned faces (--root: the official layout): 40 binary attributes, official train/val/test split",
    factory="sendvae_cli.data.celeba:build",
    attributes=CELEBA_ATTRIBUTES,
    needs_root=True,
)
DEEPFASHION = DatasetSpec(
    name="deepfashion",
    description="DeepFashion attribute prediction (--root: img/, Anno/, Eval/): 1000 binary attributes, official split, "
                "50 category labels",
    factory="sendvae_cli.data.deepfashion:build",
    needs_root=True,
)
AWA = DatasetSpec(
    name="awa",
    description="Animals with Attributes 2 (--root): 85 class-level attributes, 50 classes; test = the 10 unseen classes",
    factory="sendvae_cli.data.awa:build",
    num_classes=50,
    needs_root=True,
    aliases=("awa2",),
)
CSV = DatasetSpec(
    name="csv",
    description="a CSV of image paths and 0/1 attribute columns, optional split and label (--root FILE.csv, or DATA FILE.csv)",
    factory="sendvae_cli.data.csv_attributes:build",
    needs_root=True,
)


@hookimpl
def register_datasets(register):
    for spec in (SHAPES, CELEBA, DEEPFASHION, AWA, CSV):
        register(spec)
