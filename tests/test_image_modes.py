"""Every PIL mode decodes to 8-bit RGB with its real range (data/decode.py), one test per mode."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sendvae_cli.data.decode import to_rgb8
from sendvae_cli.data.folder import ImageFolder, adm_center_crop

skimage_data = pytest.importorskip("skimage.data")


def png16(path, samples: np.ndarray) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA) written by hand: PIL cannot write 16-bit colour."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def rgb(image):
    out = to_rgb8(image)
    assert out.mode == "RGB"
    return np.asarray(out).astype(int)


@pytest.fixture(scope="module")
def photo():
    return skimage_data.astronaut()[100:196, 150:246]  # (96, 96, 3) uint8, a real photograph


def test_16bit_grey_png_keeps_its_range(tmp_path):
    grey = skimage_data.camera()[::4, ::4]
    png16(tmp_path / "g16.png", grey[..., None].astype(np.uint16) * 257)
    with Image.open(tmp_path / "g16.png") as image:
        assert image.mode in ("I;16", "I")  # PIL's convert("RGB") would clip these to white
        assert np.abs(rgb(image) - grey[..., None]).max() <= 1


def test_16bit_rgb_and_grey_alpha_pngs(tmp_path, photo):
    png16(tmp_path / "rgb16.png", photo.astype(np.uint16) * 257)
    with Image.open(tmp_path / "rgb16.png") as image:
        assert np.abs(rgb(image) - photo).max() <= 1
    opaque = np.full(photo.shape[:2] + (1,), 65535, np.uint16)
    png16(tmp_path / "la16.png", np.concatenate([photo[..., :1].astype(np.uint16) * 257, opaque], -1))
    with Image.open(tmp_path / "la16.png") as image:
        assert np.abs(rgb(image) - photo[..., :1]).max() <= 1


def test_mode_I_32bit_integers_use_the_16bit_range():
    values = np.array([[0, 257 * 100, 65535, 70000]], np.int32)
    assert rgb(Image.fromarray(values, mode="I"))[..., 0].tolist() == [[0, 100, 255, 255]]


def test_mode_F_floats_in_unit_range_and_in_8bit_range():
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert rgb(Image.fromarray(unit, mode="F"))[..., 1].tolist() == [[0, 128, 255]]
    eight = np.array([[0.0, 100.0, 255.0]], np.float32)
    assert rgb(Image.fromarray(eight, mode="F"))[..., 1].tolist() == [[0, 100, 255]]


def test_cmyk_gives_the_photo_back(photo):
    cmyk = Image.fromarray(photo).convert("CMYK")
    assert np.abs(rgb(cmyk) - photo).max() <= 2


def test_grey_alpha_and_rgba_composite_over_white():
    la = Image.fromarray(np.array([[[0, 255], [0, 0], [0, 128]]], np.uint8), mode="LA")
    assert rgb(la)[0, :, 0].tolist() == [0, 255, 127]  # opaque black, clear, half
    rgba = Image.fromarray(np.array([[[200, 10, 10, 0], [200, 10, 10, 255]]], np.uint8), mode="RGBA")
    assert rgb(rgba)[0].tolist() == [[255, 255, 255], [200, 10, 10]]


def test_palette_with_transparency_composites_and_plain_palette_is_exact(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    assert rgb(palette)[0].tolist() == [[0, 0, 0], [10, 200, 30]]
    palette.info["transparency"] = 0  # colour 0 is the clear one (GIF, palette PNG)
    palette.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        assert image.mode == "P" and "transparency" in image.info
        assert rgb(image)[0].tolist() == [[255, 255, 255], [10, 200, 30]]


def test_a_16bit_copy_of_a_photo_reads_like_the_8bit_copy(tmp_path, photo):
    """The tensors a folder yields (what teachers and VAEs see) match across bit depths."""
    Image.fromarray(photo).save(tmp_path / "a_8bit.png")
    png16(tmp_path / "b_16bit.png", photo.astype(np.uint16) * 257)
    grey = photo.mean(-1).round().astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "c_8bit_grey.png")
    png16(tmp_path / "d_16bit_grey.png", grey[..., None].astype(np.uint16) * 257)
    folder = ImageFolder(tmp_path, 64)
    eight, sixteen, grey8, grey16 = (folder[i][0].int() for i in range(4))
    assert (eight - sixteen).abs().max() <= 1
    assert (grey8 - grey16).abs().max() <= 1
    assert np.array_equal(adm_center_crop(Image.fromarray(photo), 64), eight.permute(1, 2, 0).numpy())
