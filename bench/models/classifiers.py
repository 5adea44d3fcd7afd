"""Image classifiers for the `supervised` setting: any timm architecture by name, and
PreAct-ResNet18 as BackdoorBench defines it.

    --models timm:resnet18               # any name of timm.list_models(), from scratch
    --models timm:resnet18.a1_in1k       # ARCH.TAG: timm's pretrained weights, local HF cache
    --models timm:resnet18 --pretrained a1_in1k
    --models preact-resnet18             # BackdoorBench's CIFAR PreAct-ResNet18

Inputs are [0, 1] images; each model resizes them to its `input_size` (bicubic, only when
the side differs) and normalises them itself, like the built-in tiny models.

The small-input stem. BackdoorBench's CIFAR classifiers keep 32 px images at full
resolution through the first stage: a 3x3 stride-1 first convolution and no max-pool,
where ImageNet models have a 7x7 stride-2 convolution and a stride-2 max-pool (a 32 px
image would reach the first stage at 8x8). With `stem: auto` (the default) and
`input_size <= 64`, timm's ResNet family gets that stem:

- every architecture built on `timm.models.resnet.ResNet` (resnet*, resnet*d, resnext*,
  seresnet*, seresnext*, ecaresnet*, wide_resnet*, skresnet*, resnetrs*, ...);
- a single-conv stem (resnet18) is replaced by a 3x3 stride-1 convolution (re-initialised,
  also under a pretrained tag: the 7x7 kernel does not fit); a deep stem (resnet*d: three
  3x3 convolutions) keeps its weights and its first convolution's stride becomes 1;
- the max-pool becomes the identity.

Other architectures keep timm's own stem (`stem: small` on them is an error): a ViT is
built for `input_size` (its patch grid follows, e.g. 2x2 for /16 patches at 32 px; set
`input_size: 224` to upsample the images instead), other CNNs downsample as timm builds
them. Weights come from the local HF cache (timm's `hf_hub_id` for the tag,
`model.safetensors`); nothing is downloaded unless the user allows it.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from bench.core.registry import MODELS, Resolver, UnknownNameError, did_you_mean
from bench.models.clip import MEAN, STD, normalize_images, resize_to

TIMM_PREFIX = "timm:"
TIMM_WEIGHTS = "model.safetensors"


class ImageClassifier(nn.Module):
    """A classifier that takes [0, 1] images: resized to `input_size` (None: as they
    come), normalised with (mean, std), then classified by `net`."""

    def __init__(self, net: nn.Module, mean=MEAN, std=STD, input_size: int | None = None):
        super().__init__()
        self.net = net
        self.mean, self.std, self.input_size = tuple(mean), tuple(std), input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(normalize_images(resize_to(x, self.input_size), self.mean, self.std))

    def head_parameters(self) -> list[nn.Parameter]:
        """The classification layer (timm's get_classifier), which TBAR keeps frozen."""
        return list(self.net.get_classifier().parameters())


# ---------------------------------------------------------------- PreAct-ResNet18


class PreActBlock(nn.Module):
    """He et al. 2016 ("Identity Mappings in Deep Residual Networks"), the basic block with
    pre-activation: BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, plus the shortcut. When
    the block changes shape, the shortcut is a 1x1 convolution of the pre-activated input.
    Module names follow BackdoorBench's so its checkpoints load as plain state dicts."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.projects = stride != 1 or cin != cout
        if self.projects:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        skip = self.shortcut(pre) if self.projects else x
        return self.conv2(F.relu(self.bn2(self.conv1(pre)))) + skip


class PreActResNet(nn.Module):
    """The CIFAR pre-activation ResNet: a 3x3 stride-1 stem convolution (no BN, no pool),
    four stages of PreActBlocks at 64, 128, 256, 512 channels (strides 1, 2, 2, 2), global
    average pooling (on 32 px input the 4x4 map: BackdoorBench's avg-pool 4, made adaptive)
    and a linear layer. There is no BN/ReLU after the last stage, as in BackdoorBench."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        cin = width
        for i, n in enumerate(blocks):
            cout, stride = width * 2**i, (1 if i == 0 else 2)
            stage = []
            for j in range(n):
                stage.append(PreActBlock(cin, cout, stride if j == 0 else 1))
                cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.n_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.linear(torch.flatten(self.avgpool(x), 1))

    def get_classifier(self) -> nn.Module:
        return self.linear


@dataclass(frozen=True)
class PreActParams:
    """PreAct-ResNet18 has no knobs: it is BackdoorBench's network as defined."""


@MODELS.register(
    "preact-resnet18",
    "PreAct-ResNet18 as BackdoorBench defines it (3x3 stem, [2,2,2,2] PreActBlocks, 64-512 channels; 11.2M params)",
    settings=("supervised",),
    kind="classifier",
)
class PreActResNet18:
    Params = PreActParams

    @staticmethod
    def build(params: PreActParams, num_classes: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return ImageClassifier(PreActResNet((2, 2, 2, 2), num_classes))


# ---------------------------------------------------------------- any timm architecture


@dataclass(frozen=True)
class TimmParams:
    # The side the network sees; images of another side are resized (bicubic) to it.
    input_size: Annotated[int, Ge(8)] = 32
    # auto: the small-input stem (see the module docstring) where input_size <= 64 and the
    # architecture is a timm ResNet; small: that stem or an error; timm: timm's own stem.
    stem: Literal["auto", "small", "timm"] = "auto"

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {self.input_size}")


@functools.lru_cache(maxsize=1)
def timm_architectures() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


@functools.lru_cache(maxsize=1)
def _timm_tags() -> dict[str, list[str]]:
    import timm

    tags: dict[str, list[str]] = {}
    for name in timm.list_pretrained():
        arch, _, tag = name.partition(".")
        tags.setdefault(arch, []).append(tag)
    return tags


def timm_weights(arch: str, tag: str) -> tuple[Path | None, str, str]:
    """(cached weight file or None, the hub repo, where it is expected and how to fetch it)."""
    import timm
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    from bench.models.published import WeightsError

    cfg = timm.get_pretrained_cfg(f"{arch}.{tag}")
    repo = (getattr(cfg, "hf_hub_id", None) or "").strip("/")
    if not repo:
        raise WeightsError(
            f"timm:{arch}.{tag} is published only as a URL ({getattr(cfg, 'url', None)}); download it where you "
            "have internet and convert it to a safetensors file"
        )
    found = try_to_load_from_cache(repo, TIMM_WEIGHTS)
    if isinstance(found, str):
        return Path(found), repo, found
    where = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / "<revision>" / TIMM_WEIGHTS
    return None, repo, f"{where} (fetch with: hf download {repo} {TIMM_WEIGHTS})"


def has_small_stem_support(net: nn.Module) -> bool:
    from timm.models.resnet import ResNet

    return isinstance(net, ResNet)


def use_small_stem(net: nn.Module) -> None:
    """BackdoorBench's CIFAR stem on a timm ResNet, in place (see the module docstring)."""
    if isinstance(net.conv1, nn.Sequential):  # deep stem: keep it, at full resolution
        first = next(m for m in net.conv1.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    else:
        net.conv1 = nn.Conv2d(net.conv1.in_channels, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()


def build_timm(arch: str, tag: str | None, params: TimmParams, num_classes: int, seed: int) -> nn.Module:
    import timm

    from bench.models.published import WeightsError, allow_download

    torch.manual_seed(seed)
    kwargs: dict = {"num_classes": num_classes}
    mean, std = MEAN, STD
    if tag:
        path, repo, where = timm_weights(arch, tag)
        if path is None:
            if not allow_download():
                raise WeightsError(f"timm:{arch}.{tag}: weights not in the local cache; expected {where}")
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(repo, TIMM_WEIGHTS))
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        cfg = timm.get_pretrained_cfg(f"{arch}.{tag}")
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    name = f"{arch}.{tag}" if tag else arch
    try:
        net = timm.create_model(name, img_size=params.input_size, **kwargs)
    except TypeError as e:  # an architecture without an img_size argument (CNNs)
        if "img_size" not in str(e):
            raise
        net = timm.create_model(name, **kwargs)
    small = params.stem == "small" or (params.stem == "auto" and params.input_size <= 64)
    if small and has_small_stem_support(net):
        use_small_stem(net)
    elif params.stem == "small":
        raise ValueError(
            f"timm:{arch} has no stem bench can swap for the small-input one (timm ResNets only); use stem: timm"
        )
    return ImageClassifier(net, mean, std, params.input_size)


def _timm_loader(arch: str, tag: str | None) -> type:
    class TimmModel:
        Params = TimmParams

        @staticmethod
        def build(params: TimmParams, num_classes: int, seed: int) -> nn.Module:
            return build_timm(arch, tag, params, num_classes, seed)

        @staticmethod
        def missing(params: TimmParams) -> str | None:
            from bench.models.published import WeightsError, allow_download

            if not tag:
                return None
            try:
                path, _, where = timm_weights(arch, tag)
            except WeightsError as e:
                return str(e)
            if path is None and not allow_download():
                return f"timm:{arch}.{tag}: weights not in the local cache; expected {where}"
            return None

    TimmModel.__name__ = f"Timm_{arch}"
    return TimmModel


def resolve_timm(name: str):
    """The MODELS resolver for timm:ARCH and timm:ARCH.TAG."""
    if not name.startswith(TIMM_PREFIX):
        return None
    arch, dot, tag = name[len(TIMM_PREFIX) :].partition(".")
    archs = timm_architectures()
    if arch not in archs:
        raise UnknownNameError(
            f"unknown timm architecture {arch!r} in {name!r}.{did_you_mean(arch, archs)} See bench list models 'timm:*'"
        )
    if not dot:
        return (_timm_loader(arch, None), f"timm {arch}, trained from scratch", ("supervised",),
                {"kind": "classifier", "family": "timm", "arch": arch})  # fmt: skip
    tags = _timm_tags().get(arch, [])
    if tag not in tags:
        valid = ", ".join(tags) if tags else "none (use the bare timm:ARCH)"
        raise UnknownNameError(
            f"timm architecture {arch!r} has no pretrained tag {tag!r}.{did_you_mean(tag, tags)} Tags: {valid}"
        )
    return (_timm_loader(arch, tag), f"timm {arch} from the {tag!r} weights (local HF cache)", ("supervised",),
            {"kind": "classifier", "family": "timm", "arch": arch, "tag": tag})  # fmt: skip


MODELS.add_resolver(
    Resolver(
        resolve_timm,
        candidates=lambda: [TIMM_PREFIX + a for a in timm_architectures()],
        hint="or any timm architecture as timm:ARCH or timm:ARCH.TAG (bench list models 'timm:*')",
    )
)


def timm_pretrained(pattern: str | None = None) -> list[dict]:
    """timm's pretrained (architecture, tag) pairs, with whether the weights are cached."""
    from bench.models.published import WeightsError

    rows = []
    for arch, tags in sorted(_timm_tags().items()):
        for tag in tags:
            name = f"{TIMM_PREFIX}{arch}.{tag}"
            if pattern and not (fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(TIMM_PREFIX + arch, pattern)):
                continue
            try:
                path, repo, _ = timm_weights(arch, tag)
                cached = "yes" if path is not None else "no"
            except WeightsError:
                path, repo, cached = None, "", "url only"
            rows.append({"name": name, "arch": arch, "tag": tag, "repo": repo, "cached": cached, "path": path})
    return rows
