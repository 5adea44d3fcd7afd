"""Procedural cluttered scenes: the attacked task of the micro suite.

`shapes` (one flat shape on a grey texture) is saturated: every model reaches 99% and
no backdoor needs to be subtle. A scene here has the statistics that make backdoor
attacks behave as they do on natural images:

- a coloured, textured background: 1/f ("pink") noise with a random spectral slope,
  so there is energy at every spatial frequency (what a sub-pixel warp acts on);
- clutter: smaller distractor shapes of any class and thin sticks;
- the main object (its shape is the label): any hue, shaded, rotated, scaled;
- occlusion of part of the main object by a textured occluder;
- lighting: gain, offset, gamma and a colour cast; optical blur and sensor noise.

Everything is a deterministic function of the seed (one numpy Generator consumed in a
fixed order), so every machine builds the same images. The label is the shape of the
largest object, which is the only one drawn at the main object's scale.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np

from bench.data.shapes import SHAPES, shape_mask

SIZE = 32
# Bumped whenever the generator's code changes what it draws: it enters every cache
# key and the tiny CLIP's pre-training identity, so no stale images are ever reused.
VERSION = 3
# The 8 hue names of the main object's colour, for captions (the hue is continuous).
HUE_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")


@dataclass(frozen=True)
class SceneStyle:
    """Difficulty knobs. The defaults were chosen so that the clean reference is
    neither saturated nor hopeless for tiny-clip and the supervised classifier (CA in
    the 80-95% band the micro suite needs); see docs/world.md."""

    main_radius: tuple[float, float] = (9.0, 12.5)
    max_rotation_deg: float = 35.0
    distractors: tuple[int, int] = (0, 2)  # inclusive range of distractor shapes
    distractor_radius: tuple[float, float] = (2.0, 3.5)
    sticks: tuple[int, int] = (0, 1)
    occlusion_prob: float = 0.25
    occlusion_area: tuple[float, float] = (0.1, 0.25)  # share of the main object's box
    blur_prob: float = 0.25
    blur_sigma: tuple[float, float] = (0.3, 0.8)
    noise_sigma: tuple[float, float] = (0.0, 0.04)
    texture_contrast: tuple[float, float] = (0.08, 0.28)
    gain: tuple[float, float] = (0.75, 1.15)


DEFAULT_STYLE = SceneStyle()


@functools.lru_cache(maxsize=8)
def _freqs(size: int) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    return f


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx) pixel-centre coordinates of a size x size image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def pink_noise(rng: np.random.Generator, size: int, betas: np.ndarray) -> np.ndarray:
    """len(betas) noise images (k, size, size) whose power falls as 1/f^beta, each
    scaled to [0, 1]. One stacked FFT: this is the generator's hot spot."""
    white = rng.normal(size=(len(betas), size, size))
    spec = np.fft.rfft2(white) / _freqs(size)[None] ** (np.asarray(betas)[:, None, None] / 2)
    spec[:, 0, 0] = 0.0
    out = np.fft.irfft2(spec, s=(size, size))
    lo = out.min(axis=(1, 2), keepdims=True)
    hi = out.max(axis=(1, 2), keepdims=True)
    return ((out - lo) / (hi - lo + 1e-8)).astype(np.float32)


def random_rgb(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> tuple[np.ndarray, float]:
    """A colour of uniform hue; returns (rgb in [0, 1], hue in [0, 1))."""
    h = float(rng.random())
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b], np.float32), h


def texture(rng: np.random.Generator, size: int, style: SceneStyle) -> np.ndarray:
    """(3, size, size) coloured texture: a base colour modulated by pink noise in
    luminance plus weaker, independent pink noise in each channel."""
    base, _ = random_rgb(rng, (0.0, 0.6), (0.25, 0.75))
    contrast = rng.uniform(*style.texture_contrast)
    noise = pink_noise(rng, size, rng.uniform(1.0, 2.2, 4)) - 0.5  # luminance, then R, G, B
    img = base[:, None, None] + contrast * noise[0][None] + 0.35 * contrast * noise[1:]
    return img.astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (3, H, W) with reflected borders."""
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).astype(np.float32)
    pad = np.pad(img, ((0, 0), (r, r), (r, r)), mode="reflect")
    h, w = img.shape[1:]
    tmp = sum(k[i] * pad[:, :, i : i + w] for i in range(2 * r + 1))
    return sum(k[i] * tmp[:, i : i + h, :] for i in range(2 * r + 1)).astype(np.float32)


def _paste(img: np.ndarray, alpha: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Alpha-composite `fill` (3, H, W) over img where alpha (H, W) says."""
    return img * (1 - alpha[None]) + fill * alpha[None]


def _object_fill(rng: np.random.Generator, rgb: np.ndarray, size: int) -> np.ndarray:
    """An object's surface: its colour under a linear shading ramp, with fine grain."""
    yy, xx = _grid(size)
    yy, xx = yy / size - 0.5, xx / size - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    ramp = 1.0 + rng.uniform(0.1, 0.45) * (xx * math.cos(theta) + yy * math.sin(theta)) * 2
    grain = 1.0 + 0.08 * rng.normal(size=(size, size)).astype(np.float32)
    return rgb[:, None, None] * (ramp * grain)[None]


