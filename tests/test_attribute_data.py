"""Attribute datasets for probes: CelebA, DeepFashion, AwA and CSV files, on miniature official layouts.

Each fixture writes a handful of small JPEGs and the annotation files in the exact text formats
the official archives use (count and header lines, fixed-width -1/1 columns, DeepFashion
attribute names with spaces), so the readers are tested against the real formats without the
real data.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sendvae_cli.data.attribute_images import proportional_prefix, read_sign_table
from sendvae_cli.data.awa import AnimalsWithAttributes
from sendvae_cli.data.celeba import CelebA
from sendvae_cli.data.csv_attributes import CsvAttributes, seeded_split
from sendvae_cli.data.deepfashion import DeepFashion
from sendvae_cli.data.open import open_images
from sendvae_cli.data.source import NO_LABEL, TEST, TRAIN, VAL
from sendvae_cli.errors import UserError


def colour(i: int) -> tuple[int, int, int]:
    """A distinct flat colour per image, so a decoded row shows which file it came from."""
    return (20 + 9 * i) % 256, (240 - 7 * i) % 256, (60 + 13 * i) % 256


def write_jpeg(path, i: int, size=(36, 44)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour(i)).save(path, quality=95)


def signs(bits) -> str:
    """A row of the official -1/1 files: two characters per value, one space apart."""
    return " ".join(f"{1 if b == 1 else -1 if b == 0 else b:2d}" for b in bits)


def assert_image(source, row: int, file_index: int, resolution: int) -> None:
    image, _ = source[row]
    assert image.shape == (3, resolution, resolution) and str(image.dtype) == "torch.uint8"
    centre = image[:, resolution // 2, resolution // 2].int().tolist()
    assert all(abs(a - b) <= 6 for a, b in zip(centre, colour(file_index))), (centre, colour(file_index))


def assert_describable(source) -> dict:
    described = json.loads(json.dumps(source.describe()))
    assert described["rows"] == len(source) and described["resolution"] == source.resolution
    assert described["split"] and described["annotations"]
    for entry in described["annotations"]:
        assert len(entry["sha256"]) == 64 and entry["bytes"] > 0 and entry["name"]
    return described


# -- CelebA -------------------------------------------------------------------------------------

CELEBA_N = 20
CELEBA_SPLITS = [0] * 14 + [1] * 3 + [2] * 3
CELEBA_NAMES = ["5_o_Clock_Shadow", "Bald", "Smiling", "Young"]


def celeba_bits(i: int) -> list[int]:
    return [(i + j) % 3 == 0 for j in range(len(CELEBA_NAMES))]


def make_celeba(root, layout: str = "drive"):
    """CelebA as the Google Drive archive unpacks ("drive"), flat, or torchvision's root/celeba."""
    img, anno, ev = {"drive": ("Img", "Anno", "Eval"), "flat": (".", ".", "."),
                     "torchvision": ("celeba", "celeba", "celeba")}[layout]
    names = [f"{i + 1:06d}.jpg" for i in range(CELEBA_N)]
    for i, name in enumerate(names):
        write_jpeg(root / img / "img_align_celeba" / name, i, size=(18, 22))
    # The attribute file lists the images in another order than the partition file, and one
    # line has irregular spacing: rows are matched by name, and both parsers must agree.
    order = list(range(CELEBA_N))[::-1]
    lines = [str(CELEBA_N), " ".join(CELEBA_NAMES) + " "]
    for i in order:
        bits = celeba_bits(i)
        lines.append(f"{names[i]} {signs(bits)}" if i != 5 else f"{names[i]}\t" + " ".join(
            "1" if b else "-1" for b in bits))
    (root / anno).mkdir(parents=True, exist_ok=True)
    (root / anno / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / ev).mkdir(parents=True, exist_ok=True)
    (root / ev / "list_eval_partition.txt").write_text(
        "".join(f"{name} {s}\r\n" for name, s in zip(names, CELEBA_SPLITS)))
    return root


