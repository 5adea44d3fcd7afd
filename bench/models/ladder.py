"""The capacity ladder (issue: does TBAR's premise need scale?): CLIPs pre-trained here on
the same built-in corpus, from a 0.12M-parameter ViT image tower to an 11.8M ModifiedResNet
(99x; 33x from the smallest rung whose victim learns the attacked task, clip-rn-xs), with
pre-training length growing with size. `tiny-clip` (1.4M) is a rung.

Each rung is a registered `clip` model whose Params are tiny-clip's with its own
defaults, so a rung is pre-trained once, cached by its config, and named in records like
any model. `bench list models` shows each one's parameter counts. On a GPU machine with a
published CLIP's weights present, `bench analyze scale` adds it as the top rung.
"""

from __future__ import annotations

import typing
from dataclasses import make_dataclass

from bench.core.registry import MODELS
from bench.models.zoo import TinyClip, TinyClipParams, param_counts

# name -> (description, Params defaults). Pre-training steps grow with size: the largest
# CPU rung takes about 31 CPU-minutes at one torch thread (docs/world.md).
RUNGS: dict[str, tuple[str, dict]] = {
    "clip-vit-xs": (
        "ladder rung: CLIP with a ViT image tower (2 blocks, width 64, 4 px patches), pre-trained here",
        {"vision": "vit", "vision_width": 64, "vit_layers": 2, "pretrain_steps": 600},
    ),
    "clip-rn-xs": (
        "ladder rung: CLIP with a ModifiedResNet width-8 image tower, pre-trained here",
        {"vision": "modified-resnet", "vision_width": 8, "pretrain_steps": 600},
    ),
    "clip-rn-m": (
        "ladder rung: CLIP with a ModifiedResNet width-32 image tower, pre-trained here",
        {"vision": "modified-resnet", "vision_width": 32, "pretrain_steps": 1200},
    ),
    # the top CPU rung, so that the rungs whose victims learn the task (clip-rn-xs up) span
    # 33x in image-tower parameters, not only the ladder as a whole
    "clip-rn-l": (
        "ladder rung: CLIP with a ModifiedResNet width-48 image tower, pre-trained here",
        {"vision": "modified-resnet", "vision_width": 48, "pretrain_steps": 1400},
    ),
}


# Issue 22's candidates for the default world's victim: the geometry of real CLIP on a 32 px
# image. ViT-B/32 sees a CIFAR image upsampled to 224 px as 7x7 tokens of about 4.6 source
# pixels; clip-vit-s sees it as 8x8 tokens of 4 px. RN50 keeps about 5x5 first-stage cells
# under a 3 px patch; clip-rn-fine (tiny-clip's tower without the stem's average pool) about 2x2.
CANDIDATES: dict[str, tuple[str, dict]] = {
    "clip-vit-s": (
        "world candidate: CLIP with a ViT image tower (4 blocks, width 96, 4 px patches: 8x8 tokens), pre-trained here",
        {"vision": "vit", "vision_width": 96, "vit_layers": 4, "pretrain_steps": 1500, "pretrain_lr": 1e-3},
    ),
    "clip-rn-fine": (
        "world candidate: tiny-clip's ModifiedResNet without the stem's average pool (16x16 first stage), pre-trained here",
        {"vision": "fine-resnet", "vision_width": 16, "pretrain_steps": 1000},
    ),
}


def _params_class(name: str, defaults: dict) -> type:
    # Each field keeps tiny-clip's annotation (its declared range, bench/core/knobs.py); only the default differs.
    hints = typing.get_type_hints(TinyClipParams, include_extras=True)
    fields = [(k, hints[k], v) for k, v in defaults.items()]
    return make_dataclass(f"{name.title().replace('-', '')}Params", fields, bases=(TinyClipParams,), frozen=True)


for _name, (_desc, _defaults) in {**RUNGS, **CANDIDATES}.items():
    _cls = _params_class(_name, _defaults)
    MODELS.add(
        _name,
        type(f"{_name.title().replace('-', '')}", (TinyClip,), {"Params": _cls}),
        _desc,
        settings=("finetune",),
        kind="clip",
        param_counts=(lambda cls=_cls: param_counts(cls().arch())),
    )
