"""Image categories from folders (`root/<category>/*.jpg|png`), validated up front with every bad file named.

Every image is decoded by one function, `decode_image`, both when the folder is scanned (so that every problem
is found before any model runs) and when its pixels are first used: it turns whatever PIL opens into the RGB
picture an image viewer shows, or refuses the file by name.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harness.core.errors import ImageFolderError, UnknownNameError

try:
    from PIL import ImageCms
except ImportError:  # a Pillow built without LittleCMS: CMYK images then take PIL's own conversion
    ImageCms = None  # type: ignore[assignment]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# 4096² pixels: an 8000×8000 image costs a minute and 1.35 GB to decode and is resized to a few hundred pixels
# anyway; a larger limit is an option (--can-max-image-pixels)
DEFAULT_MAX_PIXELS = 4096 * 4096
# Long side / short side. CLIP-style image processors (LLaVA-1.5's, LLaVA-1.6's base image, the synthetic
# models') scale the SHORT side to the input size S (48 px synthetic, 336 LLaVA) keeping the aspect ratio, so they
# allocate S² × ratio pixels whatever the file's own size: a 1×100000 PNG of 375 bytes became a 48×4.8M float
# tensor, 2.7 GB. With ratio ≤ 16 and any S up to 1024 that is at most 1024 × 16384 = 4096² pixels, the pixel
# limit above (336 × 5376 = 1.8M pixels for LLaVA), while phone panoramas (about 4–8 : 1) still pass; a larger
# limit is an option (--can-max-image-aspect)
DEFAULT_MAX_ASPECT = 16.0

# Modes PIL's own conversion to RGB (or RGBA, for transparency) renders faithfully: 8-bit samples throughout
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBX", "RGBA", "RGBa", "YCbCr"})
# Modes with an alpha band; "P", "L", "1" and "RGB" may instead carry a transparent colour in info["transparency"]
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
# One wide integer band: PNG's 16-bit greyscale files open as "I;16" in recent Pillow and as "I" in older ones
_WIDE_INTEGER_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_SIXTEEN_BIT_TOP = 65535


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
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT
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
            self._pixels[path] = decode_image(path, self.max_pixels, self.max_aspect)
        return self._pixels[path]


def scan_image_root(
    root: Path | str,
    categories: list[str] | None = None,
    max_per_category: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> ImageSet:
    """Validate `root` (a folder of category folders, or one category folder) and index its images.

    Raises ImageFolderError naming every empty folder, non-image file, broken link, image over `max_pixels` or
    `max_aspect` (read from its header, before any pixel is decoded), and image that is corrupt or cannot be
    decoded faithfully (each is decoded in full, by `decode_image`), so a user fixes the data set in one pass
    instead of one file per run.
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
            try:
                decode_image(path, max_pixels, max_aspect)
            except ImageFolderError as error:
                problems.append(str(error))
                continue
            category_records.append(ImageRecord(folder.name, path, hashlib.sha256(path.read_bytes()).hexdigest()))
        records[folder.name] = category_records
    if problems:
        raise ImageFolderError(f"{len(problems)} problem(s) in image folder {root}:\n  " + "\n  ".join(problems))
    return ImageSet(root=root, records=records, max_pixels=max_pixels, max_aspect=max_aspect)


def decode_image(
    path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect: float = DEFAULT_MAX_ASPECT
) -> Image.Image:
    """The 8-bit RGB picture an image viewer shows for the file at `path`; ImageFolderError("<path>: <why>")
    when it is over a limit, corrupt, or cannot be shown faithfully.

    - Limits first, from the header, before any pixel is decoded: `max_pixels` and `max_aspect` (long side over
      short side). Both are symmetric in width and height, so they hold for the EXIF-oriented picture too; the
      orientation is not read for them because reading a PNG's EXIF can decode the whole image.
    - EXIF orientation is applied (ImageOps.exif_transpose), as viewers do.
    - 16-bit greyscale ("I;16", "I;16B", "I;16L", "I;16N") and "I": the 0–65535 range is scaled to 0–255,
      value / 257 rounded (so 32768 is 128 and 65535 is 255); "I" is read in that range because it is how older
      Pillow opens PNG's 16-bit files, and values outside it are refused with the range found.
    - "F" (32-bit float, from TIFF or PFM files named .png/.jpg): read in the 0.0–1.0 range image editors show
      float images in, × 255 rounded; NaN or values outside it are refused with the range found.
    - Transparency (an alpha band, or a palette, grey or RGB image's transparent colour): composited over white.
    - CMYK (JPEG): with an embedded ICC profile, converted to sRGB through it by LittleCMS (PIL.ImageCms), as
      colour-managed viewers do; without a profile, or with a Pillow built without LittleCMS, by PIL's own
      conversion (R = (255 − C) × (255 − K) / 255, and so on).
    - 1, L, P, RGB, RGBX, YCbCr: PIL's conversion, exact for 8-bit samples.
    - Any other mode (LAB, HSV, …): refused, "mode X is not supported; convert it to 8-bit RGB".
    """
    try:
        with _pixel_limit_checked_here(), Image.open(path) as image:
            _check_header(image, max_pixels, max_aspect)
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except _Refused as refusal:
        raise ImageFolderError(f"{path}: {refusal}") from refusal
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageFolderError(f"{path}: corrupt image ({error})") from error


