"""Fault-and-tamper suite, images: each test replays a defect found in the image path (16-bit PNGs decoded as
white, transparency dropped, CMYK and EXIF orientation ignored, a 1 × 100 000 PNG that took one curve to 2.7 GB)
and shows the fixed behaviour, through `scan_image_root` and `ImageSet.images()` as a user run does.

Expected pixels are stated from the file's own definition (the samples written and the format's arithmetic),
never computed by the code under test.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from harness.core.errors import ImageFolderError
from harness.data import images as images_module
from harness.data.images import DEFAULT_MAX_ASPECT, scan_image_root

WHITE = (255, 255, 255)


def saved(image: Image.Image, path: Path, image_format: str | None = None, **options: object) -> Path:
    """Write `image` to `path` (creating its folder) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, image_format, **options)
    return path


def grey16(samples: list[list[int]]) -> Image.Image:
    """A 16-bit greyscale image with exactly these samples (rows of columns)."""
    return Image.fromarray(np.array(samples, dtype=np.uint16))


def mode_of(path: Path) -> str:
    """The mode PIL opens the file in (checks that a test file is the kind of file the test means)."""
    with Image.open(path) as image:
        return image.mode


def decoded(root: Path, category: str = "cats", **limits: float) -> list[Image.Image]:
    """The pixels a run gets: the folder scanned, then the category's images taken from the set."""
    return scan_image_root(root, **limits).images(category)


def scan_problems(root: Path, **limits: float) -> str:
    """The ImageFolderError message scanning `root` raises."""
    with pytest.raises(ImageFolderError) as error:
        scan_image_root(root, **limits)
    return str(error.value)


def test_a_16_bit_grey_png_decodes_to_its_grey_not_white(tmp_path):
    """16-bit mid grey (32768 everywhere) was decoded as white (255, 255, 255) by convert("RGB"), which clips
    the samples to 8 bits; it now comes back as 32768 / 257 = 127.5, i.e. 128 ± 1."""
    path = saved(grey16([[32768] * 6] * 4), tmp_path / "cats" / "grey.png")
    assert mode_of(path) == "I;16"  # the file is what the probe used
    [image] = decoded(tmp_path)
    assert (image.mode, image.size) == ("RGB", (6, 4))
    assert np.abs(np.asarray(image, dtype=int) - 128).max() <= 1


def test_a_16_bit_gradient_keeps_its_values_and_order(tmp_path):
    """A 16-bit ramp x · 257 (x = 0 … 255, 16 rows so that it is within the aspect limit) decodes to exactly x,
    strictly increasing; 33024 (128.498 · 257) rounds down to 128 and 33025 (128.502 · 257) up to 129."""
    ramp_rows = [[x * 257 for x in range(256)]] * 15
    saved(grey16([*ramp_rows, [33024, 33025] * 128]), tmp_path / "cats" / "ramp.png")
    [image] = decoded(tmp_path)
    ramp = [image.getpixel((x, 0)) for x in range(256)]
    assert ramp == [(x, x, x) for x in range(256)]
    assert [image.getpixel((x, 15)) for x in (0, 1)] == [(128, 128, 128), (129, 129, 129)]


def test_a_16_bit_grey_png_with_a_transparent_value_shows_white_there(tmp_path):
    """A 16-bit grey PNG whose tRNS chunk makes the value 5000 transparent: those pixels are white (not their
    grey 5000 / 257 = 19), the others their grey (32768 → 128, 0 → 0)."""
    saved(grey16([[5000, 32768, 0]]), tmp_path / "cats" / "keyed.png", transparency=5000)
    [image] = decoded(tmp_path)
    assert [image.getpixel((x, 0)) for x in range(3)] == [WHITE, (128, 128, 128), (0, 0, 0)]


def test_a_palette_png_with_a_transparent_index_shows_white_there(tmp_path):
    """Palette index 0 is red and transparent, index 1 opaque blue: convert("RGB") showed the hidden red; now the
    transparent pixels are white and the opaque ones blue."""
    image = Image.new("P", (4, 2), 0)
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.paste(1, (2, 0, 4, 2))
    saved(image, tmp_path / "cats" / "palette.png", transparency=0)
    [decoded_image] = decoded(tmp_path)
    pixels = [decoded_image.getpixel((x, y)) for y in range(2) for x in range(4)]
    assert pixels == [WHITE, WHITE, (0, 0, 255), (0, 0, 255)] * 2


def test_an_rgba_png_is_composited_over_white(tmp_path):
    """Column 0 is red at alpha 0 (hidden), column 1 black at alpha 128, column 2 green at alpha 255: white,
    255 · (255 − 128) / 255 = 127 grey, and green."""
    image = Image.new("RGBA", (3, 2))
    for x, colour in enumerate([(255, 0, 0, 0), (0, 0, 0, 128), (0, 255, 0, 255)]):
        image.paste(colour, (x, 0, x + 1, 2))
    saved(image, tmp_path / "cats" / "half.png")
    [decoded_image] = decoded(tmp_path)
    assert [decoded_image.getpixel((x, 1)) for x in range(3)] == [WHITE, (127, 127, 127), (0, 255, 0)]


