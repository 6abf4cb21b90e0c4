"""Image folders: the synthetic world's renderings are reproducible, scanning is ordered and hashed, and every
bad file is reported in one error."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from harness.core.errors import ImageFolderError, UnknownNameError
from harness.data.images import scan_image_root
from harness.data.world import write_category_folders


def write_png(path: Path, colour=(200, 30, 30), mode: str = "RGB", size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_world_images_are_byte_identical_for_a_seed(tmp_path):
    """The same seed writes byte-identical files; another seed writes different ones."""
    first = folder_bytes(write_category_folders(tmp_path / "a", per_category=3, seed=7))
    again = folder_bytes(write_category_folders(tmp_path / "b", per_category=3, seed=7))
    other = folder_bytes(write_category_folders(tmp_path / "c", per_category=3, seed=8))
    assert len(first) == 12
    assert {Path(name).parent.name for name in first} == {"circle", "square", "triangle", "cross"}
    assert first == again
    assert first != other


def test_categories_are_sorted_folder_names(tmp_path):
    """Categories are the subfolder names in sorted order, hidden folders excluded."""
    for name in ("zebra", "apple", "mango", ".cache"):
        write_png(tmp_path / name / "0.png")
    assert scan_image_root(tmp_path).categories == ["apple", "mango", "zebra"]


def test_selected_categories_keep_the_requested_order(tmp_path):
    """Asking for some categories returns exactly those, in the order asked for."""
    for name in ("zebra", "apple", "mango"):
        write_png(tmp_path / name / "0.png")
    assert scan_image_root(tmp_path, ["zebra", "apple"]).categories == ["zebra", "apple"]


def test_records_are_sorted_and_hashed(tmp_path):
    """Records come in file-name order with the SHA-256 of each file's bytes."""
    write_png(tmp_path / "cats" / "b.png", (0, 0, 255))
    write_png(tmp_path / "cats" / "a.png", (255, 0, 0))
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "cats" / "c.JPG", "JPEG")
    records = scan_image_root(tmp_path).records["cats"]
    assert [r.path.name for r in records] == ["a.png", "b.png", "c.JPG"]
    assert all(r.category == "cats" for r in records)
    assert [r.sha256 for r in records] == [hashlib.sha256(r.path.read_bytes()).hexdigest() for r in records]
    assert len({r.sha256 for r in records}) == 3


def test_max_per_category_keeps_the_first_files(tmp_path):
    """max_per_category takes the first N files of each category in name order."""
    for index in range(4):
        write_png(tmp_path / "dogs" / f"{index}.png", (index * 60, 0, 0))
        write_png(tmp_path / "cats" / f"{index}.png", (0, index * 60, 0))
    image_set = scan_image_root(tmp_path, max_per_category=2)
    assert {c: [r.path.name for r in rs] for c, rs in image_set.records.items()} == {
        "cats": ["0.png", "1.png"],
        "dogs": ["0.png", "1.png"],
    }


def test_single_category_folder(tmp_path):
    """A folder holding images directly is one category named after the folder."""
    root = tmp_path / "birds"
    write_png(root / "1.png")
    write_png(root / "2.png")
    image_set = scan_image_root(root)
    assert image_set.categories == ["birds"]
    assert [r.path.name for r in image_set.records["birds"]] == ["1.png", "2.png"]


