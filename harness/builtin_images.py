"""A tiny, deterministic image set (one folder per shape category) for the default run and the tests."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

CATEGORIES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SIZES = {"small": 0.25, "large": 0.45}
BUILTIN_WORDS = (*CATEGORIES, *COLOURS, *SIZES, "shape", "background", "grey", "white")
IMAGE_SIZE = 64
VERSION = "1"


def draw_shape(shape: str, colour: str, size: str, rng: random.Random) -> Image.Image:
    """One object on a plain background, at a random position that keeps it inside the frame."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (128, 128, 128))
    radius = SIZES[size] * IMAGE_SIZE / 2
    cx = rng.uniform(radius, IMAGE_SIZE - radius)
    cy = rng.uniform(radius, IMAGE_SIZE - radius)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=COLOURS[colour]
        )
    return image


def write_builtin_images(root: Path, per_category: int = 4, seed: int = 0) -> Path:
    """Write `root/<category>/<nn>.png`; the same seed gives byte-identical files on every machine."""
    rng = random.Random(seed)
    for shape in CATEGORIES:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_category):
            colour = rng.choice(sorted(COLOURS))
            size = rng.choice(sorted(SIZES))
            draw_shape(shape, colour, size, rng).save(folder / f"{index:02d}_{size}_{colour}.png")
    return root
