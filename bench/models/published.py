"""Published CLIP models by open_clip name and pretrained tag, loaded without the network.

    model_params: {ViT-B-32: {pretrained: openai}}                 # from the local HF cache
    model_params: {ViT-B-32: {checkpoint: /models/vitb32.safetensors}}
    model_params: {ViT-B-32: {}}                                    # random initialisation

Weights come from the user's Hugging Face cache (open_clip's `hf_hub` location for the
tag) or from a file given by path. Nothing is downloaded unless the user allows it
(`--allow-download` / BENCH_ALLOW_DOWNLOAD=1, and HF_HUB_OFFLINE unset); a missing file is
a one-line error naming the file and where it was looked for. Checkpoints are loaded
without running code: safetensors, or torch.load(weights_only=True); a checkpoint that
needs unpickling (a pickled module, a TorchScript archive) is refused.

Beyond the registered names, every open_clip architecture whose text tower uses the CLIP
BPE tokenizer (the one `bench.models.clip.tokenize` applies) resolves on first use:

    --models ViT-B-32:openai           # ARCH:TAG, any pair of open_clip.list_pretrained()
    --models ViT-B-32 --pretrained openai
    --models ViT-H-14                   # ARCH: random init, or model_params sets pretrained

Architectures with a Hugging Face tokenizer (SigLIP, NLLB, MT5, RoBERTa, XLM text towers)
are refused with the reason: their zero-shot heads would need that tokenizer.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from bench.core import process
from bench.core.inputs import input_file
from bench.core.knobs import Index
from bench.core.registry import MODELS, Resolver, UnknownNameError, did_you_mean
from bench.store import file_digest

# open_clip's names whose tokenizer is the CLIP BPE that `bench.models.clip.tokenize` uses.
PUBLISHED = {
    "ViT-B-32": "open_clip ViT-B/32 (88M params); pretrained tags e.g. openai, laion2b_s34b_b79k",
    "ViT-B-16": "open_clip ViT-B/16 (150M params); pretrained tags e.g. openai, laion2b_s34b_b88k",
    "ViT-L-14": "open_clip ViT-L/14 (428M params); pretrained tags e.g. openai, laion2b_s32b_b82k",
    "RN50": "open_clip ResNet-50 CLIP; pretrained tags e.g. openai, yfcc15m",
    # A ViT-B-32-shaped model small enough for tests and CPU runs (no published weights):
    # it stands in for the paper's models on the same loading path.
    "tiny-vit": "open_clip ViT (2 layers, width 64, 8 px patches, 32 px input; no published weights)",
}
# Our own open_clip model configs (bench/models/configs/*.json), e.g. tiny-vit.
open_clip.add_model_config(Path(__file__).parent / "configs")
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsError(RuntimeError):
    """A model's weights are missing or unsafe to load; the message says what to do."""


@dataclass(frozen=True)
class OpenClipParams:
    pretrained: str | None = None  # an open_clip pretrained tag; None with no checkpoint: random init
    checkpoint: str | None = input_file()  # a local weights file (safetensors or a plain state dict)
    init_seed: Index = 0  # for random initialisation


