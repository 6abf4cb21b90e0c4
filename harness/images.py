"""Image categories from folders (`root/<category>/*.jpg|png`), validated up front with every bad file named."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from harness.errors import ImageFolderError, UnknownNameError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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
            with Image.open(path) as image:
                self._pixels[path] = image.convert("RGB")
        return self._pixels[path]


def scan_image_root(
    root: Path | str, categories: list[str] | None = None, max_per_category: int | None = None
) -> ImageSet:
    """Validate `root` (a folder of category folders, or one category folder) and index its images.

    Raises ImageFolderError naming every empty folder, non-image file and undecodable image, so a user fixes
    the data set in one pass instead of one file per run.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"image folder {str(root)!r} does not exist or is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    problems: list[str] = []
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
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        problems += [f"{p}: not an image (expected {', '.join(IMAGE_SUFFIXES)})" for p in files if p not in images]
        if not images:
            problems.append(f"{folder}: no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
            continue
        images = images[:max_per_category] if max_per_category else images
        category_records = []
        for path in images:
            try:
                with Image.open(path) as image:
                    image.load()
            except (UnidentifiedImageError, OSError, SyntaxError) as error:
                problems.append(f"{path}: corrupt image ({error})")
                continue
            category_records.append(ImageRecord(folder.name, path, hashlib.sha256(path.read_bytes()).hexdigest()))
        records[folder.name] = category_records
    if problems:
        raise ImageFolderError(f"{len(problems)} problem(s) in image folder {root}:\n  " + "\n  ".join(problems))
    return ImageSet(root=root, records=records)