def test_hidden_files_are_ignored(tmp_path):
    """Dot files such as .DS_Store are neither images nor problems."""
    write_png(tmp_path / "cats" / "0.png")
    (tmp_path / "cats" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert [r.path.name for r in scan_image_root(tmp_path).records["cats"]] == ["0.png"]


def test_missing_root_is_an_image_folder_error(tmp_path):
    """A root that does not exist raises ImageFolderError naming it."""
    with pytest.raises(ImageFolderError, match="no-such-folder"):
        scan_image_root(tmp_path / "no-such-folder")


def test_every_problem_is_listed_in_one_error(tmp_path):
    """Empty folders, corrupt and truncated images and non-image files are all named in a single error."""
    rng = random.Random(0)
    write_png(tmp_path / "cats" / "good.png")
    (tmp_path / "cats" / "corrupt.png").write_bytes(rng.randbytes(512))
    noise = Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG")
    (tmp_path / "cats" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "cats" / ".DS_Store").write_bytes(rng.randbytes(64))
    write_png(tmp_path / "dogs" / "good.png")
    (tmp_path / "dogs" / "notes.txt").write_text("taken at the park\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError) as error:
        scan_image_root(tmp_path)
    message = str(error.value)
    assert message.startswith("4 problem(s)"), message
    assert f"{tmp_path / 'cats' / 'corrupt.png'}: corrupt image" in message
    assert f"{tmp_path / 'cats' / 'truncated.jpg'}: corrupt image" in message
    assert f"{tmp_path / 'dogs' / 'notes.txt'}: not an image" in message
    assert f"{tmp_path / 'empty'}: no images" in message
    assert "good.png" not in message
    assert ".DS_Store" not in message


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width × height and holds no pixel data: opening it reads the size only."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (  # noqa: E731
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_images_over_the_pixel_limit_are_named_before_decoding_and_the_scan_goes_on(tmp_path):
    """A 20000×20000 image (PIL would refuse it as a decompression bomb, without naming it, and stop the scan)
    and an image over a configured limit are each named with their size and the option; the scan reports every
    other problem too."""
    write_png(tmp_path / "cats" / "good.png", size=(8, 8))
    png_header_only(tmp_path / "cats" / "huge.png", 20000, 20000)
    write_png(tmp_path / "dogs" / "wide.png", size=(64, 8))
    (tmp_path / "dogs" / "corrupt.png").write_bytes(b"not a png")
    with pytest.raises(ImageFolderError) as error:
        scan_image_root(tmp_path, max_pixels=256)
    message = str(error.value)
    assert message.startswith("3 problem(s)"), message
    huge = f"{tmp_path / 'cats' / 'huge.png'}: 20000×20000 = 400,000,000 pixels, over the limit of 256"
    assert huge in message and "--can-max-image-pixels" in message
    assert f"{tmp_path / 'dogs' / 'wide.png'}: 64×8 = 512 pixels, over the limit of 256" in message
    assert f"{tmp_path / 'dogs' / 'corrupt.png'}: corrupt image" in message


def test_symlink_loops_and_broken_links_are_named(tmp_path):
    write_png(tmp_path / "cats" / "good.png")
    (tmp_path / "cats" / "a.png").symlink_to(tmp_path / "cats" / "b.png")
    (tmp_path / "cats" / "b.png").symlink_to(tmp_path / "cats" / "a.png")
    (tmp_path / "cats" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ImageFolderError) as error:
        scan_image_root(tmp_path)
    message = str(error.value)
    assert message.startswith("4 problem(s)"), message
    for name in ("cats/a.png", "cats/b.png", "loop"):
        assert f"{tmp_path / name}: symbolic link loop" in message
    assert f"{tmp_path / 'cats' / 'gone.png'}: broken symbolic link" in message


def test_unknown_category_lists_valid_ones(tmp_path):
    """Asking for a category that has no folder raises UnknownNameError listing the folders."""
    for name in ("cats", "dogs"):
        write_png(tmp_path / name / "0.png")
    with pytest.raises(UnknownNameError) as error:
        scan_image_root(tmp_path, ["cats", "horses"])
    assert error.value.name == "horses"
    assert error.value.valid == ["cats", "dogs"]
    assert "'horses'" in str(error.value) and "cats, dogs" in str(error.value)


def test_images_are_decoded_to_rgb(tmp_path):
    """RGBA and greyscale files come back as RGB images of the same size; greyscale keeps its grey, and a
    half-transparent colour is shown over white: c · 128/255 + 255 · 127/255, so (10, 20, 30) → (132, 137, 142)."""
    write_png(tmp_path / "mixed" / "a_rgba.png", (10, 20, 30, 128), mode="RGBA", size=(5, 7))
    write_png(tmp_path / "mixed" / "b_grey.png", 77, mode="L", size=(6, 4))
    rgba, grey = scan_image_root(tmp_path).images("mixed")
    assert (rgba.mode, rgba.size, rgba.getpixel((0, 0))) == ("RGB", (5, 7), (132, 137, 142))
    assert (grey.mode, grey.size, grey.getpixel((0, 0))) == ("RGB", (6, 4), (77, 77, 77))


def test_other_categories_exclude_the_category(tmp_path):
    """other_categories lists every category but the one asked about, and rejects unknown ones."""
    for name in ("a", "b", "c"):
        write_png(tmp_path / name / "0.png")
    image_set = scan_image_root(tmp_path)
    assert image_set.other_categories("b") == ["a", "c"]
    with pytest.raises(UnknownNameError):
        image_set.other_categories("d")


def test_loose_files_beside_category_folders_are_named(tmp_path):
    """A root of category folders with files lying at its top level (which would be silently ignored) raises
    ImageFolderError naming each loose file, even when only another category is selected; dot files are fine."""
    write_png(tmp_path / "cats" / "0.png")
    write_png(tmp_path / "dogs" / "0.png")
    write_png(tmp_path / "stray.png")
    (tmp_path / "README.txt").write_text("cats and dogs\n")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    for categories in (None, ["cats"]):
        with pytest.raises(ImageFolderError) as error:
            scan_image_root(tmp_path, categories)
        message = str(error.value)
        assert message.startswith("2 problem(s)"), message
        assert f"{tmp_path / 'README.txt'}: file outside the category folders" in message
        assert f"{tmp_path / 'stray.png'}: file outside the category folders" in message
        assert ".DS_Store" not in message
    (tmp_path / "README.txt").unlink()
    (tmp_path / "stray.png").unlink()
    assert scan_image_root(tmp_path).categories == ["cats", "dogs"]
