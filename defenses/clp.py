"""CLP: Channel Lipschitzness-based Pruning (Zheng, Tang, Li & Liu, ECCV 2022,
"Data-free backdoor removal based on channel Lipschitzness"; reference code: the
public rkteddy/channel-Lipschitzness-based-pruning repository, defense.py `CLP`, and
BackdoorBench's port, defense/clp.py). Data-free: it reads the weights only.

For every convolution followed by a BatchNorm (paired in module order, as the
reference pairs them), channel k's upper bound on its Lipschitz constant (UCLC) is the
spectral norm of its BN-scaled kernel,

    UCLC_k = sigma_max( W_k.reshape(C_in, kh * kw) * |gamma_k / sqrt(running_var_k)| ),

and within each layer the channels with UCLC_k > mean + u * std (std: the unbiased
sample standard deviation, torch's default) are pruned by setting that BN channel's
weight and bias to 0. u = 3 is the paper's default.

ViT towers (no BatchNorm; the reference is CNN-only): the units are each transformer
block's MLP hidden units, the first MLP linear's outputs (open_clip `mlp.c_fc`, timm
`mlp.fc1`); a unit's Lipschitz constant is exactly the L2 norm of its weight row
(the spectral norm of a 1 x C_in matrix, as the reference's commented-out MLP variant
computes it, there scaled by a following BatchNorm1d that ViTs do not have), and a
pruned unit has its row and bias set to 0 (GELU(0) = 0: the unit is silenced).
Only the image encoder is pruned (a CLIP's image tower; the whole timm classifier).

Strength knob: u, larger prunes less, swept from the smallest u that prunes nothing
down to `u_min` (BackdoorBench's sweep: 0 to 10, 21 points) and bisected by the
engine; the defense's own choice is the paper's u = 3. No data is consumed and
nothing is tuned: the meter stays at zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Ge
from torch import nn

from bench.core.knobs import NonNegative, Positive
from bench.core.registry import DEFENSES
from bench.core.tradeoff import KnobSpec
from defenses.base import DataMeter, Defense, DefenseContext, DefenseOutput


@dataclass(frozen=True)
class ClpParams:
    u: NonNegative = 3.0
    u_min: NonNegative = 0.0  # the trade-off curve's grid (BackdoorBench: u_min 0, u_max 10, u_num 21)
    u_max: Positive = 10.0
    u_points: Annotated[int, Ge(2)] = 21

    def __post_init__(self) -> None:
        if self.u_points < 2 or self.u_max <= self.u_min:
            raise ValueError("the u grid needs u_points >= 2 and u_min < u_max")

    def grid(self) -> list[float]:
        """Weakest (largest u) first."""
        return [round(v, 6) for v in torch.linspace(self.u_max, self.u_min, self.u_points).tolist()]


@dataclass
class Layer:
    """One prunable layer: its channel bounds and the tensors that pruning zeroes."""

    name: str
    lips: torch.Tensor  # UCLC per channel/unit
    tensors: list[torch.Tensor]  # parameters whose row k is zeroed to prune unit k
    saved: list[torch.Tensor]

    def threshold(self, u: float) -> torch.Tensor:
        return self.lips.mean() + u * self.lips.std()

    def pruned(self, u: float) -> torch.Tensor:
        """Boolean mask of the units pruned at u (a strict '>' as the reference)."""
        return self.lips > self.threshold(u)


def conv_bn_lipschitz(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """UCLC of each output channel of conv -> bn (the reference's formula; its std is
    sqrt(running_var), without BN's epsilon)."""
    w = conv.weight.detach().float().cpu()
    scale = (bn.weight.detach().float().cpu() / bn.running_var.detach().float().cpu().sqrt()).abs()
    mats = w.reshape(w.shape[0], w.shape[1], -1) * scale.view(-1, 1, 1)
    return torch.linalg.matrix_norm(mats, ord=2)  # the largest singular value per channel


def linear_lipschitz(linear: nn.Linear) -> torch.Tensor:
    """Lipschitz constant of each output unit of a linear layer: its weight row's L2 norm."""
    return linear.weight.detach().float().cpu().norm(dim=1)


def prunable_layers(encoder: nn.Module) -> list[Layer]:
    layers: list[Layer] = []
    conv: nn.Conv2d | None = None
    for name, m in encoder.named_modules():
        if isinstance(m, nn.Conv2d):
            conv = m
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if conv is None or m.weight is None or m.running_var is None or conv.out_channels != m.num_features:
                continue
            tensors = [m.weight, m.bias]
            layers.append(Layer(name, conv_bn_lipschitz(conv, m), tensors, [t.detach().clone() for t in tensors]))
    if layers:
        return layers
    for name, m in encoder.named_modules():  # ViT towers: each block's first MLP linear
        first = getattr(m, "c_fc", None)
        first = getattr(m, "fc1", None) if first is None else first
        if name.endswith("mlp") and isinstance(first, nn.Linear):
            tensors = [t for t in (first.weight, first.bias) if t is not None]
            layers.append(Layer(f"{name}.c_fc" if hasattr(m, "c_fc") else f"{name}.fc1", linear_lipschitz(first),
                                tensors, [t.detach().clone() for t in tensors]))  # fmt: skip
    return layers


def free_u(layers: list[Layer]) -> float:
    """The smallest u that prunes nothing: every channel at or under mean + u * std."""
    zs = [float(((lay.lips - lay.lips.mean()) / lay.lips.std()).max()) for lay in layers if len(lay.lips) > 1]
    zs = [z for z in zs if z == z]  # a layer whose channels are all equal has std 0 (NaN z): nothing to prune
    return (max(zs) if zs else 0.0) + 1e-6


@DEFENSES.register(
    "clp",
    "data-free: prune channels whose Lipschitz upper bound is a within-layer outlier (Zheng et al. 2022)",
    settings=("finetune", "supervised", "contrastive"),
)
class Clp(Defense):
    data_used = "none (data-free)"
    knows = "nothing"
    Params = ClpParams
    reference = {"u": 3.0}  # noqa: RUF012

    def deviations_in(self, setting: str) -> list[str]:
        out = super().deviations_in(setting)
        if getattr(self, "_linear_units", False):
            out.append(
                "ViT tower: the reference is for conv+BN networks; here each block's MLP hidden units are pruned, "
                "bounded by the first MLP linear's row norm"
            )
        return out

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: ClpParams = self.params
        model = ctx.model
        encoder = getattr(model, "visual", model)
        layers = prunable_layers(encoder)
        if not layers:
            raise ValueError(f"clp: no conv+BatchNorm pair or transformer MLP in {type(encoder).__name__}")
        self._linear_units = layers[0].tensors[0].ndim == 2  # a ViT tower's MLP units (see deviations_in)

        def at(u) -> None:
            u = float(u)
            with torch.no_grad():
                for lay in layers:
                    cut = lay.pruned(u)
                    for t, saved in zip(lay.tensors, lay.saved, strict=True):
                        t.copy_(saved)
                        t[cut.to(t.device)] = 0

        u0 = free_u(layers)
        values = [u0, *(u for u in p.grid() if u < u0)]
        at(p.u)
        per_layer = {lay.name: int(lay.pruned(p.u).sum()) for lay in layers}
        units = sum(len(lay.lips) for lay in layers)
        pruned = sum(per_layer.values())
        return DefenseOutput(
            model=model,
            meter=DataMeter(),  # data-free
            extra={
                "layers": len(layers),
                "units": units,
                "pruned": pruned,
                "pruned_fraction": pruned / units,
                "pruned_per_layer": {k: v for k, v in per_layer.items() if v},
                "u_prunes_nothing_above": round(u0, 6),
            },
            knob=KnobSpec("u", values, at, chosen=p.u, identity=u0, continuous=True),
        )
