"""Prunable units of a victim, used by fine-pruning.

methods.md: the units are the last block's MLP hidden units in a ViT and the last
convolutional stage's output channels in a CNN. A unit is switched off by a
forward hook that multiplies its channel by a mask, so pruning never edits the
weights and a mask can be changed or removed at any time.

In a ViT only the tokens that the tower pools reach its output: with open_clip's
default `pool_type='tok'` (and timm's `global_pool='token'`) that is the class token
alone, so a last-block unit's activity is measured there (`token_pool`); with average
pooling, over the patch tokens; with an attention pooler or no pooling, over all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bench.core import runtime


def unit_layer(model: nn.Module) -> nn.Module:
    """The module whose output channels (dim 1) are the units of `model`."""
    for path in ("visual.layer4", "net.layer4", "layer4"):  # open_clip ModifiedResNet, timm ResNet
        mod = model
        try:
            for part in path.split("."):
                mod = getattr(mod, part)
        except AttributeError:
            continue
        return mod
    for path in ("visual.transformer.resblocks", "net.blocks"):  # open_clip ViT, timm ViT
        mod = model
        try:
            for part in path.split("."):
                mod = getattr(mod, part)
        except AttributeError:
            continue
        last = mod[-1]
        # the hidden units after their non-linearity (open_clip: mlp.gelu, timm: mlp.act)
        return last.mlp.gelu if hasattr(last.mlp, "gelu") else last.mlp.act
    raise ValueError(f"no prunable layer known for {type(model).__name__}; add its path to defenses/units.py")


def _vit(model: nn.Module) -> nn.Module | None:
    """The ViT tower of `model` (open_clip or timm), or None."""
    from open_clip.transformer import VisionTransformer as OpenClipViT
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    for mod in (getattr(model, "visual", None), getattr(model, "net", None), model):
        if isinstance(mod, (OpenClipViT, TimmViT)):
            return mod
    return None


def token_pool(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How a ViT tower pools its last block's tokens into the output, as a function of
    (N, L, C) hidden states -> (N, C); None for a CNN or where every token counts."""
    vit = _vit(model)
    if vit is None:
        return None
    if hasattr(vit, "transformer"):  # open_clip
        if getattr(vit, "attn_pool", None) is not None:
            return None
        batch_first = getattr(vit.transformer, "batch_first", True)
        pool, prefix = getattr(vit, "pool_type", "tok"), 1
    else:  # timm
        batch_first, pool, prefix = True, getattr(vit, "global_pool", "token"), getattr(vit, "num_prefix_tokens", 1)
        pool = {"token": "tok", "avg": "avg"}.get(pool, "none")

    def reduce(h: torch.Tensor) -> torch.Tensor:
        h = h if batch_first else h.transpose(0, 1)
        if pool == "tok":
            return h[:, 0]
        if pool == "avg":
            return h[:, prefix:].mean(1)
        return h.mean(1)

    return reduce


def channel_view(mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # conv maps are (N, C, H, W); ViT MLP hidden states are (N, L, C) or (L, N, C)
    return mask.view(1, -1, 1, 1) if out.ndim == 4 else mask.view(*([1] * (out.ndim - 1)), -1)


class UnitMask:
    """A per-unit multiplicative mask installed as a forward hook."""

    def __init__(self, layer: nn.Module, n_units: int):
        self.mask = torch.ones(n_units)
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, out):
        return out * channel_view(self.mask.to(device=out.device, dtype=out.dtype), out)

    def remove(self) -> None:
        self.handle.remove()


@torch.no_grad()
def unit_activations(
    forward: Callable[[torch.Tensor], torch.Tensor],
    layer: nn.Module,
    x: torch.Tensor,
    batch_size: int = 500,
    tokens: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean activation of each unit of `layer` while `forward` runs over the images x;
    `tokens` (see `token_pool`) first reduces a ViT's (N, L, C) hidden states to the
    tokens that reach the output."""
    sums: list[torch.Tensor] = []
    chunk_len = [0]

    def hook(module, inputs, out):
        if tokens is not None and out.ndim == 3:
            out = tokens(out)
        ch = 1 if out.ndim == 4 else out.ndim - 1
        dims = [d for d in range(out.ndim) if d != ch]
        sums.append(out.float().mean(dim=dims) * chunk_len[0])

    device = runtime.model_device(forward) if isinstance(forward, nn.Module) else torch.device("cpu")
    handle = layer.register_forward_hook(hook)
    try:
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            chunk_len[0] = len(chunk)
            forward(runtime.to_device(chunk, device))
    finally:
        handle.remove()
    return (torch.stack(sums).sum(0) / len(x)).cpu()