def render_scene(label: int, rng: np.random.Generator, style: SceneStyle = DEFAULT_STYLE, size: int = SIZE):
    """One scene, float32 (3, size, size) in [0, 1], and (hue bin, n_distractors, occluded)."""
    img = texture(rng, size, style)
    # clutter first, so the main object is never hidden by a distractor
    n_dist = int(rng.integers(style.distractors[0], style.distractors[1] + 1))
    for _ in range(n_dist):
        r = rng.uniform(*style.distractor_radius)
        cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
        m = shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], cx, cy, r, math.radians(rng.uniform(-180, 180)), size)
        rgb, _ = random_rgb(rng, (0.2, 1.0), (0.3, 1.0))
        img = _paste(img, m, _object_fill(rng, rgb, size))
    for _ in range(int(rng.integers(style.sticks[0], style.sticks[1] + 1))):
        m = _stick(rng, size)
        rgb, _ = random_rgb(rng, (0.0, 1.0), (0.2, 1.0))
        img = _paste(img, m, np.broadcast_to(rgb[:, None, None], img.shape))
    radius = rng.uniform(*style.main_radius)
    margin = radius * 0.75
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = math.radians(rng.uniform(-style.max_rotation_deg, style.max_rotation_deg))
    mask = shape_mask(SHAPES[label], cx, cy, radius, angle, size)
    rgb, hue = random_rgb(rng, (0.35, 1.0), (0.45, 1.0))
    img = _paste(img, mask, _object_fill(rng, rgb, size))
    occluded = bool(rng.random() < style.occlusion_prob)
    if occluded:
        img = _paste(img, _occluder(rng, cx, cy, radius, style, size), texture(rng, size, style))
    # lighting: gain, offset, gamma, colour cast
    img = np.clip(img, 0, 1) * rng.uniform(*style.gain) + rng.uniform(-0.08, 0.08)
    img = np.clip(img, 0, 1) ** rng.uniform(0.75, 1.35)
    img = img * rng.uniform(0.88, 1.12, 3).astype(np.float32)[:, None, None]
    if rng.random() < style.blur_prob:
        img = _blur(img, rng.uniform(*style.blur_sigma))
    img = img + rng.uniform(*style.noise_sigma) * rng.normal(size=img.shape).astype(np.float32)
    hue_bin = int(hue * len(HUE_NAMES)) % len(HUE_NAMES)
    return np.clip(img, 0, 1).astype(np.float32), (hue_bin, n_dist, int(occluded))


def _stick(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin anti-aliased bar across part of the image."""
    yy, xx = _grid(size)
    x0, y0 = rng.uniform(0, size, 2)
    theta = rng.uniform(0, math.pi)
    length, width = rng.uniform(6, 18), rng.uniform(0.8, 1.8)
    u = (xx - x0) * math.cos(theta) + (yy - y0) * math.sin(theta)
    v = -(xx - x0) * math.sin(theta) + (yy - y0) * math.cos(theta)
    return (np.clip(width / 2 + 0.5 - np.abs(v), 0, 1) * (np.abs(u) <= length / 2)).astype(np.float32)


def _occluder(rng, cx: float, cy: float, radius: float, style: SceneStyle, size: int) -> np.ndarray:
    """A rectangle covering a share of the main object's bounding box, entering from one side."""
    area = rng.uniform(*style.occlusion_area) * (2 * radius) ** 2
    side = int(rng.integers(4))
    depth = area / (2 * radius)  # how far it reaches into the box
    yy, xx = _grid(size)
    lo_x, hi_x, lo_y, hi_y = cx - radius, cx + radius, cy - radius, cy + radius
    if side == 0:  # from the left
        m = (xx < lo_x + depth) & (yy > lo_y - 2) & (yy < hi_y + 2)
    elif side == 1:  # right
        m = (xx > hi_x - depth) & (yy > lo_y - 2) & (yy < hi_y + 2)
    elif side == 2:  # top
        m = (yy < lo_y + depth) & (xx > lo_x - 2) & (xx < hi_x + 2)
    else:  # bottom
        m = (yy > hi_y - depth) & (xx > lo_x - 2) & (xx < hi_x + 2)
    return m.astype(np.float32)


def generate(n: int, seed: int, style: SceneStyle = DEFAULT_STYLE, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """n scenes (uint8, N x 3 x size x size) and attributes (N x 4: shape label, hue bin,
    distractor count, occluded). Labels are balanced by a seeded permutation."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPES))
    images = np.empty((n, 3, size, size), np.uint8)
    attrs = np.empty((n, 4), np.int64)
    for i, y in enumerate(labels):
        img, (hue, n_dist, occ) = render_scene(int(y), rng, style, size)
        images[i] = np.round(img * 255).astype(np.uint8)
        attrs[i] = (y, hue, n_dist, occ)
    return images, attrs


def style_key(style: SceneStyle = DEFAULT_STYLE) -> dict:
    """The generator's identity for cache keys: a changed knob is a different dataset."""
    from dataclasses import asdict

    return {"version": VERSION, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(style).items()}}
