"""A synthetic captioning world: seeded scenes of one object, rendered with PIL and described by a fixed grammar.

The trained default models learn this world, so that a collapse on them means something: their unmasked
captions can be checked word by word. A scene has five attributes; its shape is the **category** (the paper's
"object category"). Every attribute combination occurs in every split; the splits differ in their renderings
(position, size and colour jitter), drawn from disjoint random streams, so held-out images are unseen pixels.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

CATEGORIES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (215, 45, 45), "green": (45, 170, 70), "blue": (50, 90, 225), "yellow": (225, 205, 40)}
SIZES = {"small": 0.32, "large": 0.5}  # object width as a fraction of the image side
POSITIONS = {"left": 1 / 6, "centre": 3 / 6, "right": 5 / 6}  # horizontal centre of the object's third
BACKGROUNDS = {"light": (205, 205, 205), "dark": (55, 55, 55)}
ATTRIBUTES = ("size", "colour", "shape", "position", "background")
WORLD_WORDS = (*CATEGORIES, *COLOURS, *SIZES, *POSITIONS, *BACKGROUNDS, "background", "at", "the", "on", "a")
IMAGE_SIZE = 64
VERSION = "2"
SPLIT_STREAMS = {"train": 0, "heldout": 1}  # a split's renderings come from its own random stream

_CAPTION = re.compile(
    rf"^a (?P<size>{'|'.join(SIZES)}) (?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(CATEGORIES)}) "
    rf"at the (?P<position>{'|'.join(POSITIONS)}) on a (?P<background>{'|'.join(BACKGROUNDS)}) background$"
)


@dataclass(frozen=True)
class Scene:
    """What an image shows; its caption is a function of it (one caption per scene, no paraphrases)."""

    shape: str
    colour: str
    size: str
    position: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} at the {self.position} on a {self.background} background"


def all_scenes(categories: tuple[str, ...] = CATEGORIES) -> list[Scene]:
    """Every attribute combination, in a fixed order (192 for the four shapes)."""
    combos = itertools.product(categories, COLOURS, SIZES, POSITIONS, BACKGROUNDS)
    return [Scene(*combo) for combo in combos]


def parse_caption(text: str) -> dict[str, str] | None:
    """The attributes a caption states, or None when it does not follow the grammar."""
    match = _CAPTION.match(" ".join(text.replace(".", " ").split()))
    return match.groupdict() if match else None


def attribute_hits(scene: Scene, text: str) -> dict[str, bool]:
    """Per attribute: does the caption state it correctly? (All False for a caption outside the grammar.)"""
    stated = parse_caption(text) or {}
    truth = asdict(scene)
    return {name: stated.get(name) == truth[name] for name in ATTRIBUTES}


def attribute_accuracy(scene: Scene, text: str) -> float:
    """Fraction of the scene's five attributes that the caption states correctly (0 for an unparsable one)."""
    return sum(attribute_hits(scene, text).values()) / len(ATTRIBUTES)


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """Draw the scene with jittered position, size and colour; the attributes stay unambiguous."""
    background = tuple(channel + rng.randint(-12, 12) for channel in BACKGROUNDS[scene.background])
    colour = tuple(min(255, max(0, channel + rng.randint(-20, 20))) for channel in COLOURS[scene.colour])
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    half = SIZES[scene.size] * IMAGE_SIZE / 2 * rng.uniform(0.9, 1.1)
    third = IMAGE_SIZE / 3
    cx = POSITIONS[scene.position] * IMAGE_SIZE + rng.uniform(-1, 1) * max(0.0, third / 2 - half)
    cx = min(max(cx, half), IMAGE_SIZE - half)  # large objects at the sides touch the frame, never leave it
    cy = rng.uniform(half, IMAGE_SIZE - half)
    draw = ImageDraw.Draw(image)
    if scene.shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=colour)
    elif scene.shape == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=colour)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    else:  # cross: two bars of a third of the object's width
        bar = half / 3
        draw.rectangle((cx - half, cy - bar, cx + half, cy + bar), fill=colour)
        draw.rectangle((cx - bar, cy - half, cx + bar, cy + half), fill=colour)
    return image


def sample(split: str, count: int, *, seed: int = 0, categories: tuple[str, ...] = CATEGORIES):
    """`count` (scene, image) pairs cycling through every scene of `categories` in a shuffled order."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_STREAMS)}")
    rng = random.Random(f"{seed}:{SPLIT_STREAMS[split]}:{','.join(categories)}")
    scenes = all_scenes(categories)
    pairs = []
    while len(pairs) < count:
        order = rng.sample(scenes, len(scenes))
        pairs.extend((scene, render(scene, rng)) for scene in order[: count - len(pairs)])
    return pairs


_FILE_NAME = re.compile(
    rf"^\d+_(?P<size>{'|'.join(SIZES)})_(?P<colour>{'|'.join(COLOURS)})_(?P<position>{'|'.join(POSITIONS)})_"
    rf"(?P<background>{'|'.join(BACKGROUNDS)})\.png$"
)


def scene_of_file(path: Path) -> Scene | None:
    """The scene a rendering written by `write_category_folders` shows, read from its folder (the shape) and its
    name (the other attributes); None for any other file."""
    match = _FILE_NAME.match(Path(path).name)
    shape = Path(path).parent.name
    if match is None or shape not in CATEGORIES:
        return None
    return Scene(shape=shape, **match.groupdict())


def write_category_folders(root: Path, per_category: int = 8, seed: int = 0, split: str = "heldout") -> Path:
    """Write `root/<shape>/<nn>_<attributes>.png` from `split`; the same seed gives byte-identical files."""
    for shape in CATEGORIES:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for index, (scene, image) in enumerate(sample(split, per_category, seed=seed, categories=(shape,))):
            name = f"{index:02d}_{scene.size}_{scene.colour}_{scene.position}_{scene.background}.png"
            image.save(folder / name)
    return root
