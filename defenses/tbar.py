"""TBAR: Trigger removal by Backdoor ARithmetic (Abdelraheem et al. 2025).

1. D = round(data_fraction * |train|) of the defender's clean samples; every x in D
   whose label is not the target gets the trigger and the target label
   (variant `mix` also keeps the same number of clean samples with true labels).
2. Fine-tune the backdoored model on that set with the setting's loss -> theta_T.
3. tau = theta_T - theta_bd over the fine-tuned float parameters.
4. theta(a) = theta_bd - a * tau on a grid of a.
5. Tuning rule, on the validation split only: a* = argmin ASR subject to
   CA >= kappa * CA(theta_bd); ties go to the smaller a. The grid is refined by
   bisection between a* and its infeasible neighbour (`refine_steps` times), so a* moves
   with the curve instead of jumping by grid steps (methods.md, tbar step 5). Test
   metrics are reported at a*, and the whole validation curve is kept in the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge

from bench.core import taskvec, tradeoff
from bench.core.knobs import Count, Fraction, Index, NonNegative, Positive
from bench.core.metrics import accuracy, attack_success_rate, predict
from bench.core.registry import DEFENSES
from bench.core.splits import subseed
from bench.core.tradeoff import KnobSpec
from bench.core.train import TrainSpec
from defenses.base import DataMeter, Defense, DefenseContext, DefenseOutput, TrainingSet


@dataclass(frozen=True)
class TbarParams:
    data_fraction: Fraction = 0.02
    variant: Literal["triggered", "mix"] = "triggered"
    steps: Count = 50
    lr: Positive = 1e-4
    batch_size: Count = 32
    alpha_min: NonNegative = 0.0
    alpha_max: Positive = 4.0
    alpha_points: Annotated[int, Ge(2)] = 21
    kappa: Fraction = 0.95
    refine_steps: Index = 5  # bisections of alpha where the curve crosses kappa * CA_bd
    # Keep tau in the trial folder, so `bench analyze alpha` can redraw the curves on any
    # split without retraining.
    save_vector: bool = True

    def __post_init__(self) -> None:
        if self.alpha_points < 2 or self.alpha_max <= self.alpha_min or self.alpha_min < 0:
            raise ValueError("the alpha grid needs alpha_points >= 2 and 0 <= alpha_min < alpha_max")
        if not 0 < self.kappa <= 1:
            raise ValueError(f"kappa must be in (0, 1], got {self.kappa}")

    def alphas(self) -> list[float]:
        return torch.linspace(self.alpha_min, self.alpha_max, self.alpha_points).tolist()


def select_alpha(curve: list[dict[str, float]], ca_reference: float, kappa: float) -> int:
    """Index of a* on a curve sorted by alpha: the smallest ASR among points with
    CA >= kappa * ca_reference; ties (and an empty feasible set) go to the smallest alpha."""
    return tradeoff.select(curve, ca_reference, kappa)


def trigger_loss(ctx: DefenseContext):
    """The setting's own loss, except in `contrastive`: there every caption of the
    trigger set names the same class, so the in-batch CLIP loss has no negative that
    points away from t (its gradient towards t cancels). TBAR then uses the CLIP
    loss's image-to-text term against one caption set per class instead: cross-entropy
    over the victim's own zero-shot head (its text tower stays frozen)."""
    if not ctx.setting.caption_targets:
        return ctx.setting.loss

    def head_loss(model, batch):
        x, y = batch
        return F.cross_entropy(ctx.classify(model)(x), y)

    return head_loss


def trigger_set(ctx: DefenseContext, fraction: float, variant: str) -> TrainingSet:
    """Step 1: the defender's triggered (and, for `mix`, clean) fine-tuning set."""
    assert ctx.known is not None
    clean, idx = ctx.clean_subset(fraction)
    targets = ctx.known.targets(clean.labels)
    keep = clean.labels != targets
    x = clean.x
    # The setting turns labels into its loss's targets (class ids, or caption tokens
    # naming the class in the contrastive setting).
    encode = ctx.setting.encode_labels if not ctx.setting.caption_targets else (lambda y, *_: y)
    trig_y = encode(targets[keep], ctx.dataset, ctx.seed, ctx.model)
    trig = TrainingSet(ctx.known.apply(x[keep]), trig_y, idx[keep], torch.ones(int(keep.sum()), dtype=torch.bool))
    if variant == "triggered":
        return trig
    # mix: as many clean samples (with true labels) as triggered ones
    n = len(trig)
    clean_y = encode(clean.labels[:n], ctx.dataset, subseed(ctx.seed, "tbar-mix-clean"), ctx.model)
    return TrainingSet.concat(trig, TrainingSet(x[:n], clean_y, idx[:n], torch.zeros(n, dtype=torch.bool)))