def allow_download() -> bool:
    return process.current().allow_download and os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch file; never unpickles code."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as e:
        raise WeightsError(
            f"refused to load {path}: it needs unpickling code (a pickled module or a TorchScript archive), "
            "which could run anything; convert it to safetensors or a plain state_dict"
        ) from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"refused to load {path}: it is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def hub_file(name: str, tag: str) -> tuple[Path | None, str, str]:
    """(cached weight file or None, the hub repo, a description of where it is expected)."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise WeightsError(f"model {name!r} has no pretrained tag {tag!r}; tags: {tags}")
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        raise WeightsError(
            f"{name}/{tag} is published only as a URL ({cfg.get('url')}); download it where you have internet, "
            "convert it to a state dict and give it as model_params.{name}.checkpoint"
        )
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    for fname in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, fname)
        if isinstance(found, str):
            return Path(found), repo, found
    where = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / "<revision>" / WEIGHT_FILES[0]
    return None, repo, f"{where} (fetch with: hf download {repo} {WEIGHT_FILES[0]})"


def missing_weights(name: str, params: OpenClipParams) -> str | None:
    """None when the weights can be loaded here without the network, else why not."""
    if params.checkpoint:
        return None if Path(params.checkpoint).exists() else f"{name}: checkpoint file {params.checkpoint} is missing"
    if params.pretrained is None:
        return None
    try:
        path, _, where = hub_file(name, params.pretrained)
    except WeightsError as e:
        return str(e)
    if path is None and not allow_download():
        return f"{name} ({params.pretrained}): weights not in the local cache; expected {where}"
    return None


def load_open_clip(name: str, params: OpenClipParams) -> tuple[nn.Module, dict]:
    cfg = open_clip.get_pretrained_cfg(name, params.pretrained) if params.pretrained else {}
    torch.manual_seed(params.init_seed)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights loaded": we load them below
    try:
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(cfg.get("quick_gelu")))
    finally:
        root.setLevel(level)
    info: dict = {"name": name, "pretrained": params.pretrained, "checkpoint": params.checkpoint}
    path = None
    if params.checkpoint:
        path = Path(params.checkpoint)
    elif params.pretrained:
        problem = missing_weights(name, params)
        if problem:
            raise WeightsError(problem)
        path, repo, _ = hub_file(name, params.pretrained)
        if path is None:  # the user allowed a download
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(repo, WEIGHT_FILES[0]))
    if path is not None:
        state = read_state_dict(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsError(
                f"{path} does not fit {name}: {len(missing)} missing keys (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        info["weights_sha256"] = file_digest(path)  # streamed: ViT-L weights are GBs
    if cfg.get("mean"):
        open_clip.set_model_preprocess_cfg(model, {**open_clip.get_model_preprocess_cfg(model), **cfg})
    return model.eval(), info


def _register(name: str, description: str) -> None:
    class Published:
        Params = OpenClipParams

        @staticmethod
        def load(params: OpenClipParams, on_step=None, on_stage=None):
            if on_stage:
                on_stage("loading open_clip weights")
            return load_open_clip(name, params)

        @staticmethod
        def missing(params: OpenClipParams) -> str | None:
            return missing_weights(name, params)

    Published.__name__ = f"OpenClip_{name.replace('-', '_')}"
    MODELS.register(name, description, settings=("finetune",), kind="clip")(Published)


for _name, _desc in PUBLISHED.items():
    _register(_name, _desc)


# ---------------------------------------------------------------- any open_clip architecture


@functools.lru_cache(maxsize=1)
def open_clip_architectures() -> tuple[str, ...]:
    return tuple(open_clip.list_models())


def tokenizer_problem(arch: str) -> str | None:
    """None when `arch`'s text tower takes the CLIP BPE tokens bench feeds it, else why not."""
    hf = ((open_clip.get_model_config(arch) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if hf:
        return (
            f"open_clip architecture {arch!r} needs the Hugging Face tokenizer {hf!r} for its text tower; "
            "bench builds zero-shot heads with open_clip's CLIP BPE tokenizer, so it supports CLIP-BPE "
            "architectures only (bench list models --pretrained lists them)"
        )
    return None


def _tagged_params(arch: str, tag: str) -> type[OpenClipParams]:
    """OpenClipParams whose `pretrained` is fixed by the model name ARCH:TAG."""

    @dataclass(frozen=True)
    class TaggedOpenClipParams(OpenClipParams):
        pretrained: str | None = tag

        def __post_init__(self) -> None:
            if self.pretrained != tag:
                raise ValueError(
                    f"pretrained is {tag!r}, fixed by the name {arch}:{tag}; name another tag as "
                    f"{arch}:TAG or set pretrained on the bare {arch}"
                )
            if self.checkpoint:
                raise ValueError(f"{arch}:{tag} loads the {tag!r} weights; give a checkpoint to the bare {arch}")

    return TaggedOpenClipParams


def _loader(arch: str, params_cls: type) -> type:
    class OpenClipModel:
        Params = params_cls

        @staticmethod
        def load(params: OpenClipParams, on_step=None, on_stage=None):
            if on_stage:
                on_stage("loading open_clip weights")
            return load_open_clip(arch, params)

        @staticmethod
        def missing(params: OpenClipParams) -> str | None:
            return missing_weights(arch, params)

    OpenClipModel.__name__ = f"OpenClip_{arch.replace('-', '_')}"
    return OpenClipModel


def resolve_open_clip(name: str):
    """The MODELS resolver for open_clip names: ARCH (any architecture) and ARCH:TAG."""
    if name.startswith("timm:"):
        return None
    arch, colon, tag = name.partition(":")
    archs = open_clip_architectures()
    if not colon and arch not in archs:
        return None  # not of this form: the registry says "unknown model"
    if arch not in archs:
        raise UnknownNameError(
            f"unknown open_clip architecture {arch!r} in {name!r}.{did_you_mean(arch, archs)} "
            "See bench list models --pretrained"
        )
    problem = tokenizer_problem(arch)
    if problem:
        raise UnknownNameError(problem)
    if not colon:
        return (_loader(arch, OpenClipParams), f"open_clip {arch} (random init unless model_params sets pretrained)",
                ("finetune",), {"kind": "clip", "family": "open_clip", "arch": arch})  # fmt: skip
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        valid = ", ".join(tags) if tags else "none (use the bare name for a random init)"
        raise UnknownNameError(
            f"open_clip architecture {arch!r} has no pretrained tag {tag!r}.{did_you_mean(tag, tags)} Tags: {valid}"
        )
    return (_loader(arch, _tagged_params(arch, tag)), f"open_clip {arch} with the {tag!r} weights (local HF cache)",
            ("finetune",), {"kind": "clip", "family": "open_clip", "arch": arch, "tag": tag})  # fmt: skip


MODELS.add_resolver(
    Resolver(
        resolve_open_clip,
        candidates=open_clip_architectures,
        hint="or any open_clip architecture as ARCH or ARCH:TAG (bench list models --pretrained)",
    )
)


def pretrained_pairs(pattern: str | None = None) -> list[dict]:
    """open_clip's (architecture, tag) pairs that bench supports, each with where its weights
    would come from and whether they are in the local HF cache (files only, no network)."""
    rows = []
    for arch, tag in open_clip.list_pretrained():
        name = f"{arch}:{tag}"
        if pattern and not (fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(arch, pattern)):
            continue
        if tokenizer_problem(arch):
            continue
        try:
            path, repo, _ = hub_file(arch, tag)
            cached = "yes" if path is not None else "no"
        except WeightsError:
            path, repo, cached = None, "", "url only"
        rows.append({"name": name, "arch": arch, "tag": tag, "repo": repo, "cached": cached, "path": path})
    return rows
