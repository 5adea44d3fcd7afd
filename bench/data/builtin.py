"""The built-in offline datasets: `shapes`, `colors`, `digits`, and the captioned
pre-training corpus of the tiny CLIP.

Zero-shot templates come from the same family of phrasings as the pre-training
captions, the way CLIP's prompts resemble web alt-text.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.core.registry import DATASETS
from bench.data import scenes
from bench.data import shapes as gen
from bench.data.base import LabeledDataset, Split, cached_arrays

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

SHAPE_TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "a {} shape."]
COLOR_TEMPLATES = ["a photo of something {}.", "a {} object."]
DIGIT_TEMPLATES = ["a photo of the number {}.", "a handwritten digit {}.", "the digit {}."]
SCENE_TEMPLATES = ["a photo of a {}.", "a {} in a cluttered scene.", "a photo of a {} among other things."]

# Split sizes: the validation split holds >= 1000 images so that TBAR's 5% CA
# tolerance is well above its standard error (methods.md, tbar step 5).
GEN_SIZES = {"train": 8000, "val": 1000, "test": 2000}
_GEN_SEEDS = {"shapes": 1000, "colors": 2000, "corpus": 3000, "scenes": 4000, "scene-corpus": 5000}


# The 224 px shapes exist to exercise published 224 px CLIPs on GPUs without any
# download; smaller splits keep them at ~0.9 GB of uint8.
GEN224_SIZES = {"train": 4000, "val": 1000, "test": 1000}

# The smoke variants: the same generator and the same 8000 training images, but a quarter
# of the evaluation images. Evaluation is most of a small trial's time (every curve point
# measures val, every operating point test), so smoke runs and the test suite use these.
# Their val split is too small for TBAR's 5% tolerance to be well above its standard
# error: never for results.
SMOKE_SIZES = {"train": 8000, "val": 250, "test": 500}


def _generated(name: str, attr: int, side: int = gen.SIZE, sizes: dict = GEN_SIZES) -> LabeledDataset:
    base = name.removesuffix(f"-{side}").removesuffix("-smoke")

    def build() -> dict[str, np.ndarray]:
        out = {}
        for i, (split, n) in enumerate(sizes.items()):
            images, attrs = gen.generate(n, _GEN_SEEDS[base] + i, side)
            out[f"{split}_x"], out[f"{split}_y"] = images, attrs[:, attr]
        return out

    key = {"name": name, "sizes": sizes, "v": 1} | ({"side": side} if side != gen.SIZE else {})
    arrays = cached_arrays(key, build)
    splits = {s: Split(torch.from_numpy(arrays[f"{s}_x"]), torch.from_numpy(arrays[f"{s}_y"])) for s in sizes}
    if base == "shapes":
        return LabeledDataset(name, list(gen.SHAPES), SHAPE_TEMPLATES, **splits)
    return LabeledDataset(name, list(gen.COLOR_NAMES), COLOR_TEMPLATES, **splits)


def _shape_corpus(attr: int):
    """The `contrastive` setting's caption corpus for a shapes-world task: images,
    the task's label of each (attribute `attr`), and one caption each."""

    def build(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        images, attrs, captions = caption_corpus(n, seed)
        return images, attrs[:, attr].copy(), captions

    return build


@DATASETS.register(
    "shapes",
    "procedural 32x32 images, one flat shape on a grey texture; label = which of 10 shapes (saturated: ~99% CA)",
    caption_corpus=_shape_corpus(0),
)
def shapes() -> LabeledDataset:
    return _generated("shapes", 0)


@DATASETS.register(
    "shapes-224",
    "the shapes task rendered at 224x224 (4000/1000/1000); for 224 px CLIPs",
    caption_corpus=_shape_corpus(0),
)
def shapes_224() -> LabeledDataset:
    return _generated("shapes-224", 0, 224, GEN224_SIZES)


@DATASETS.register(
    "colors", "procedural 32x32 images; label = which of 8 colours (control task)", caption_corpus=_shape_corpus(1)
)
def colors() -> LabeledDataset:
    return _generated("colors", 1)


@DATASETS.register(
    "shapes-smoke",
    "the shapes task with small evaluation splits (8000/250/500): for smoke runs and tests, not for results",
    caption_corpus=_shape_corpus(0),
)
def shapes_smoke() -> LabeledDataset:
    return _generated("shapes-smoke", 0, sizes=SMOKE_SIZES)


@DATASETS.register(
    "colors-smoke",
    "the colors control task with small evaluation splits (8000/250/500): for smoke runs and tests",
    caption_corpus=_shape_corpus(1),
)
def colors_smoke() -> LabeledDataset:
    return _generated("colors-smoke", 1, sizes=SMOKE_SIZES)


# ---------------------------------------------------------------- scenes


def scene_caption(label: int, hue: int, occluded: int, rng: np.random.Generator) -> str:
    """A caption naming the main object's shape, sometimes its hue, the clutter or the occlusion."""
    pool = [*_SCENE_CAPTIONS, *(_SCENE_OCCLUDED if occluded else ())]
    return pool[rng.integers(len(pool))].format(shape=gen.SHAPES[label], hue=scenes.HUE_NAMES[hue])


_SCENE_CAPTIONS = [
    "a photo of a {shape}.",
    "a {hue} {shape}.",
    "a {shape} in a cluttered scene.",
    "a photo of a {hue} {shape} among other things.",
    "a {shape} among other shapes.",
]
_SCENE_OCCLUDED = ["a partly hidden {shape}.", "a photo of a {shape}, partly covered."]


def _scene_arrays(name: str, sizes: dict) -> dict[str, np.ndarray]:
    def build() -> dict[str, np.ndarray]:
        out = {}
        for i, (split, n) in enumerate(sizes.items()):
            images, attrs = scenes.generate(n, _GEN_SEEDS["scenes"] + i)
            out[f"{split}_x"], out[f"{split}_y"] = images, attrs[:, 0]
        return out

    return cached_arrays({"name": name, "sizes": sizes, "style": scenes.style_key(), "v": 1}, build)


def scene_corpus(n: int, seed: int, offset: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """n captionable scenes (uint8 images, attributes), disjoint from the labelled splits;
    `offset` separates the pre-training corpus (0) from the contrastive setting's (1000)."""
    arrays = cached_arrays(
        {"name": "scene-corpus", "n": n, "seed": seed, "offset": offset, "style": scenes.style_key(), "v": 1},
        lambda: dict(zip(("x", "a"), scenes.generate(n, _GEN_SEEDS["scene-corpus"] + offset + seed), strict=True)),
    )
    return torch.from_numpy(arrays["x"]), arrays["a"]


def _scene_caption_corpus(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    images, attrs = scene_corpus(n, seed, offset=1000)
    rng = np.random.default_rng(seed)
    captions = [scene_caption(int(a[0]), int(a[1]), int(a[3]), rng) for a in attrs]
    return images, attrs[:, 0].copy(), captions


@DATASETS.register(
    "scenes",
    "procedural cluttered 32x32 scenes (pink-noise textures, distractors, occlusion, lighting, blur); "
    "label = the main object's shape (10 classes); the micro suite's attacked task",
    caption_corpus=_scene_caption_corpus,
    version=scenes.VERSION,
)
def scenes_dataset() -> LabeledDataset:
    arrays = _scene_arrays("scenes", GEN_SIZES)
    splits = {s: Split(torch.from_numpy(arrays[f"{s}_x"]), torch.from_numpy(arrays[f"{s}_y"])) for s in GEN_SIZES}
    return LabeledDataset("scenes", list(gen.SHAPES), SCENE_TEMPLATES, **splits)


def _digit_arrays() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits  # real handwritten digits shipped with scikit-learn

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1).repeat(1, 3, 1, 1) * 255).round().to(torch.uint8).numpy()
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    cuts = {"train": perm[:1097], "val": perm[1097:1397], "test": perm[1397:]}
    out = {}
    for split, idx in cuts.items():
        out[f"{split}_x"], out[f"{split}_y"] = x[idx], y[idx]
    return out


@DATASETS.register("digits", "scikit-learn's 8x8 handwritten digits upscaled to 32x32 RGB; 1797 images")
def digits() -> LabeledDataset:
    arrays = cached_arrays({"name": "digits", "v": 1}, _digit_arrays)
    splits = {
        s: Split(torch.from_numpy(arrays[f"{s}_x"]), torch.from_numpy(arrays[f"{s}_y"]))
        for s in ("train", "val", "test")
    }
    return LabeledDataset("digits", list(DIGIT_WORDS), DIGIT_TEMPLATES, **splits)


# ---------------------------------------------------------------- pre-training corpus

_BOTH = [
    "a {color} {shape}.",
    "a photo of a {color} {shape}.",
    "a drawing of a {color} {shape}.",
    "a {color} {shape} on a {bg} background.",
]
_SHAPE_ONLY = [
    "a photo of a {shape}.",
    "a drawing of a {shape}.",
    "a {shape} shape.",
    "a {shape} on a {bg} background.",
]
_COLOR_ONLY = ["a photo of something {color}.", "a {color} object.", "something {color} on a {bg} background."]


def shape_caption(shape: int, color: int, bg: int, rng: np.random.Generator) -> str:
    """A caption naming the shape, the colour, or both (and sometimes the background).

    Mixing partial captions in is what lets single-attribute prompts such as
    "a photo of a star." land near every star, whatever its colour.
    """
    r = rng.random()
    pool = _BOTH if r < 0.5 else _SHAPE_ONLY if r < 0.75 else _COLOR_ONLY
    template = pool[rng.integers(len(pool))]
    return template.format(shape=gen.SHAPES[shape], color=gen.COLOR_NAMES[color], bg=gen.BACKGROUNDS[bg])


def digit_caption(label: int, rng: np.random.Generator) -> str:
    return DIGIT_TEMPLATES[rng.integers(len(DIGIT_TEMPLATES))].format(DIGIT_WORDS[label])


def corpus(n_shapes: int, seed: int) -> tuple[torch.Tensor, list[tuple[int, int, int]], Split]:
    """The pre-training corpus: generated shape images with their attributes, and the
    digits train split. Captions are drawn per step (see `caption_batch`) so every
    image is seen with several phrasings."""
    arrays = cached_arrays(
        {"name": "corpus", "n": n_shapes, "seed": seed, "v": 1},
        lambda: dict(zip(("x", "a"), gen.generate(n_shapes, _GEN_SEEDS["corpus"] + seed), strict=True)),
    )
    attrs = [tuple(int(v) for v in row) for row in arrays["a"]]
    return torch.from_numpy(arrays["x"]), attrs, digits().train


def caption_corpus(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """A captioned corpus for the `contrastive` setting, disjoint from pre-training:
    images (uint8), attributes (shape, colour, background) and one fixed caption each."""
    arrays = cached_arrays(
        {"name": "captions", "n": n, "seed": seed, "v": 1},
        lambda: dict(zip(("x", "a"), gen.generate(n, _GEN_SEEDS["corpus"] + 1000 + seed), strict=True)),
    )
    rng = np.random.default_rng(seed)
    captions = [shape_caption(int(s), int(c), int(b), rng) for s, c, b in arrays["a"]]
    return torch.from_numpy(arrays["x"]), arrays["a"], captions