def test_a_grey_and_alpha_png_is_composited_over_white(tmp_path):
    """LA: grey 0 at alpha 0 is white, grey 40 at alpha 255 stays 40."""
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((1, 0), (40, 255))
    saved(image, tmp_path / "cats" / "la.png")
    [decoded_image] = decoded(tmp_path)
    assert [decoded_image.getpixel((x, 0)) for x in range(2)] == [WHITE, (40, 40, 40)]


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    """Every channel of `pixel` within `tolerance` of `expected` (JPEG's lossy coding moves colours a little)."""
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def test_a_cmyk_jpeg_without_a_profile_is_converted(tmp_path):
    """Pure cyan ink (C = 255, M = Y = K = 0) is (0, 255, 255) in RGB, within JPEG's tolerance."""
    saved(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "cats" / "cyan.jpg")
    assert mode_of(tmp_path / "cats" / "cyan.jpg") == "CMYK"
    [image] = decoded(tmp_path)
    assert image.mode == "RGB"
    assert close_to(image.getpixel((8, 8)), (0, 255, 255), 8), image.getpixel((8, 8))


def s15_fixed16(value: float) -> bytes:
    """ICC's signed 15.16 fixed-point number."""
    return struct.pack(">i", round(value * 65536))


def grey_press_profile() -> bytes:
    """A minimal ICC v2 CMYK output profile (one lut8 A2B0 tag, CMYK → CIELAB on a 2-point grid) for a press that
    prints every ink as neutral grey: L* = 100 − 25 per C, M or Y ink − 100 for K, a* = b* = 0."""
    clut = b""
    for c in (0, 1):  # the first input channel varies slowest
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    lightness = max(0, 100 - 25 * (c + m + y) - 100 * k)
                    clut += bytes([round(lightness * 255 / 100), 128, 128])  # lut8 Lab: L* · 2.55, a* + 128
    identity = b"".join(s15_fixed16(1.0 if index % 4 == 0 else 0.0) for index in range(9))
    ramp = bytes(range(256))
    lut8 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4 + clut + ramp * 3
    d50 = s15_fixed16(0.9642) + s15_fixed16(1.0) + s15_fixed16(0.8249)
    tags = [(b"A2B0", lut8), (b"wtpt", b"XYZ " + bytes(4) + d50)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (
        struct.pack(">I", offset + len(data))
        + bytes(4)
        + bytes([2, 0x10, 0, 0])
        + b"prtrCMYKLab "
        + bytes(12)
        + b"acsp"
        + bytes(28)
        + d50
        + bytes(48)
    )
    return header + table + data


def test_a_cmyk_jpeg_with_an_embedded_profile_is_converted_through_it(tmp_path, monkeypatch):
    """The same cyan, with a profile that says this press prints cyan as neutral grey L* = 75: the picture is that
    grey, sRGB 185 (Y = (91 / 116)³ = 0.483, 1.055 · Y^(1/2.4) − 0.055 = 0.724), not the (0, 255, 255) a
    profile-blind conversion gives; without LittleCMS the harness falls back to that conversion."""
    saved(
        Image.new("CMYK", (16, 16), (255, 0, 0, 0)),
        tmp_path / "cats" / "cyan.jpg",
        icc_profile=grey_press_profile(),
    )
    [image] = decoded(tmp_path)
    assert close_to(image.getpixel((8, 8)), (185, 185, 185), 4), image.getpixel((8, 8))
    monkeypatch.setattr(images_module, "ImageCms", None)
    [image] = decoded(tmp_path)
    assert close_to(image.getpixel((8, 8)), (0, 255, 255), 8), image.getpixel((8, 8))


def test_a_cmyk_jpeg_with_a_broken_profile_is_named(tmp_path):
    """A CMYK JPEG whose embedded ICC profile is garbage is refused by name instead of shown some other way."""
    saved(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "cats" / "bad.jpg", icc_profile=b"x" * 200)
    message = scan_problems(tmp_path)
    assert f"{tmp_path / 'cats' / 'bad.jpg'}: its embedded CMYK colour profile cannot be used" in message


def test_exif_orientation_6_is_applied(tmp_path):
    """A 40×20 JPEG marked orientation 6 (rotate 90° clockwise to view) with a red 8×8 block at its stored
    top-left corner: a viewer shows it 20 wide and 40 high with the block at the top-right corner."""
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    saved(image, tmp_path / "cats" / "turned.jpg", exif=exif.tobytes(), quality=95)
    [turned] = decoded(tmp_path)
    assert turned.size == (20, 40)
    assert close_to(turned.getpixel((16, 3)), (255, 0, 0), 24), turned.getpixel((16, 3))
    for corner in ((3, 3), (3, 36), (16, 36)):
        assert close_to(turned.getpixel(corner), (0, 0, 0), 24), (corner, turned.getpixel(corner))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width × height and holds no pixel data: decoding it would fail as corrupt."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_a_1_by_100000_png_is_refused_by_its_aspect_before_decoding(tmp_path):
    """A 1 × 100 000 PNG (a few hundred bytes, under the pixel limit) made the image processor allocate its short
    side scaled to the input size: 2.7 GB. It is named with its size, ratio and the limit and the option, and so
    is a header-only one (which decoding would call corrupt, so the check comes first); 16 × 1 passes the default
    limit of 16 and 17 × 1 does not."""
    tall = saved(Image.new("L", (1, 100000), 90), tmp_path / "cats" / "tall.png")
    assert tall.stat().st_size < 1000
    png_header_only(tmp_path / "cats" / "wide.png", 100000, 1)
    saved(Image.new("L", (16, 1), 90), tmp_path / "cats" / "ok.png")
    saved(Image.new("L", (17, 1), 90), tmp_path / "cats" / "over.png")
    assert DEFAULT_MAX_ASPECT == 16
    message = scan_problems(tmp_path)
    assert message.startswith("3 problem(s)"), message
    for name, size in (("tall.png", "1×100000"), ("wide.png", "100000×1")):
        assert (
            f"{tmp_path / 'cats' / name}: {size} has an aspect ratio of 100,000.0, over the limit of 16 "
            in message
        )
    assert f"{tmp_path / 'cats' / 'over.png'}: 17×1 has an aspect ratio of 17.0, over the limit of 16 " in message
    assert "crop it, or raise --can-max-image-aspect" in message
    assert "corrupt" not in message and "ok.png" not in message


def test_a_raised_aspect_limit_lets_a_long_image_through(tmp_path):
    """max_aspect is the option's value: at 100 000 the 1 × 100 000 PNG is decoded, grey 90 throughout."""
    saved(Image.new("L", (1, 100000), 90), tmp_path / "cats" / "tall.png")
    [image] = decoded(tmp_path, max_aspect=100000)
    assert image.size == (1, 100000)
    assert image.getpixel((0, 99999)) == (90, 90, 90)


def test_modes_that_cannot_be_shown_faithfully_are_refused_by_name_in_one_scan(tmp_path):
    """Files named .png that PIL opens by content as TIFFs: CIE L*a*b* (convert("RGB") turns a neutral grey into
    blue), 32-bit integer grey past the 16-bit range, and float grey outside 0.0–1.0 or NaN; each is named, with
    the mode or the range found, in the one error of the scan, before any model runs."""
    cats = tmp_path / "cats"
    saved(Image.new("LAB", (4, 4), (50, 0, 0)), cats / "lab.png", "TIFF")
    saved(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)), cats / "wide_int.png", "TIFF")
    saved(Image.fromarray(np.array([[-0.5, 2.0]], dtype=np.float32)), cats / "float_range.png", "TIFF")
    saved(Image.fromarray(np.array([[np.nan, 0.5]], dtype=np.float32)), cats / "float_nan.png", "TIFF")
    assert [mode_of(cats / name) for name in ("lab.png", "wide_int.png", "float_range.png")] == [
        "LAB",
        "I",
        "F",
    ]
    message = scan_problems(tmp_path)
    assert message.startswith("4 problem(s)"), message
    assert f"{cats / 'lab.png'}: mode LAB is not supported; convert it to 8-bit RGB" in message
    assert f"{cats / 'wide_int.png'}: mode I samples range from 0 to 70,000, outside the 0–65,535 range" in message
    assert f"{cats / 'float_range.png'}: mode F samples range from -0.5 to 2, outside the 0–1 range" in message
    assert f"{cats / 'float_nan.png'}: mode F holds NaN samples; convert it to 8-bit RGB" in message


