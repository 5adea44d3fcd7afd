"""The registered victim models.

A model entry's `kind` says which threat settings can use it: `clip` models are
full CLIPs (image and text towers), `classifier` models map images to logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from bench.core.knobs import Count, Index, Positive, Share
from bench.core.registry import MODELS
from bench.data import scenes
from bench.models.clip import ClipArch, normalize_images
from bench.models.pretrain import PretrainConfig, get_pretrained


@dataclass(frozen=True)
class TinyClipParams:
    """Knobs of the tiny CLIP's one-time pre-training (see bench/models/pretrain.py). Every
    field enters trial ids, so a changed corpus (a new scene generator version) or
    architecture never reuses records of another model."""

    pretrain_steps: Count = PretrainConfig.steps
    pretrain_batch_size: Count = PretrainConfig.batch_size
    pretrain_lr: Positive = PretrainConfig.lr
    pretrain_seed: Index = 0
    pretrain_scenes: Index = PretrainConfig.n_scenes
    pretrain_scene_share: Share = PretrainConfig.scene_share
    corpus_version: Index = scenes.VERSION
    vision: str = ClipArch.vision
    vision_width: Count = ClipArch.vision_width
    vit_layers: Count = ClipArch.vit_layers
    # the released precision of the pre-trained weights (bench/models/pretrain.py): float16, as OpenAI ships CLIP
    weights_dtype: Literal["float16", "bfloat16", "float32"] = PretrainConfig.weights_dtype

    def arch(self) -> ClipArch:
        return ClipArch(vision=self.vision, vision_width=self.vision_width, vit_layers=self.vit_layers)

    def pretrain_config(self) -> PretrainConfig:
        if self.corpus_version != scenes.VERSION:
            raise ValueError(
                f"corpus_version {self.corpus_version} names a scene generator this code no longer has "
                f"(it has version {scenes.VERSION})"
            )
        return PretrainConfig(
            steps=self.pretrain_steps,
            batch_size=self.pretrain_batch_size,
            lr=self.pretrain_lr,
            seed=self.pretrain_seed,
            n_scenes=self.pretrain_scenes,
            scene_share=self.pretrain_scene_share,
            arch=self.arch(),
            weights_dtype=self.weights_dtype,
        )


def param_counts(arch: ClipArch) -> dict[str, int]:
    """Parameters of the image tower (what TBAR's task vector spans) and of the whole CLIP."""
    from bench.models.clip import build_clip

    model = build_clip(arch)
    return {
        "visual": sum(p.numel() for p in model.visual.parameters()),
        "total": sum(p.numel() for p in model.parameters()),
    }


@MODELS.register(
    "tiny-clip",
    "open_clip CLIP, ModifiedResNet width 16 image tower, pre-trained here on the built-in captions",
    settings=("finetune",),
    kind="clip",
    param_counts=lambda: param_counts(TinyClipParams().arch()),
)
class TinyClip:
    Params = TinyClipParams

    @staticmethod
    def load(params: TinyClipParams, on_step=None, on_stage=None):
        """(open_clip CLIP, pre-training info): cached, shipped, or trained and cached on first use."""
        return get_pretrained(params.pretrain_config(), on_step=on_step, on_stage=on_stage)


class Normalized(nn.Module):
    """A classifier that takes [0, 1] images and normalises them itself."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(normalize_images(x))

    def head_parameters(self) -> list[nn.Parameter]:
        """The classification layer (timm's get_classifier), which TBAR keeps frozen."""
        return list(self.net.get_classifier().parameters())


@dataclass(frozen=True)
class TinyResNetParams:
    channels: tuple[Count, ...] = (16, 32, 64, 128)
    layers: tuple[Count, ...] = (1, 1, 1, 1)
    # "half": a 3x3 stride-2 first convolution and no max-pool, so a 32 px image reaches
    # the first stage at 16x16 (timm's ImageNet stem, "imagenet", leaves 8x8 and cannot
    # learn the scenes task; BackdoorBench's stride-1 CIFAR stem costs 4x more here).
    # Measured on scenes (AdamW 3e-3, 30 epochs): imagenet 57% CA at epoch 24, half 82%.
    stem: Literal["imagenet", "half"] = "half"


@MODELS.register(
    "tiny-resnet",
    "timm ResNet (BasicBlock, channels 16-128, 3x3 stride-2 stem, 0.33M params), trained from scratch",
    settings=("supervised",),
    kind="classifier",
)
class TinyResNet:
    Params = TinyResNetParams

    @staticmethod
    def build(params: TinyResNetParams, num_classes: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        net = ResNet(
            BasicBlock,
            list(params.layers),
            num_classes=num_classes,
            channels=tuple(params.channels),
            stem_width=params.channels[0],
        )
        if params.stem == "half":
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=2, padding=1, bias=False)
            net.maxpool = nn.Identity()
        return Normalized(net)


def model_params(name: str, overrides: dict | None):
    from bench.core.config import from_dict

    return from_dict(MODELS.get(name).Params, overrides, f"model_params.{name}")


def rung_params(model: str, model_params: dict) -> dict[str, int] | None:
    """Image-tower and total parameter counts of a registered clip model, if it can say."""
    from bench.core.registry import MODELS

    count = MODELS.entry(model).extra.get("param_counts")
    if count is None:
        return None
    from bench.core.config import from_dict

    params = from_dict(MODELS.get(model).Params, model_params, f"model_params.{model}")
    return param_counts(params.arch()) if hasattr(params, "arch") else count()
