"""Image categories from folders (`root/<category>/*.jpg|png`), validated up front with every bad file named."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from harness.core.errors import ImageFolderError, UnknownNameError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# 4096² pixels: an 8000×8000 image costs a minute and 1.35 GB to decode and is resized to a few hundred pixels
# anyway; a larger limit is an option (--can-max-image-pixels)
DEFAULT_MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class ImageRecord:
    category: str
    path: Path
    sha256: str


@dataclass
class ImageSet:
    """Validated images per category; pixels are decoded once and kept (the sets are small by design)."""

    root: Path
    records: dict[str, list[ImageRecord]]
    _pixels: dict[Path, Image.Image] = field(default_factory=dict, repr=False)

    @property
    def categories(self) -> list[str]:
        return list(self.records)

    def check_category(self, category: str) -> list[ImageRecord]:
        if category not in self.records:
            raise UnknownNameError("image category", category, self.categories)
        return self.records[category]

    def images(self, category: str) -> list[Image.Image]:
        return [self._load(record.path) for record in self.check_category(category)]

    def other_categories(self, category: str) -> list[str]:
        self.check_category(category)
        return [name for name in self.records if name != category]

    def content_hashes(self, category: str) -> list[str]:
        return [record.sha256 for record in self.check_category(category)]

    def _load(self, path: Path) -> Image.Image:
        if path not in self._pixels:
            with _pixel_limit_checked_here(), Image.open(path) as image:
                self._pixels[path] = image.convert("RGB")
        return self._pixels[path]


def scan_image_root(
    root: Path | str,
    categories: list[str] | None = None,
    max_per_category: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageSet:
    """Validate `root` (a folder of category folders, or one category folder) and index its images.

    Raises ImageFolderError naming every empty folder, non-image file, broken link, undecodable image and image
    over `max_pixels` (read from its header, before any pixel is decoded), so a user fixes the data set in one
    pass instead of one file per run.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"image folder {str(root)!r} does not exist or is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    problems: list[str] = [f"{p}: {_broken_link(p)}" for p in sorted(root.iterdir()) if _broken_link(p)]
    if folders:  # a root of category folders: loose files beside them would be silently ignored
        loose = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
        problems += [f"{p}: file outside the category folders (move it into one)" for p in loose]
    else:
        folders = [root]  # a single category folder
    found = {folder.name: folder for folder in folders}
    if categories:
        for name in categories:
            if name not in found:
                raise UnknownNameError("image category", name, sorted(found))
        folders = [found[name] for name in categories]
    records: dict[str, list[ImageRecord]] = {}
    for folder in folders:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        problems += [f"{p}: {_broken_link(p)}" for p in entries if folder != root and _broken_link(p)]
        files = [p for p in entries if p.is_file()]
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        problems += [f"{p}: not an image (expected {', '.join(IMAGE_SUFFIXES)})" for p in files if p not in images]
        if not images:
            problems.append(f"{folder}: no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
            continue
        images = images[:max_per_category] if max_per_category else images
        category_records = []
        for path in images:
            problem = _image_problem(path, max_pixels)
            if problem is not None:
                problems.append(f"{path}: {problem}")
                continue
            category_records.append(ImageRecord(folder.name, path, hashlib.sha256(path.read_bytes()).hexdigest()))
        records[folder.name] = category_records
    if problems:
        raise ImageFolderError(f"{len(problems)} problem(s) in image folder {root}:\n  " + "\n  ".join(problems))
    return ImageSet(root=root, records=records)


@contextmanager
def _pixel_limit_checked_here() -> Iterator[None]:
    """PIL's own decompression-bomb guard off: the harness's pixel limit (an option) replaces it, and names
    the file instead of raising from inside the scan."""
    guard = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = guard


def _broken_link(path: Path) -> str | None:
    """Why a symbolic link leads nowhere (a loop, a missing target); None for anything else."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop (fix or remove the link)"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop (fix or remove the link)"
        return f"broken symbolic link to {os.readlink(path)!r} (fix or remove the link)"
    return None


def _image_problem(path: Path, max_pixels: int) -> str | None:
    """Why the image cannot be used (None when it can): over the pixel limit, judged from the header before
    anything is decoded; or corrupt."""
    try:
        with _pixel_limit_checked_here(), Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                return (
                    f"{width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,} (resize it, "
                    "or raise --can-max-image-pixels)"
                )
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"corrupt image ({error})"
    return None
