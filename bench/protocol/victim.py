"""A victim: one model bound to its threat setting, its attacked dataset and its control
tasks. It builds the network, turns it into a classifier of the dataset's images (its
preprocessing and, for a CLIP, its zero-shot head) and measures control accuracy, so the
(model name, model overrides) pair is said once, here, instead of at every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bench.core.registry import SETTINGS
from bench.data.base import LabeledDataset, Split, load_dataset
from bench.protocol.settings import pretrained_clip
from bench.protocol.spec import ArtifactSpec


@dataclass(frozen=True, eq=False)
class Victim:
    setting: object  # a registered threat setting (bench/protocol/settings.py)
    model: str
    params: dict  # the model's knobs, as the settings and the pre-training cache take them
    dataset: LabeledDataset
    controls: tuple[str, ...] = ()  # control tasks whose accuracy a defense must keep

    @classmethod
    def of(cls, spec: ArtifactSpec, dataset: LabeledDataset | None = None) -> Victim:
        return cls(
            SETTINGS.get(spec.setting)(),
            spec.model,
            spec.model_params_json,
            dataset if dataset is not None else load_dataset(spec.dataset),
            tuple(spec.control_datasets),
        )

    def build(self, seed: int, progress: Callable[[str], None] | None = None) -> nn.Module:
        """The network before the attack: pre-trained (CLIP settings) or initialised from `seed`."""
        return self.setting.victim(self.model, self.params, self.dataset, seed, progress)

    def classifier(self, net: nn.Module) -> nn.Module:
        """`net` as a classifier of the dataset's images in [0, 1]."""
        return self.setting.classifier(net, self.model, self.params, self.dataset)

    def control_accuracy(self, net: nn.Module, split: str = "test", limit: int | None = None) -> dict[str, float]:
        return self.setting.control_accuracy(net, self.model, self.params, list(self.controls), split=split, limit=limit)

    def fit_attack(self, attack, net: nn.Module, data: Split):
        """Optimise an attack's trigger against this victim (BadCLIP), on the attacker's data."""
        return self.setting.fit_attack(attack, net, self.model, self.params, self.dataset, data)

    def pretrained(self):
        """The pre-trained CLIP this victim starts from (CLIP settings only)."""
        return pretrained_clip(self.model, self.params)