@pytest.mark.parametrize("layout", ["drive", "flat", "torchvision"])
def test_celeba_reads_the_official_layouts(tmp_path, layout):
    source = CelebA(make_celeba(tmp_path, layout), resolution=16)
    folder = {"drive": "Img/img_align_celeba", "flat": "img_align_celeba", "torchvision": "celeba/img_align_celeba"}
    assert len(source) == CELEBA_N
    assert source.row_id(0) == f"{folder[layout]}/000001.jpg" and source.row_id(19).endswith("000020.jpg")
    assert source.attribute_names == tuple(CELEBA_NAMES)
    assert source.split_codes().tolist() == CELEBA_SPLITS and source.split_codes().dtype == np.int8
    matrix = source.attribute_matrix()
    assert matrix.dtype == np.uint8 and matrix.shape == (CELEBA_N, len(CELEBA_NAMES))
    assert matrix.tolist() == [[int(b) for b in celeba_bits(i)] for i in range(CELEBA_N)]
    assert source.attribute_matrix() is matrix  # parsed once
    assert source.label(3) == NO_LABEL and source[3][1] == NO_LABEL
    assert_image(source, 7, 7, 16)
    described = assert_describable(source)
    assert described["kind"] == "celeba" and described["split_counts"] == {"train": 14, "val": 3, "test": 3}
    assert {a["name"].rsplit("/", 1)[-1] for a in described["annotations"]} == {
        "list_attr_celeba.txt", "list_eval_partition.txt"}


def test_num_images_keeps_a_proportional_prefix_of_each_split(tmp_path):
    root = make_celeba(tmp_path)
    source = CelebA(root, resolution=16, num_images=10)
    # 20 rows, 14/3/3 -> 7/1.5/1.5: the leftover row of the tied remainders goes to test.
    assert len(source) == 10
    assert source.split_codes().tolist() == [TRAIN] * 7 + [VAL] + [TEST] * 2  # a tie goes to test
    kept = [int(source.row_id(i)[-10:-4]) - 1 for i in range(len(source))]
    assert kept == [0, 1, 2, 3, 4, 5, 6, 14, 17, 18]
    assert source.attribute_matrix().tolist() == [[int(b) for b in celeba_bits(i)] for i in kept]
    assert_image(source, 8, kept[8], 16)
    assert CelebA(root, resolution=16, num_images=3).split_codes().tolist() == [TRAIN, VAL, TEST]
    assert len(CelebA(root, resolution=16, num_images=100)) == CELEBA_N


def test_proportional_prefix_is_exact_and_keeps_order():
    splits = np.array([TRAIN] * 162_770 + [VAL] * 19_867 + [TEST] * 19_962, dtype=np.int8)
    keep = proportional_prefix(splits, 1000)
    assert len(keep) == 1000 and np.bincount(splits[keep]).tolist() == [803, 98, 99]
    assert (np.diff(keep) > 0).all() and keep[802] == 802 and keep[803] == 162_770 and keep[901] == 182_637
    mixed = np.array([TEST, TRAIN, VAL, TRAIN, TEST, TRAIN, TRAIN, VAL, TRAIN, TRAIN], dtype=np.int8)
    assert proportional_prefix(mixed, 4).tolist() == [0, 1, 2, 3]
    assert proportional_prefix(mixed, 2).tolist() == [0, 1]  # train first, then test
    assert proportional_prefix(mixed, None).tolist() == list(range(10))


def test_sign_table_parsers_agree(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(-1, 2, size=(6, 50))
    names = [f"img/Two-1_Piece/img_{i:08d}.jpg" for i in range(6)]
    lines = ["6", "image_name  attribute_labels"]
    for i, (name, row) in enumerate(zip(names, values)):
        fixed = " ".join(f"{v:2d}" for v in row)
        loose = "  ".join(str(v) for v in row)
        lines.append(f"{name.ljust(40)}{fixed}" if i % 2 else f"{name} {loose}")
    path = tmp_path / "list_attr_img.txt"
    path.write_text("\n".join(lines) + "\n\n")
    out = read_sign_table(path, names[::-1], 50, header_lines=2, prefix="--root x")
    assert out.tolist() == (values[::-1] == 1).astype(int).tolist()
    path.write_text(path.read_text().replace(" 1 ", " 2 ", 1))
    with pytest.raises(UserError, match=r"list_attr_img.txt line \d+: a value other than -1, 0 and 1"):
        read_sign_table(path, names, 50, header_lines=2, prefix="--root x")


def test_celeba_errors_name_the_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"^--root \S*nowhere: no such folder$"):
        CelebA(tmp_path / "nowhere")
    layout = r"\(expected the official CelebA layout: img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt\)"
    for missing in ("Anno/list_attr_celeba.txt", "Eval/list_eval_partition.txt", "Img/img_align_celeba"):
        root = make_celeba(tmp_path / missing.replace("/", "_"))
        target = root / missing
        if target.is_dir():
            target.rename(root / "elsewhere")
        else:
            target.unlink()
        name = missing.split("/")[-1]
        with pytest.raises(UserError, match=rf"^--root {root}: missing {name}/? {layout}$"):
            CelebA(root)


