"""A small image dataset that epcache makes itself, so the demo needs no download.

The class is decided by a small object (its shape and colour) placed at a random position on a cluttered
background of random coloured blobs. The object covers a few patches only, so pooling every
patch equally (GAP) dilutes it while a probe that can attend (EP) can find it: the setting in
which the paper's attentive probes pay off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "ShapesConfig", "make_shapes_dataset"]

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
COLOURS = ((230, 40, 40), (40, 200, 60), (50, 90, 240), (240, 220, 30), (230, 60, 230), (40, 220, 230))


@dataclass(frozen=True)
class ShapesConfig:
    """Size of the generated dataset."""

    num_classes: int = 4  # first `num_classes` of SHAPES
    train_per_class: int = 80
    val_per_class: int = 30
    size: int = 64  # square images, pixels
    object_size: int = 14  # object bounding box, pixels
    clutter: int = 10  # background blobs per image
    seed: int = 0


def make_shapes_dataset(root: str | Path, config: ShapesConfig = ShapesConfig(), *, masks: bool = False) -> Path:
    """Write ``root/{train,val}/<shape>/<i>.png`` (an ImageFolder) and return ``root``.

    With ``masks`` the same images go to the segmentation layout `epcache extract --masks` reads:
    ``root/<split>/images/<shape>_<i>.png`` beside ``root/<split>/masks/<shape>_<i>.png``, whose pixels
    are 0 (background) or 1 + the shape's index where the object was drawn, and ``root/classes.txt``.
    """
    root = Path(root)
    if not 1 <= config.num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)}")
    rng = np.random.default_rng(config.seed)
    for split, per_class in (("train", config.train_per_class), ("val", config.val_per_class)):
        for c in range(config.num_classes):
            d = root / split / SHAPES[c]
            if not masks:
                d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img, mask = _draw(rng, c, config)
                if masks:
                    for kind, picture in (("images", img), ("masks", mask)):
                        (root / split / kind).mkdir(parents=True, exist_ok=True)
                        picture.save(root / split / kind / f"{SHAPES[c]}_{i:04d}.png")
                else:
                    img.save(d / f"{i:04d}.png")
    if masks:
        (root / "classes.txt").write_text("\n".join(("background", *SHAPES[: config.num_classes])) + "\n")
    return root


def _draw(rng: np.random.Generator, c: int, cfg: ShapesConfig) -> tuple[Image.Image, Image.Image]:
    """The image and its mask: the object is drawn twice with the same geometry, so they cover the same pixels."""
    s = cfg.size
    base = rng.integers(40, 110, size=3)
    img = Image.new("RGB", (s, s), tuple(int(v) for v in base))
    draw = ImageDraw.Draw(img)
    for _ in range(cfg.clutter):  # clutter: soft blobs of random colour, size and place
        r = int(rng.integers(3, s // 5))
        x, y = (int(v) for v in rng.integers(0, s, size=2))
        col = tuple(int(v) for v in rng.integers(60, 200, size=3))  # muted: the object stays the salient part
        draw.ellipse([x - r, y - r, x + r, y + r], fill=col)
    o = cfg.object_size
    x0, y0 = (int(v) for v in rng.integers(2, s - o - 2, size=2))
    col = tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in COLOURS[c])  # class colour, jittered
    _object(draw, SHAPES[c], (x0, y0, x0 + o, y0 + o), col, (0, 0, 0))
    mask = Image.new("L", (s, s), 0)
    _object(ImageDraw.Draw(mask), SHAPES[c], (x0, y0, x0 + o, y0 + o), 1 + c, 1 + c)
    return img, mask


def _object(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], col: Any, outline: Any) -> None:
    x0, y0, x1, y1 = box
    o = x1 - x0
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=col, outline=outline, width=2)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=col, outline=outline, width=2)
    elif shape == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=col, outline=outline)
    elif shape == "cross":
        w = o // 3
        draw.rectangle([x0, y0 + w, x1, y1 - w], fill=col)
        draw.rectangle([x0 + w, y0, x1 - w, y1], fill=col)
    elif shape == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=col, width=4)
    else:  # bar
        draw.rectangle([x0, y0 + o // 3, x1, y1 - o // 3], fill=col, outline=outline, width=1)