VECTOR_FILE = "trigger_vector.safetensors"


@torch.no_grad()
def val_point(
    model, ctx: DefenseContext, x_val: torch.Tensor, x_val_trig: torch.Tensor, t_val: torch.Tensor
) -> dict[str, float]:
    clf = ctx.classify(model)
    return {
        "ca": accuracy(predict(clf, x_val), ctx.val.labels),
        "asr": attack_success_rate(predict(clf, x_val_trig), ctx.val.labels, t_val),
    }


@DEFENSES.register(
    "tbar",
    "subtract the trigger task vector, scale chosen on validation (known trigger)",
    settings=("finetune", "supervised", "contrastive"),
)
class Tbar(Defense):
    data_used = "triggered (its known trigger, labelled with the target)"
    knows = "the trigger and the target"
    Params = TbarParams
    uses_attack_knowledge = True

    def deviations_in(self, setting: str) -> list[str]:
        out = super().deviations_in(setting)
        if setting == "contrastive":
            out.append(
                "contrastive: the trigger fine-tune uses cross-entropy over the victim's zero-shot head (the CLIP "
                "loss's image-to-text term against one caption set per class) instead of the in-batch CLIP loss, "
                "whose gradient towards the target cancels when every caption names it"
            )
        return out

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: TbarParams = self.params
        model = ctx.model
        meter = DataMeter()
        data = trigger_set(ctx, p.data_fraction, p.variant)

        ctx.progress(f"tbar: trigger fine-tune on {len(data)} samples")
        # methods.md steps 2-3: only the image encoder is fine-tuned (the head and,
        # in the contrastive setting, the text tower stay frozen), so tau is the encoder's.
        encoder = {id(q) for q in ctx.setting.encoder_parameters(model)}
        for param in model.parameters():
            param.requires_grad_(id(param) in encoder)
        theta_bd = taskvec.trainable_params(model)
        torch.manual_seed(ctx.seed)
        spec = TrainSpec(steps=p.steps, lr=p.lr, batch_size=p.batch_size, schedule="constant")
        batches = data.stream(p.batch_size, ctx.generator(), meter)
        tau = taskvec.finetune_vector(model, trigger_loss(ctx), batches, spec, base=theta_bd)
        if p.save_vector and ctx.out_dir is not None:
            from safetensors.torch import save_file

            ctx.out_dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in tau.items()}, ctx.out_dir / VECTOR_FILE)

        x_val = ctx.val.x
        t_val = ctx.known.targets(ctx.val.labels)
        x_val_trig = ctx.known.apply(x_val)
        meter.val_clean = len(x_val)
        meter.val_triggered = int((ctx.val.labels != t_val).sum())

        def at(a: float) -> None:
            taskvec.load_params(model, taskvec.apply(theta_bd, tau, -a))

        def measure(a: float) -> dict:
            ctx.progress(f"tbar: alpha {a:.3f}")
            at(a)
            return val_point(model, ctx, x_val, x_val_trig, t_val)

        # alpha = 0 is the backdoored model: the retention base and the curve's first point
        curve = [{"knob": 0.0, **measure(0.0)}]
        curve += [{"knob": round(a, 6), **measure(a)} for a in p.alphas() if a > 0]
        ca_bd = curve[0]["ca"]
        curve = tradeoff.refine(curve, ca_bd, [p.kappa], measure, p.refine_steps)
        best = select_alpha(curve, ca_bd, p.kappa)
        a_star = curve[best]["knob"]
        at(a_star)
        return DefenseOutput(
            model=model,
            meter=meter,
            curve=curve,
            extra={"alpha": a_star, "tau_norm": taskvec.norm(tau), "val_at_alpha": curve[best], "val_ca_backdoored": ca_bd},
            knob=KnobSpec("alpha", [pt["knob"] for pt in curve], at, chosen=a_star, identity=0.0, continuous=True),
            curve_uses_attack_trigger=self.uses_attack_knowledge,
        )


@dataclass(frozen=True)
class TbarMixParams(TbarParams):
    variant: Literal["triggered", "mix"] = "mix"


@DEFENSES.register(
    "tbar-mix",
    "tbar whose trigger fine-tune also sees as many clean samples with true labels",
    settings=("finetune", "supervised", "contrastive"),
)
class TbarMix(Tbar):
    data_used = "triggered (known trigger) and clean"
    knows = "the trigger and the target"
    Params = TbarMixParams
