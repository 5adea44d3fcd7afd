"""The registered victim models.

A model entry's `kind` says which threat settings can use it: `clip` models are
full CLIPs (image and text towers), `classifier` models map images to logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from bench.models.clip import normalize_images
from bench.pretrain import PretrainConfig, get_pretrained
from bench.registry import MODELS


@dataclass(frozen=True)
class TinyClipParams:
    """Knobs of the tiny CLIP's one-time pre-training (see bench/pretrain.py)."""

    pretrain_steps: int = PretrainConfig.steps
    pretrain_batch_size: int = PretrainConfig.batch_size
    pretrain_lr: float = PretrainConfig.lr
    pretrain_seed: int = 0

    def pretrain_config(self) -> PretrainConfig:
        return PretrainConfig(
            steps=self.pretrain_steps, batch_size=self.pretrain_batch_size, lr=self.pretrain_lr, seed=self.pretrain_seed
        )


@MODELS.register(
    "tiny-clip",
    "open_clip CLIP (ModifiedResNet image tower, 8M params) pre-trained here on the built-in captions",
    settings=("finetune",),
    kind="clip",
)
class TinyClip:
    Params = TinyClipParams

    @staticmethod
    def load(params: TinyClipParams, on_step=None):
        """(open_clip CLIP, pre-training info); trains and caches it on first use."""
        return get_pretrained(params.pretrain_config(), on_step=on_step)


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
    channels: tuple[int, ...] = (16, 32, 64, 128)
    layers: tuple[int, ...] = (1, 1, 1, 1)
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
    from bench.config import from_dict

    return from_dict(MODELS.get(name).Params, overrides, f"model_params.{name}")


def params_dict(params) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()}