def test_missing_and_broken_images(tmp_path):
    root = make_celeba(tmp_path)
    images = root / "Img" / "img_align_celeba"
    (images / "000020.jpg").unlink()
    with pytest.raises(UserError, match=r"missing image Img/img_align_celeba/000020.jpg \(listed in list_eval_partition.txt\)"):
        CelebA(root)
    source = CelebA(root, num_images=10, resolution=16)  # keeps test rows 000018-19 only: opens
    (images / "000005.jpg").unlink()
    (images / "000006.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"missing image Img/img_align_celeba/000005.jpg"):
        source[4]
    with pytest.raises(UserError, match=r"cannot decode image Img/img_align_celeba/000006.jpg"):
        source[5]
    with pytest.raises(UserError, match=r"missing image Img/img_align_celeba/000005.jpg"):
        CelebA(root, num_images=10, strict=True)


# -- DeepFashion --------------------------------------------------------------------------------

DF_ATTRIBUTES = [("a-line", 3), ("abstract", 1), ("abstract chevron print", 1), ("denim", 2), ("v-neck", 4),
                 ("boho chic", 5)]
DF_ITEMS = ["Sheer_Pleated-Front_Blouse", "Two-1_Piece_Set", "Classic_Denim_Jacket"]
DF_SPLITS = ["train"] * 8 + ["val"] * 2 + ["test"] * 2


def df_name(i: int) -> str:
    return f"img/{DF_ITEMS[i % 3]}/img_{i + 1:08d}.jpg"


def df_values(i: int) -> list[int]:
    return [[-1, 0, 1][(i * 7 + j * 3) % 3] for j in range(len(DF_ATTRIBUTES))]


def make_deepfashion(root, *, img_wrapper: bool = False, categories: bool = True):
    n = len(DF_SPLITS)
    for i in range(n):
        write_jpeg(root / ("Img" if img_wrapper else ".") / df_name(i), i)
    anno, ev = root / "Anno", root / "Eval"
    anno.mkdir(parents=True)
    ev.mkdir()
    (anno / "list_attr_cloth.txt").write_text(
        f"{len(DF_ATTRIBUTES)}\nattribute_name  attribute_type\n"
        + "".join(f"{name:<29}{kind}\n" for name, kind in DF_ATTRIBUTES))
    order = list(range(n))[::-1] + [n]  # other order, plus an image no split lists
    (anno / "list_attr_img.txt").write_text(
        f"{n + 1}\nimage_name  attribute_labels\n"
        + "".join(f"{df_name(i):<70}{signs(df_values(i))}\n" for i in order))
    (ev / "list_eval_partition.txt").write_text(
        f"{n}\nimage_name  evaluation_status\n" + "".join(f"{df_name(i):<70}{s}\n" for i, s in enumerate(DF_SPLITS)))
    if categories:
        (anno / "list_category_img.txt").write_text(
            f"{n}\nimage_name  category_label\n" + "".join(f"{df_name(i):<70}{i % 50 + 1}\n" for i in range(n)))
        (anno / "list_category_cloth.txt").write_text(
            "50\ncategory_name  category_type\n" + "".join(f"{'Cat ' + str(c):<20}{c % 3 + 1}\n" for c in range(50)))
    return root


def test_deepfashion_reads_the_official_layout(tmp_path):
    source = DeepFashion(make_deepfashion(tmp_path), resolution=16)
    n = len(DF_SPLITS)
    assert len(source) == n and source.row_ids() == [df_name(i) for i in range(n)]
    assert source.attribute_names == tuple(name for name, _ in DF_ATTRIBUTES)
    assert source.attribute_types == ("shape", "texture", "texture", "fabric", "part", "style")
    assert source.split_codes().tolist() == [TRAIN] * 8 + [VAL] * 2 + [TEST] * 2
    assert source.attribute_matrix().tolist() == [[int(v == 1) for v in df_values(i)] for i in range(n)]
    assert [source.label(i) for i in range(n)] == [i % 50 for i in range(n)] and source[4][1] == 4
    assert source.num_classes == 50 and source.class_names[1] == "Cat 1"
    assert_image(source, 10, 10, 16)
    described = assert_describable(source)
    assert described["kind"] == "deepfashion" and described["attribute_types"]["texture"] == 2
    assert {a["name"] for a in described["annotations"]} >= {
        "Anno/list_attr_img.txt", "Anno/list_attr_cloth.txt", "Eval/list_eval_partition.txt"}
    small = DeepFashion(tmp_path, resolution=16, num_images=6)
    assert small.split_codes().tolist() == [TRAIN] * 4 + [VAL] + [TEST]
    assert small.attribute_matrix().tolist() == [[int(v == 1) for v in df_values(i)] for i in (0, 1, 2, 3, 8, 10)]


def test_deepfashion_img_wrapper_without_categories(tmp_path):
    source = DeepFashion(make_deepfashion(tmp_path, img_wrapper=True, categories=False), resolution=16)
    assert source.row_id(0) == "Img/" + df_name(0) and source.label(0) == NO_LABEL and source.num_classes is None
    assert_image(source, 1, 1, 16)


def test_deepfashion_errors(tmp_path):
    layout = r"\(expected the DeepFashion Category and Attribute Prediction layout: img/, Anno/list_attr_cloth.txt"
    for missing in ("Anno/list_attr_cloth.txt", "Anno/list_attr_img.txt", "Eval/list_eval_partition.txt", "img"):
        root = make_deepfashion(tmp_path / missing.replace("/", "_"), categories=False)
        target = root / missing
        target.rename(root / "moved") if target.is_dir() else target.unlink()
        with pytest.raises(UserError, match=rf"^--root {root}: missing {missing.split('/')[-1]}/? {layout}"):
            DeepFashion(root)
    root = make_deepfashion(tmp_path / "unlisted", categories=False)
    with open(root / "Eval" / "list_eval_partition.txt", "a") as f:
        f.write(f"{df_name(13):<70}test\n")
    write_jpeg(root / df_name(13), 13)
    source = DeepFashion(root)  # opening does not read the attribute file...
    with pytest.raises(UserError, match=r"list_attr_img.txt has no row for image img/Two-1_Piece_Set/img_00000014.jpg$"):
        source.attribute_matrix()  # ...the first use does
    cloth = root / "Anno" / "list_attr_cloth.txt"
    cloth.write_text(cloth.read_text().replace("boho chic".ljust(29) + "5", "boho chic  7"))
    with pytest.raises(UserError, match=r"list_attr_cloth.txt line 8: attribute type '7', expected 1-5"):
        DeepFashion(root)


# -- Animals with Attributes --------------------------------------------------------------------

AWA_CLASSES = ["antelope", "grizzly+bear", "killer+whale", "beaver", "dalmatian"]
AWA_PREDICATES = ["black", "white", "blue", "brown"]
AWA_MATRIX = [[0, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]]
AWA_TEST = ["killer+whale", "dalmatian"]
AWA_COUNTS = {"antelope": 12, "grizzly+bear": 3, "killer+whale": 2, "beaver": 2, "dalmatian": 2}


def make_awa(root):
    folder = root / "Animals_with_Attributes2"
    k = 0
    for name, count in AWA_COUNTS.items():
        for j in range(count):
            write_jpeg(folder / "JPEGImages" / name / f"{name}_{10001 + j}.jpg", k)
            k += 1
    (folder / "classes.txt").write_text("".join(f"{i + 1:6d}\t{c}\n" for i, c in enumerate(AWA_CLASSES)))
    (folder / "predicates.txt").write_text("".join(f"{i + 1}\t{p}\n" for i, p in enumerate(AWA_PREDICATES)))
    (folder / "predicate-matrix-binary.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in AWA_MATRIX))
    (folder / "trainclasses.txt").write_text("".join(f"{c}\n" for c in AWA_CLASSES if c not in AWA_TEST))
    (folder / "testclasses.txt").write_text("".join(f"{c}\r\n" for c in AWA_TEST))
    return root


def awa_rows():
    """(relative path, class index, file index) in sorted path order."""
    rows, k = [], 0
    for name, count in AWA_COUNTS.items():
        for j in range(count):
            rows.append((f"Animals_with_Attributes2/JPEGImages/{name}/{name}_{10001 + j}.jpg",
                         AWA_CLASSES.index(name), k))
            k += 1
    return sorted(rows)


def test_awa_uses_the_class_split(tmp_path):
    source = AnimalsWithAttributes(make_awa(tmp_path), resolution=16)
    rows = awa_rows()
    assert source.row_ids() == [r[0] for r in rows]
    assert [source.label(i) for i in range(len(source))] == [r[1] for r in rows]
    assert source.attribute_names == tuple(AWA_PREDICATES) and source.class_names == AWA_CLASSES
    assert source.attribute_matrix().tolist() == [AWA_MATRIX[r[1]] for r in rows]
    codes = source.split_codes()
    expected = []
    for path, label, _ in rows:
        name = AWA_CLASSES[label]
        index = sorted(p for p, lab, _ in rows if lab == label).index(path)
        expected.append(TEST if name in AWA_TEST else VAL if index % 10 == 9 else TRAIN)
    assert codes.tolist() == expected
    assert [source.row_id(i) for i in np.flatnonzero(codes == VAL)] == [
        "Animals_with_Attributes2/JPEGImages/antelope/antelope_10010.jpg"]
    assert {AWA_CLASSES[source.label(i)] for i in np.flatnonzero(codes == TEST)} == set(AWA_TEST)
    assert_image(source, 5, rows[5][2], 16)
    assert source[5][1] == rows[5][1]
    assert assert_describable(source)["classes"] == 5
    assert len(AnimalsWithAttributes(tmp_path / "Animals_with_Attributes2")) == len(rows)


def test_awa_errors(tmp_path):
    layout = r"\(expected the Animals with Attributes layout: classes.txt"
    for missing in ("classes.txt", "predicates.txt", "predicate-matrix-binary.txt", "trainclasses.txt",
                    "testclasses.txt", "JPEGImages"):
        root = make_awa(tmp_path / missing)
        target = root / "Animals_with_Attributes2" / missing
        target.rename(root / "moved") if target.is_dir() else target.unlink()
        with pytest.raises(UserError, match=rf"^--root {root}: missing {missing}/? {layout}"):
            AnimalsWithAttributes(root)
    root = make_awa(tmp_path / "bad")
    (root / "Animals_with_Attributes2" / "testclasses.txt").write_text("killer+whale\nunicorn\n")
    with pytest.raises(UserError, match=r"testclasses.txt line 2: class 'unicorn' is not in classes.txt"):
        AnimalsWithAttributes(root)


# -- CSV ----------------------------------------------------------------------------------------


def make_csv(root, *, split: bool, rows: int = 10, bad: str | None = None):
    """A CSV of PNGs in pics/ (row 1 by absolute path), with every spelling of a binary value."""
    (root / "pics").mkdir(parents=True)
    lines = ["image,Smiling,Male,label" + (",split" if split else "")]
    for i in range(rows):
        Image.new("RGB", (40, 30), colour(i)).save(root / "pics" / f"{i:03d}.png")
        path = f"pics/{i:03d}.png" if i != 1 else str((root / "pics" / f"{i:03d}.png").resolve())
        smiling = ["1", "0", "-1", "TRUE", "false", "Yes", "no"][i % 7] if not (bad and i == 1) else bad
        lines.append(f"{path},{smiling},{'true' if i % 2 else 'false'},{i % 3 if i != 4 else ''}"
                     + (f",{['train', 'Validation', 'test', 'valid', 'TRAIN'][i % 5]}" if split else ""))
    path = root / "list.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_with_a_split_column(tmp_path):
    source = CsvAttributes(make_csv(tmp_path, split=True), resolution=16)
    assert len(source) == 10 and source.row_id(0) == "pics/000.png" and source.row_id(1).startswith("/")
    assert source.attribute_names == ("Smiling", "Male")
    smiling = [1, 0, 0, 1, 0, 1, 0, 1, 0, 0]
    assert source.attribute_matrix().tolist() == [[s, i % 2] for i, s in enumerate(smiling)]
    assert source.split_codes().tolist() == [TRAIN, VAL, TEST, VAL, TRAIN] * 2
    assert [source.label(i) for i in range(10)] == [0, 1, 2, 0, NO_LABEL, 2, 0, 1, 2, 0]
    assert source.num_classes == 3
    assert_image(source, 1, 1, 16)
    assert "split" in assert_describable(source)["split"]


def test_csv_without_a_split_column_is_seeded(tmp_path):
    path = make_csv(tmp_path, split=False, rows=30)
    source = CsvAttributes(path, resolution=16, seed=3)
    assert source.split_codes().tolist() == seeded_split(30, 3).tolist()
    assert np.bincount(source.split_codes()).tolist() == [24, 3, 3]
    assert CsvAttributes(path, seed=3).split_codes().tolist() == source.split_codes().tolist()
    assert CsvAttributes(path, seed=4).split_codes().tolist() != source.split_codes().tolist()
    assert "default_rng([3, 1234])" in assert_describable(source)["split"]
    small = CsvAttributes(path, resolution=16, seed=3, num_images=10)
    assert np.bincount(small.split_codes(), minlength=3).tolist() == [8, 1, 1]


def test_csv_errors(tmp_path):
    path = make_csv(tmp_path, split=False, bad="maybe")
    with pytest.raises(UserError, match=rf"^--root {path}: line 3, column 'Smiling': 'maybe' is not a binary value"):
        CsvAttributes(path)
    with pytest.raises(UserError, match=r"nothing.csv: no such file$"):
        CsvAttributes(tmp_path / "nothing.csv")
    (tmp_path / "nopath.csv").write_text("name,Smiling\na.png,1\n")
    with pytest.raises(UserError, match=r"nopath.csv: no image column \(expected a column named path, image or file\)"):
        CsvAttributes(tmp_path / "nopath.csv")


# -- registry and DATA --------------------------------------------------------------------------


def test_registry_finds_the_datasets_and_open_images_builds_them(tmp_path, fresh_registry):
    from sendvae_cli.registry import get_registry

    registry = get_registry()
    for name in ("celeba", "deepfashion", "awa", "csv"):
        spec = registry.dataset(name)
        assert spec.needs_root and spec.description
    assert len(registry.dataset("celeba").attributes) == 40
    make_celeba(tmp_path / "celeba")
    source = open_images("celeba", registry=registry, resolution=32, root=str(tmp_path / "celeba"), num_images=5)
    assert isinstance(source, CelebA) and len(source) == 5 and source[0][0].shape == (3, 32, 32)
    assert source.split_codes().tolist() == [TRAIN] * 3 + [VAL, TEST]
    with pytest.raises(UserError, match="pass --root"):
        open_images("celeba", registry=registry, resolution=32)
    awa = open_images("awa2", registry=registry, resolution=16, root=str(make_awa(tmp_path / "awa")))
    assert isinstance(awa, AnimalsWithAttributes)
    csv_path = make_csv(tmp_path / "csv", split=True)
    data = open_images(str(csv_path), registry=registry, resolution=16)
    assert isinstance(data, CsvAttributes) and len(data) == 10
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a folder of images"):
        open_images(str(tmp_path / "notes.txt"), registry=registry, resolution=16)
    bad = make_csv(tmp_path / "bad", split=True, bad="2")
    with pytest.raises(UserError, match=rf"^DATA {bad}: line 3, column 'Smiling'"):
        open_images(str(bad), registry=registry, resolution=16)


def test_sources_pickle_without_their_matrix(tmp_path):
    """DataLoader workers started by spawn get a copy of the source: the cached matrix stays behind."""
    sources = [CelebA(make_celeba(tmp_path / "c"), resolution=16), DeepFashion(make_deepfashion(tmp_path / "d")),
               AnimalsWithAttributes(make_awa(tmp_path / "a")), CsvAttributes(make_csv(tmp_path / "s", split=False))]
    for source in sources:
        matrix = source.attribute_matrix()
        copy = pickle.loads(pickle.dumps(source))
        assert copy._matrix is None and copy.row_ids() == source.row_ids()
        assert (copy.attribute_matrix() == matrix).all() and copy[0][0].shape == source[0][0].shape


def test_listing_datasets_imports_neither_torch_nor_numpy():
    code = ("import sys; import sendvae_cli.data.builtin as b; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
