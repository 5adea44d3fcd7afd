"""Threat settings (methods.md section 1): which victim is attacked, with what loss,
and how it is evaluated. Attacks and defenses talk to a setting, never to a model
class, so the same attack code runs in every setting that supports it."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import lru_cache

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
    """How the attacker trains the victim on the poisoned set."""

    steps: int = 300
    lr: float = 1e-4
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
    def victim(self, model: str, overrides: dict | None, dataset: LabeledDataset, seed: int) -> nn.Module:
        """The model before the attack, as a classifier of [0, 1] images."""

    def control_accuracy(
        self, victim: nn.Module, model: str, overrides: dict | None, datasets: list[str]
    ) -> dict[str, float]:
        """Accuracy on tasks outside the attacked one (empty where the setting has none)."""
        return {}


@lru_cache(maxsize=8)
def _clip(model: str, overrides_key: str):
    import json

    entry = MODELS.get(model)
    clip, _info = entry.load(model_params(model, json.loads(overrides_key)))
    return clip


def pretrained_clip(model: str, overrides: dict | None):
    """The pre-trained CLIP of a registered clip model (cached per process)."""
    import json

    return _clip(model, json.dumps(overrides or {}, sort_keys=True))


_HEADS: dict[tuple[str, str, str], torch.Tensor] = {}


def zeroshot_head(model: str, overrides: dict | None, dataset: LabeledDataset) -> torch.Tensor:
    """The zero-shot head of (model, dataset), built once per process."""
    import json

    key = (model, json.dumps(overrides or {}, sort_keys=True), dataset.name)
    if key not in _HEADS:
        clip = pretrained_clip(model, overrides)
        _HEADS[key] = zeroshot_weights(clip, dataset.classnames, dataset.templates, clip.context_length)
    return _HEADS[key]


@SETTINGS.register("finetune", "CLIP image encoder + frozen zero-shot head, fine-tuned with cross-entropy")
class FinetuneSetting(Setting):
    name = "finetune"
    model_kind = "clip"
    default_poison_rate = 0.1

    def victim(self, model, overrides, dataset, seed):
        clip = pretrained_clip(model, overrides)
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

    def victim(self, model, overrides, dataset, seed):
        return MODELS.get(model).build(model_params(model, overrides), dataset.num_classes, seed)