class _Refused(Exception):
    """Why an image that PIL can read is not used; `decode_image` adds the file's path."""


def _check_header(image: Image.Image, max_pixels: int, max_aspect: float) -> None:
    """Refuse an image over the pixel or aspect limit, judged from the size in its header."""
    width, height = image.size
    if width * height > max_pixels:
        raise _Refused(
            f"{width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,} (resize it, or raise "
            "--can-max-image-pixels)"
        )
    long_side, short_side = max(width, height), min(width, height)  # PIL opens no image with a side of 0
    if long_side > max_aspect * short_side:
        raise _Refused(
            f"{width}×{height} has an aspect ratio of {long_side / short_side:,.1f}, over the limit of "
            f"{max_aspect:g} (a model's image processor scales the short side up to its input size, so it would "
            f"allocate {long_side / short_side:,.0f} times the pixels of a square image; crop it, or raise "
            "--can-max-image-aspect)"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """The decoded, oriented image in 8-bit RGB, by the rules `decode_image` lists."""
    if image.mode in _WIDE_INTEGER_GREY_MODES or image.mode == "F":
        return _wide_grey_to_rgb(image)
    if image.mode == "CMYK":
        return _cmyk_to_rgb(image)
    if image.mode not in _EIGHT_BIT_MODES:
        raise _Refused(f"mode {image.mode} is not supported; convert it to 8-bit RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _over_white(image)
    return image.convert("RGB")


def _over_white(image: Image.Image) -> Image.Image:
    """Composite an image with transparency over white.

    Dropping the alpha band (PIL's convert("RGB")) shows whatever colour the encoder left under transparent
    pixels, often black or leftover paint nobody ever saw; a viewer or web page shows its white background
    through them, and that is the picture a person chose for the category.
    """
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit or "I" greyscale (0–65535, value / 257 rounded) or "F" (0.0–1.0, × 255 rounded) to 8-bit RGB;
    samples outside the range are refused, and a 16-bit transparent grey value is composited over white."""
    if image.mode == "F":
        samples = np.asarray(image)
        if np.isnan(samples).any():
            raise _Refused("mode F holds NaN samples; convert it to 8-bit RGB")
        _check_sample_range(image.mode, samples, 1.0)
        grey = np.floor(samples.astype(np.float64) * 255 + 0.5)
    else:
        samples = np.asarray(image if image.mode == "I" else image.convert("I"), dtype=np.int32)
        _check_sample_range(image.mode, samples, _SIXTEEN_BIT_TOP)
        grey = (samples + 128) // 257  # value / 257 rounded: it is never halfway, as 257 is odd
    luminance = Image.fromarray(grey.astype(np.uint8))  # a 2-D uint8 array is mode L
    transparent = image.info.get("transparency")
    if transparent is None:
        return luminance.convert("RGB")
    alpha = Image.fromarray(np.where(samples == transparent, 0, 255).astype(np.uint8))
    return _over_white(Image.merge("LA", (luminance, alpha)))


def _check_sample_range(mode: str, samples: np.ndarray, top: float) -> None:
    """Refuse samples outside 0–`top`, the range `mode` is read in, naming the range found."""
    low, high = samples.min(), samples.max()
    if low < 0 or high > top:
        raise _Refused(
            f"mode {mode} samples range from {low:,g} to {high:,g}, outside the 0–{top:,g} range this mode is "
            "read in; convert it to 8-bit RGB"
        )


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK to sRGB through the embedded ICC profile when there is one, else by PIL's own conversion."""
    profile = image.info.get("icc_profile")
    if not profile or ImageCms is None:
        return image.convert("RGB")
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        transform = ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), "CMYK", "RGB")
    except (OSError, ImageCms.PyCMSError) as error:  # LittleCMS raises OSError for bytes that are no profile
        raise _Refused(
            f"its embedded CMYK colour profile cannot be used ({error}); convert it to 8-bit RGB"
        ) from error
    return transform.apply(image)


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
