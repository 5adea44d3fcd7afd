"""The capacity ladder (issue: does TBAR's premise need scale?): CLIPs pre-trained here on
the same built-in corpus, from a 0.1M-parameter ViT image tower to a 5.3M ModifiedResNet
(46x), with pre-training length growing with size. `tiny-clip` (1.4M) is the rung between.

Each rung is a registered `clip` model whose Params are tiny-clip's with its own
defaults, so a rung is pre-trained once, cached by its config, and named in records like
any model. `bench list models` shows each one's parameter counts. On a GPU machine with a
published CLIP's weights present, `bench analyze scale` adds it as the top rung.
"""

from __future__ import annotations

from dataclasses import make_dataclass

from bench.models.zoo import TinyClip, TinyClipParams, param_counts
from bench.registry import MODELS

# name -> (description, Params defaults). Pre-training steps grow with size: the largest
# CPU rung pre-trains in about 20 minutes on 2 cores.
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
        "ladder rung: CLIP with a ModifiedResNet width-32 image tower, pre-trained here (about 20 min on 2 cores)",
        {"vision": "modified-resnet", "vision_width": 32, "pretrain_steps": 1200},
    ),
}
LADDER = ["clip-vit-xs", "clip-rn-xs", "tiny-clip", "clip-rn-m"]  # by image-tower size


def _params_class(name: str, defaults: dict) -> type:
    fields = [(k, type(v), v) for k, v in defaults.items()]
    return make_dataclass(f"{name.title().replace('-', '')}Params", fields, bases=(TinyClipParams,), frozen=True)


for _name, (_desc, _defaults) in RUNGS.items():
    _cls = _params_class(_name, _defaults)
    MODELS.add(
        _name,
        type(f"{_name.title().replace('-', '')}", (TinyClip,), {"Params": _cls}),
        _desc,
        settings=("finetune",),
        kind="clip",
        param_counts=(lambda cls=_cls: param_counts(cls().arch())),
    )
