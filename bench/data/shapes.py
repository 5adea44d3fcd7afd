"""Procedural captioned images: one coloured shape on a grey textured background.

Everything is a deterministic function of a seed, so the corpus and the labelled
splits are the same on every machine. Shapes are drawn with PIL at 4x resolution
and box-downsampled, which gives anti-aliased edges without any extra dependency.
Backgrounds are grey so that the only saturated colour in an image is the shape's:
that keeps the `colors` task well posed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
_SS = 4  # supersampling factor for anti-aliasing

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "crescent",
    "heart",
    "diamond",
    "arrow",
)
COLORS = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.20, 0.85),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.95, 0.95, 0.95),
    "cyan": (0.10, 0.85, 0.90),
}
COLOR_NAMES = tuple(COLORS)
BACKGROUNDS = ("plain", "noisy", "striped", "checkered", "gradient")


def _regular(n: int, r: float = 1.0, phase: float = math.pi / 2) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = math.pi / 2 + math.pi * k / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> list[tuple[float, float]]:
    pts = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, (y + 3) / 17.0))
    return pts


# Each shape is a list of (polygon, fill) layers in unit coordinates (y up);
# fill 0 cuts a hole, which is how the ring and the crescent are made.
_CIRCLE = _regular(48)
_LAYERS: dict[str, list[tuple[list[tuple[float, float]], int]]] = {
    "circle": [(_CIRCLE, 255)],
    "square": [([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)], 255)],
    "triangle": [(_regular(3), 255)],
    "star": [(_star(), 255)],
    "cross": [
        (
            [
                (-0.3, 1),
                (0.3, 1),
                (0.3, 0.3),
                (1, 0.3),
                (1, -0.3),
                (0.3, -0.3),
                (0.3, -1),
                (-0.3, -1),
                (-0.3, -0.3),
                (-1, -0.3),
                (-1, 0.3),
                (-0.3, 0.3),
            ],
            255,
        )
    ],
    "ring": [(_CIRCLE, 255), ([(0.5 * x, 0.5 * y) for x, y in _CIRCLE], 0)],
    "crescent": [(_CIRCLE, 255), ([(0.85 * x + 0.5, 0.85 * y + 0.15) for x, y in _CIRCLE], 0)],
    "heart": [(_heart(), 255)],
    "diamond": [([(0, 1), (0.55, 0), (0, -1), (-0.55, 0)], 255)],
    "arrow": [([(-1, 0.25), (0.2, 0.25), (0.2, 0.65), (1, 0), (0.2, -0.65), (0.2, -0.25), (-1, -0.25)], 255)],
}


@dataclass(frozen=True)
class Sample:
    shape: int
    color: int
    background: int


def shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float, size: int = SIZE) -> np.ndarray:
    """Anti-aliased coverage mask in [0, 1] of one shape, size x size."""
    big = size * _SS
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    ca, sa = math.cos(angle), math.sin(angle)
    for poly, fill in _LAYERS[shape]:
        pts = [((cx + radius * (x * ca - y * sa)) * _SS, (cy - radius * (x * sa + y * ca)) * _SS) for x, y in poly]
        draw.polygon(pts, fill=fill)
    small = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def background(kind: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A grey size x size texture in [0, 1] (geometry scaled from the 32 px design)."""
    scale = size / SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "plain":
        bg = np.full((size, size), rng.uniform(0.08, 0.35), np.float32)
    elif kind == "noisy":
        bg = rng.uniform(0.15, 0.3) + rng.normal(0, 0.07, (size, size)).astype(np.float32)
    elif kind == "striped":
        theta = rng.uniform(0, math.pi)
        freq = rng.uniform(3, 6)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
        bg = 0.22 + 0.12 * np.sign(wave)
    elif kind == "checkered":
        cell = int(rng.integers(3, 7))
        ox, oy = rng.integers(0, cell, 2)
        cell, ox, oy = round(cell * scale), round(ox * scale), round(oy * scale)
        iy, ix = np.mgrid[0:size, 0:size]
        bg = np.where(((ix + ox) // cell + (iy + oy) // cell) % 2 == 0, 0.12, 0.36)
    elif kind == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(theta) + yy * math.sin(theta)
        t = (t - t.min()) / (t.max() - t.min() + 1e-8)
        bg = 0.05 + 0.4 * t
    else:  # pragma: no cover - guarded by BACKGROUNDS
        raise ValueError(f"unknown background {kind!r}; allowed: {', '.join(BACKGROUNDS)}")
    return np.clip(bg, 0.0, 1.0).astype(np.float32)


def render(sample: Sample, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One image, float32 (3, size, size) in [0, 1], with jittered geometry and colour.
    Other sizes scale the 32 px geometry, drawing the same random numbers."""
    scale = size / SIZE
    radius = rng.uniform(8.5, 13.0)
    margin = radius * 0.8
    cx, cy = rng.uniform(margin, SIZE - margin, 2)
    angle = math.radians(rng.uniform(-20, 20))
    alpha = shape_mask(SHAPES[sample.shape], cx * scale, cy * scale, radius * scale, angle, size)
    bg = background(BACKGROUNDS[sample.background], rng, size)
    rgb = np.clip(np.asarray(COLORS[COLOR_NAMES[sample.color]], np.float32) + rng.uniform(-0.05, 0.05, 3), 0, 1)
    img = bg[None] * (1 - alpha[None]) + rgb[:, None, None].astype(np.float32) * alpha[None]
    return np.clip(img, 0.0, 1.0)


def generate(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """n images (uint8, N x 3 x size x size) and their attributes (N x 3: shape, colour, background).

    Attributes are balanced by cycling through a seeded permutation, so every
    (shape, colour) pair appears about equally often even in small sets.
    """
    rng = np.random.default_rng(seed)
    attrs = np.stack(
        [
            rng.permutation(np.arange(n) % len(SHAPES)),
            rng.permutation(np.arange(n) % len(COLORS)),
            rng.integers(0, len(BACKGROUNDS), n),
        ],
        axis=1,
    )
    images = np.empty((n, 3, size, size), np.uint8)
    for i, (s, c, b) in enumerate(attrs):
        img = render(Sample(int(s), int(c), int(b)), rng, size)
        images[i] = np.round(img * 255).astype(np.uint8)
    return images, attrs.astype(np.int64)
