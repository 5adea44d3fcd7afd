"""Threat settings (methods.md section 1): which victim is attacked, with what loss,
and how it is evaluated. Attacks and defenses talk to a setting, never to a model
class, so the same attack code runs in every setting that supports it."""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass

import torch
from torch import nn

from bench.data.base import LabeledDataset, load_dataset
from bench.metrics import accuracy, predict
from bench.models.clip import ZeroShotClassifier, zeroshot_weights
from bench.models.zoo import model_params
from bench.registry import MODELS, SETTINGS
from bench.train import LossFn, TrainSpec, cross_entropy_loss


@dataclass(frozen=True)
class VictimTraining:
    """How the attacker trains the victim on the poisoned set.

    Defaults measured on tiny-clip/shapes (seed 0): lr 1e-4 x 300 steps left badnets
    at 3% ASR; lr 1e-3 x 300 reached 92% but cut colors zero-shot from 100% to 80%;
    lr 3e-4 x 900 reaches 97% (badnets) / 98% (blended) and keeps colors at 99%.
    """

    steps: int = 900
    lr: float = 3e-4
    batch_size: int = 64
    weight_decay: float = 0.0

    def spec(self, freeze_norm_stats: bool) -> TrainSpec:
        return TrainSpec(
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            freeze_norm_stats=freeze_norm_stats,
        )


class Setting(abc.ABC):
    name: str
    model_kind: str
    default_poison_rate: float
    Params: type[VictimTraining] = VictimTraining
    loss: LossFn = staticmethod(cross_entropy_loss)
    # Whether attack training may update BatchNorm statistics: yes from scratch,
    # no when fine-tuning a pre-trained model.
    attack_updates_norm_stats: bool = False

    def check_model(self, model: str) -> str | None:
        """None if `model` can be a victim here, else the reason it cannot."""
        kind = MODELS.entry(model).extra.get("kind")
        if kind != self.model_kind:
            return f"setting {self.name!r} needs a {self.model_kind} model; {model!r} is a {kind} model"
        return None

    @abc.abstractmethod
    def victim(
        self, model: str, overrides: dict | None, dataset: LabeledDataset, seed: int, progress=None
    ) -> nn.Module:
        """The model before the attack, as a classifier of [0, 1] images."""

    def control_accuracy(
        self, victim: nn.Module, model: str, overrides: dict | None, datasets: list[str]
    ) -> dict[str, float]:
        """Accuracy on tasks outside the attacked one (empty where the setting has none)."""
        return {}


_CLIPS: dict[tuple[str, str], object] = {}


def pretrained_clip(model: str, overrides: dict | None, progress=None):
    """The pre-trained CLIP of a registered clip model (cached per process; trained
    and cached on disk on first use, reporting its steps to `progress`)."""
    key = (model, json.dumps(overrides or {}, sort_keys=True))
    if key not in _CLIPS:
        steps = model_params(model, overrides)
        total = getattr(steps, "pretrain_steps", None)

        def on_step(step: int, loss: float) -> None:
            if progress is not None and step % 10 == 0:
                progress(f"pre-training {model} (once, then cached) {step}/{total} loss {loss:.3f}")

        clip, _info = MODELS.get(model).load(steps, on_step=on_step)
        _CLIPS[key] = clip
    return _CLIPS[key]


_HEADS: dict[tuple[str, str, str], torch.Tensor] = {}


def zeroshot_head(model: str, overrides: dict | None, dataset: LabeledDataset, progress=None) -> torch.Tensor:
    """The zero-shot head of (model, dataset), built once per process."""
    key = (model, json.dumps(overrides or {}, sort_keys=True), dataset.name)
    if key not in _HEADS:
        clip = pretrained_clip(model, overrides, progress)
        _HEADS[key] = zeroshot_weights(clip, dataset.classnames, dataset.templates, clip.context_length)
    return _HEADS[key]


@SETTINGS.register("finetune", "CLIP image encoder + frozen zero-shot head, fine-tuned with cross-entropy")
class FinetuneSetting(Setting):
    name = "finetune"
    model_kind = "clip"
    default_poison_rate = 0.1

    def victim(self, model, overrides, dataset, seed, progress=None):
        clip = pretrained_clip(model, overrides, progress)
        return ZeroShotClassifier.from_clip(clip, zeroshot_head(model, overrides, dataset)).eval()

    def control_accuracy(self, victim, model, overrides, datasets):
        """Zero-shot top-1 of the (possibly attacked/defended) image encoder on each
        control dataset's test split, through that dataset's own zero-shot head."""
        out = {}
        for name in datasets:
            ds = load_dataset(name)
            clf = victim.with_head(zeroshot_head(model, overrides, ds))
            out[name] = accuracy(predict(clf, ds.test.x), ds.test.labels)
        return out


@dataclass(frozen=True)
class ScratchTraining(VictimTraining):
    steps: int = 600
    lr: float = 3e-3
    batch_size: int = 128
    weight_decay: float = 5e-4


@SETTINGS.register("supervised", "timm classifier trained from scratch with cross-entropy on the poisoned set")
class SupervisedSetting(Setting):
    name = "supervised"
    model_kind = "classifier"
    default_poison_rate = 0.1
    Params = ScratchTraining
    attack_updates_norm_stats = True

    def victim(self, model, overrides, dataset, seed, progress=None):
        return MODELS.get(model).build(model_params(model, overrides), dataset.num_classes, seed)
