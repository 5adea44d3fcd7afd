"""Pre-training of `tiny-clip` (and the ladder rungs) on the built-in captioned corpus,
cached by config hash.

A pre-trained CLIP is released in half precision, as OpenAI's CLIP weights are: the
trained weights are rounded to float16 and that is the victim, whether it was trained on
this machine or shipped with the package. So a checkpoint in `bench/weights/`, named by the
same config hash as the cache, is byte for byte what `bench pretrain` builds (checked by
`bench pretrain --check-shipped`), and a cold machine loads it instead of pre-training.
A changed corpus generator or architecture changes the hash, so a stale shipped file is
never found for the new config: that config is pre-trained here as before.

`get_pretrained` returns the cached checkpoint, else the shipped one, else trains it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.runtime import fixed_threads
from bench.core.train import TrainSpec, train
from bench.data import builtin, scenes
from bench.data.base import cache_dir, load_dataset
from bench.models.clip import ClipArch, ZeroShotClassifier, build_clip, normalize_images, tokenize, zeroshot_weights
from bench.store import CorruptCheckpointError, config_hash, file_lock, load_weights, quarantine, save_weights

log = logging.getLogger(__name__)

ZERO_SHOT_SETS = ("shapes", "scenes", "colors", "digits")
# Checkpoints shipped with the package: <name>-<config hash>.{safetensors,json}, as in the cache.
SHIPPED_DIR = Path(__file__).parents[1] / "weights"


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 1000  # scenes zero-shot: 80% after 800 steps (shapes 98%, colors 100%, digits 99%)
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    n_shapes: int = 24000
    digit_share: float = 0.15  # share of each batch drawn from the digits train split
    # Captioned cluttered scenes (bench/data/scenes.py), disjoint from the `scenes` splits:
    # without them the tower would never have seen clutter, and zero-shot on scenes fails.
    n_scenes: int = 16000
    scene_share: float = 0.5
    seed: int = 0
    arch: ClipArch = field(default_factory=ClipArch)
    # The released precision: the trained weights are rounded to it (see the module doc).
    weights_dtype: str = "float16"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
        if self.n_scenes:  # a changed scene generator is a different corpus, so another checkpoint
            d["scene_style"] = scenes.style_key()
        return d


def multi_positive_clip_loss(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, same: torch.Tensor
) -> torch.Tensor:
    """CLIP loss whose targets spread over every pair with an identical caption.

    The corpus repeats captions within a batch ("a photo of a star."), and plain
    InfoNCE would push a star image away from the other copies of its own caption.
    `same[i, j]` is 1 where captions i and j are the same string.
    """
    logits = scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    target = same / same.sum(1, keepdim=True)
    return (
        torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.T.log_softmax(1), 1).mean()
    ) / 2


class CaptionStream:
    """Endless batches of (images, tokens, same-caption matrix); captions drawn afresh
    per step so each image is seen with several phrasings."""

    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.images, self.attrs, self.digits = builtin.corpus(cfg.n_shapes, cfg.seed)
        self.scenes, self.scene_attrs = builtin.scene_corpus(cfg.n_scenes, cfg.seed) if cfg.n_scenes else (None, None)
        self.rng = np.random.default_rng(cfg.seed)

    def __iter__(self):
        return self

    def __next__(self):
        cfg, rng = self.cfg, self.rng
        n_dig = round(cfg.batch_size * cfg.digit_share)
        n_scn = round(cfg.batch_size * cfg.scene_share) if self.scenes is not None else 0
        si = rng.integers(0, len(self.images), cfg.batch_size - n_dig - n_scn)
        ci = rng.integers(0, len(self.scenes), n_scn) if n_scn else np.zeros(0, np.int64)
        di = rng.integers(0, len(self.digits), n_dig)
        caps = [builtin.shape_caption(*self.attrs[i], rng) for i in si]
        caps += [builtin.scene_caption(*(int(v) for v in self.scene_attrs[i][[0, 1, 3]]), rng) for i in ci]
        caps += [builtin.digit_caption(int(self.digits.labels[i]), rng) for i in di]
        parts = [self.images[torch.as_tensor(si)]]
        if n_scn:
            parts.append(self.scenes[torch.as_tensor(ci)])
        x = torch.cat([*parts, self.digits.images[torch.as_tensor(di)]]).float() / 255
        # Digits get a small random shift so the tower cannot memorise 1097 images.
        shift = rng.integers(-2, 3, 2)
        x[-n_dig:] = torch.roll(x[-n_dig:], shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        codes = {c: k for k, c in enumerate(dict.fromkeys(caps))}
        ids = torch.tensor([codes[c] for c in caps])
        same = (ids[:, None] == ids[None, :]).float()
        return x, tokenize(caps, cfg.arch.context_length), same


def _loss(model, batch):
    x, tokens, same = batch
    model.logit_scale.data.clamp_(0, math.log(100))
    return multi_positive_clip_loss(
        model.encode_image(normalize_images(x)), model.encode_text(tokens), model.logit_scale, same
    )


@torch.no_grad()
def zero_shot_accuracy(model, dataset: str, split: str = "test") -> float:
    ds = load_dataset(dataset)
    head = zeroshot_weights(model, ds.classnames, ds.templates, model.context_length)
    clf = ZeroShotClassifier.from_clip(model, head, share_visual=True).eval()
    from bench.core.metrics import accuracy, predict

    data = ds.split(split)
    return accuracy(predict(clf, data.x), data.labels)


def pretrain(cfg: PretrainConfig, on_step: Callable[[int, float], None] | None = None):
    from bench.core import runtime

    torch.manual_seed(cfg.seed)
    model = build_clip(cfg.arch)
    if runtime.current().channels_last:  # NHWC: oneDNN's faster CPU kernels for the conv tower
        model = model.to(memory_format=torch.channels_last)
    spec = TrainSpec(
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        freeze_norm_stats=False,  # training from scratch: BatchNorm statistics must be learned
    )
    stats = train(model, _loss, CaptionStream(cfg), spec, on_step=on_step)
    model.eval()
    round_weights(model, cfg.weights_dtype)
    accs = {name: zero_shot_accuracy(model, name) for name in ZERO_SHOT_SETS}
    return model, {
        "steps": stats.steps,
        "samples": stats.samples,
        "wall_s": round(stats.wall_s, 1),
        "zero_shot_test": accs,
    }


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@torch.no_grad()
def round_weights(model: torch.nn.Module, dtype: str) -> None:
    """Round every floating-point tensor of `model` (parameters and buffers) to `dtype`
    in place, keeping float32 storage: the model then computes what the released file
    gives when it is loaded into a float32 model."""
    for t in model.state_dict().values():
        if t.is_floating_point():
            t.copy_(t.to(DTYPES[dtype]))


def checkpoint_name(cfg: PretrainConfig) -> str:
    return f"tiny-clip-{config_hash(cfg.to_dict())}"


def checkpoint_path(cfg: PretrainConfig) -> Path:
    return cache_dir() / "models" / checkpoint_name(cfg)


def shipped_path(cfg: PretrainConfig) -> Path | None:
    """The shipped checkpoint for `cfg` (without suffix), or None when none is shipped."""
    stem = SHIPPED_DIR / checkpoint_name(cfg)
    return stem if stem.with_suffix(".json").exists() and stem.with_suffix(".safetensors").exists() else None


def _save(model, path: Path, cfg: PretrainConfig, info: dict) -> None:
    """The checkpoint in its released precision (a float16 file is half the bytes)."""
    import copy

    released = copy.deepcopy(model).to(DTYPES[cfg.weights_dtype])
    meta = {"arch": "open_clip.CLIP", "name": "tiny-clip", "pretrain": cfg.to_dict(), "info": info}
    save_weights(released, path, meta)


def get_pretrained(cfg: PretrainConfig = PretrainConfig(), on_step=None, force: bool = False, on_stage=None):
    """The pre-trained CLIP for `cfg`: from the cache, else shipped with the package, else
    trained now (and cached). Returns (model, info). `force` trains it again whatever
    exists. `on_stage(text)` hears which of the three it is."""
    path = checkpoint_path(cfg)
    model = build_clip(cfg.arch)
    # Concurrent trials needing the same checkpoint: one trains, the others wait and load.
    with file_lock(path.with_suffix(".lock")):
        # The sidecar is written last, so it marks a complete checkpoint.
        shipped = shipped_path(cfg)
        for stem, source in ((path, "cached weights"), (shipped, "shipped weights")):
            if (
                force
                or stem is None
                or not (stem.with_suffix(".safetensors").exists() and stem.with_suffix(".json").exists())
            ):
                continue
            try:
                meta = load_weights(model, stem)  # verifies the file's SHA-256 against its sidecar
                model.eval()
                if on_stage:
                    on_stage(source)
                return model, meta["info"]
            except CorruptCheckpointError as e:  # altered or truncated
                if stem == shipped:
                    raise  # a damaged package: never silently train something else in its place
                quarantine(
                    [path.with_suffix(".json"), path.with_suffix(".safetensors")],
                    path.parent / "quarantine",
                    str(e),
                )
        if on_stage:
            on_stage("pre-training")
        t0 = time.perf_counter()
        with fixed_threads():  # the same bytes whether a grid unit or `bench pretrain` trains it
            model, info = pretrain(cfg, on_step=on_step)
        info["total_s"] = round(time.perf_counter() - t0, 1)
        _save(model, path, cfg, info)
        return model, info