def test_32_bit_integer_and_float_grey_in_range_are_scaled(tmp_path):
    """ "I" is read as 16-bit grey (32768 → 128, 65535 → 255) and "F" as 0.0–1.0 (0.5 → 127.5, rounded to 128;
    0.25 → 63.75 → 64; 1.0 → 255)."""
    saved(Image.fromarray(np.array([[32768, 65535, 0]], dtype=np.int32)), tmp_path / "cats" / "a.png", "TIFF")
    saved(Image.fromarray(np.array([[0.5, 0.25, 1.0]], dtype=np.float32)), tmp_path / "cats" / "b.png", "TIFF")
    integer, floating = decoded(tmp_path)
    assert [integer.getpixel((x, 0)) for x in range(3)] == [(128,) * 3, (255,) * 3, (0,) * 3]
    assert [floating.getpixel((x, 0)) for x in range(3)] == [(128,) * 3, (64,) * 3, (255,) * 3]


def test_the_pixel_cache_decodes_through_the_same_checks(tmp_path):
    """A file swapped for a L*a*b* one after the scan is refused by name when its pixels are first used, not
    shown as whatever convert("RGB") makes of it."""
    path = saved(Image.new("RGB", (4, 4), (10, 20, 30)), tmp_path / "cats" / "swapped.png")
    image_set = scan_image_root(tmp_path)
    saved(Image.new("LAB", (4, 4), (50, 0, 0)), path, "TIFF")
    with pytest.raises(ImageFolderError, match=re.escape(f"{path}: mode LAB is not supported")):
        image_set.images("cats")
    saved(Image.new("RGB", (4, 4), (10, 20, 30)), path)
    assert image_set.images("cats")[0].getpixel((0, 0)) == (10, 20, 30)
