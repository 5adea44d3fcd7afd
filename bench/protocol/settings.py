"""Threat settings (methods.md section 1): which victim is attacked, with what loss,
and how it is evaluated. Attacks and defenses talk to a setting, never to a model
class, so the same attack code runs in every setting that supports it."""

from __future__ import annotations

import abc
import copy
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import torch
from annotated_types import Ge, Lt
from torch import nn

from bench.core import runtime
from bench.core.augment import AUGMENTATIONS
from bench.core.knobs import Count, Index, NonNegative, Positive
from bench.core.metrics import accuracy, predict
from bench.core.registry import DATASETS, MODELS, SETTINGS
from bench.core.splits import defender_split, subseed
from bench.core.train import LossFn, TrainSpec, clip_contrastive_loss, cross_entropy_loss, frozen, index_batches
from bench.data.base import LabeledDataset, Split, load_dataset
from bench.models.clip import ZeroShotClassifier, clip_inputs, tokenize, zeroshot_weights
from bench.models.zoo import model_params

if TYPE_CHECKING:
    from bench.protocol.spec import ArtifactSpec


@dataclass(frozen=True)
class VictimTraining:
    """How the attacker trains the victim on the poisoned set (`finetune` setting).

    The shape of the schedule is the standard CLIP fine-tuning recipe of task-arithmetic
    work (Ilharco et al. 2023, "Editing models with task arithmetic", which TBAR builds
    on): AdamW, weight decay 0.1, linear warmup then cosine decay. The learning rate and
    length are scaled to an 8M-parameter CLIP pre-trained at lr 2e-3 (the recipe's 1e-5
    is for ViT-B pre-trained at 5e-4); docs/world.md, "Threat settings and attack training regimes", lists the
    measurements behind them.
    """

    epochs: Positive = 12.0
    lr: Positive = 3e-4
    batch_size: Count = 64
    weight_decay: NonNegative = 0.1
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_fraction: Annotated[float, Ge(0), Lt(1)] = 0.1
    augment: Literal["none", "crop-flip"] = "none"
    crop_padding: Index = 4  # crop-flip: zero padding before the random crop (torchvision's RandomCrop padding)
    steps: Count | None = None  # a fixed number of optimiser steps instead of epochs (paper recipes count steps)

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError("epochs and lr must be > 0 and batch_size >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 when given, got {self.steps}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")

    def n_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_train / self.batch_size))

    def spec(self, n_train: int, freeze_norm_stats: bool) -> TrainSpec:
        steps = self.n_steps(n_train)
        return TrainSpec(
            steps=steps,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            warmup_steps=round(self.warmup_fraction * steps),
            optimizer=self.optimizer,
            freeze_norm_stats=freeze_norm_stats,
        )


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
                progress(f"pre-training {model} (once, then cached) step {step}/{total} loss {loss:.3f}")

        def on_stage(source: str) -> None:
            if progress is not None:
                progress(f"{model}: {source}")

        clip, _info = MODELS.get(model).load(steps, on_step=on_step, on_stage=on_stage)
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


@dataclass
class AttackTrainingSet:
    """The attacker's poisoned training data, as batches for the setting's loss."""

    tensors: tuple[torch.Tensor, ...]  # aligned along dim 0: (x, y) or (x, tokens)
    info: dict  # poison rate and counts, for the artifact sidecar
    # An attack that poisons each batch afresh (attacks.base.Attack.batch_poisoner)
    per_batch: Callable | None = None

    def __len__(self) -> int:
        return len(self.tensors[0])

    def batches(self, batch_size: int, generator: torch.Generator, augment: str = "none", padding: int = 4):
        """Shuffled batches; images (the first tensor) augmented per batch, after poisoning."""
        fn = AUGMENTATIONS[augment]
        if fn is not None:
            fn = functools.partial(fn, padding=padding)
        for idx in index_batches(len(self), batch_size, generator):
            batch = tuple(t[idx] for t in self.tensors)
            if self.per_batch is not None:
                batch = self.per_batch(*batch, generator)
            yield batch if fn is None else (fn(batch[0], generator), *batch[1:])


class Setting(abc.ABC):
    name: str
    model_kind: str
    default_poison_rate: float
    Params: type[VictimTraining] = VictimTraining
    loss: LossFn = staticmethod(cross_entropy_loss)
    # Whether attack training may update BatchNorm statistics: yes from scratch,
    # no when fine-tuning a pre-trained model.
    attack_updates_norm_stats: bool = False
    # Whether the loss's targets are captions (labels go through encode_labels).
    caption_targets: bool = False

    def check_model(self, model: str) -> str | None:
        """None if the model is of the kind this setting attacks, else why not."""
        kind = MODELS.entry(model).extra.get("kind")
        if kind != self.model_kind:
            return f"setting {self.name!r} needs a {self.model_kind} model; {model!r} is a {kind} model"
        return None

    def check_cell(self, model: str, dataset: str) -> str | None:
        """None if (model, dataset) can be attacked here, else the reason it cannot."""
        return self.check_model(model)

    @abc.abstractmethod
    def victim(
        self, model: str, overrides: dict | None, dataset: LabeledDataset, seed: int, progress=None
    ) -> nn.Module:
        """The model before the attack."""

    def classifier(self, victim: nn.Module, model: str, overrides: dict | None, dataset: LabeledDataset) -> nn.Module:
        """The victim as a classifier of [0, 1] images of `dataset` (for CA/ASR)."""
        return victim

    def encode_labels(
        self, labels: torch.Tensor, dataset: LabeledDataset, seed: int, victim: nn.Module
    ) -> torch.Tensor:
        """Class labels as the targets of this setting's loss (here: the labels)."""
        return labels

    def encoder_parameters(self, victim: nn.Module) -> list[nn.Parameter]:
        """The image encoder's parameters: what TBAR fine-tunes and subtracts. A
        classifier's head (timm's get_classifier) is excluded."""
        head = {id(p) for p in getattr(victim, "head_parameters", list)()}
        return [p for p in victim.parameters() if id(p) not in head]

    def control_accuracy(
        self,
        victim: nn.Module,
        model: str,
        overrides: dict | None,
        datasets: list[str],
        split: str = "test",
        limit: int | None = None,
    ) -> dict[str, float]:
        """Accuracy on tasks outside the attacked one (empty where the setting has none),
        on `split` of each control dataset (its first `limit` images when given)."""
        return {}

    def _control(self, classify, datasets: list[str], split: str, limit: int | None) -> dict[str, float]:
        out = {}
        for name in datasets:
            ds = load_dataset(name)
            data = ds.split(split)
            n = len(data) if limit is None else min(limit, len(data))
            out[name] = accuracy(predict(classify(ds), data.images[:n].float().div_(255)), data.labels[:n])
        return out

    def attack_training_set(self, dataset: LabeledDataset, attack, spec: ArtifactSpec) -> AttackTrainingSet:
        """Labelled settings: the attacker's share of the train split, poisoned."""
        _, attacker_idx = defender_split(len(dataset.train), spec.defender_fraction, spec.seed)
        data = dataset.train.subset(attacker_idx)
        dynamic = attack.batch_poisoner(dataset.num_classes, self.default_poison_rate)
        if dynamic is not None:
            rate = attack.poison_rate(data.labels, self.default_poison_rate)
            info = {"rate": rate, "n_train": len(data), "dynamic": True}
            return AttackTrainingSet((data.x, data.labels), info, per_batch=dynamic)
        ps = attack.poison(
            data.x, data.labels, dataset.num_classes, self.default_poison_rate, subseed(spec.seed, "poison")
        )
        info = {
            "rate": attack.poison_rate(data.labels, self.default_poison_rate),
            "n_poisoned": len(ps.poisoned),
            "n_train": len(ps.y),
            **{f"n_{k}": len(v) for k, v in ps.other.items()},
        }
        return AttackTrainingSet((ps.x, ps.y), info)

    def fit_attack(
        self, attack, victim: nn.Module, model: str, overrides: dict | None, dataset: LabeledDataset, clean: Split
    ) -> dict:
        """Optimise an attack's trigger against the victim's own embeddings (BadCLIP)."""
        clf = self.classifier(victim, model, overrides, dataset)
        if not isinstance(clf, ZeroShotClassifier):
            raise ValueError(f"setting {self.name!r} has no CLIP embeddings to optimise a trigger against")
        with frozen(victim.parameters()):  # gradients flow to the trigger only
            return attack.fit(clf.features, clf.head, clean.x, clean.labels)


@SETTINGS.register("finetune", "CLIP image encoder + frozen zero-shot head, fine-tuned with cross-entropy")
class FinetuneSetting(Setting):
    name = "finetune"
    model_kind = "clip"
    default_poison_rate = 0.1

    def victim(self, model, overrides, dataset, seed, progress=None):
        clip = pretrained_clip(model, overrides, progress)
        return runtime.place(ZeroShotClassifier.from_clip(clip, zeroshot_head(model, overrides, dataset)).eval())

    def control_accuracy(self, victim, model, overrides, datasets, split="test", limit=None):
        """Zero-shot top-1 of the (possibly attacked/defended) image encoder on each
        control dataset, through that dataset's own zero-shot head."""
        return self._control(lambda ds: victim.with_head(zeroshot_head(model, overrides, ds)), datasets, split, limit)


@dataclass(frozen=True)
class ScratchTraining(VictimTraining):
    """From-scratch training of the supervised victim, after BackdoorBench's CIFAR-10
    regime (config/attack/prototype/cifar10.yaml: batch 128, weight decay 5e-4,
    CosineAnnealingLR over the run, RandomCrop(32, padding=4) and RandomHorizontalFlip
    after poisoning; 100 epochs of SGD at lr 0.01). Three deviations, each measured on
    scenes with tiny-resnet (docs/world.md, "Threat settings and attack training regimes"): AdamW at lr 3e-3
    instead of SGD at 0.01, which does not train a 0.33M-parameter network (13.8% CA
    after 20 epochs; SGD at 0.1: 31% after 10); 30 epochs instead of 100 (CA has
    plateaued by epoch 27); crop padding 2 instead of 4 (with 4, BadNets reaches 5% ASR
    at 82% CA; with 2, 98% at 83%; without crops CA falls to 63%)."""

    epochs: Positive = 30.0
    lr: Positive = 3e-3
    batch_size: Count = 128
    weight_decay: NonNegative = 5e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_fraction: Annotated[float, Ge(0), Lt(1)] = 0.0
    augment: Literal["none", "crop-flip"] = "crop-flip"
    crop_padding: Index = 2


@SETTINGS.register("supervised", "timm classifier trained from scratch with cross-entropy on the poisoned set")
class SupervisedSetting(Setting):
    name = "supervised"
    model_kind = "classifier"
    default_poison_rate = 0.1
    Params = ScratchTraining
    attack_updates_norm_stats = True

    def victim(self, model, overrides, dataset, seed, progress=None):
        return runtime.place(MODELS.get(model).build(model_params(model, overrides), dataset.num_classes, seed))


# ---------------------------------------------------------------- contrastive


@dataclass(frozen=True)
class ContrastiveTraining(VictimTraining):
    """The whole CLIP fine-tuned with the CLIP loss: AdamW, weight decay 0.1, warmup then
    cosine (the recipe of CLIP fine-tuning, as in `finetune`). Measured on
    tiny-clip/shapes, badnets at p = 1%: lr 1e-4 x 300 steps gave 0.1% ASR, 5e-4 x 1000
    gave 2.5%, 1e-3 x 2000 gave 55%: at this scale a 1% poison needs a long schedule."""

    epochs: Positive = 32.0
    lr: Positive = 1e-3
    batch_size: Count = 128
    weight_decay: NonNegative = 0.1
    corpus_size: Count = 8000  # generated image-caption pairs, disjoint from pre-training


def clip_pair_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The CLIP loss on a batch of (images in [0, 1], caption tokens)."""
    x, tokens = batch
    model.logit_scale.data.clamp_(0, math.log(100))
    return clip_contrastive_loss(
        model.encode_image(clip_inputs(model, x)), model.encode_text(tokens), model.logit_scale
    )


@SETTINGS.register("contrastive", "whole CLIP fine-tuned with the CLIP loss on poisoned image-caption pairs")
class ContrastiveSetting(Setting):
    """The victim is the whole CLIP; the attacker fine-tunes both towers on a
    generated caption corpus in which p = 1% of pairs are triggered images whose
    caption names the target class through the dataset's templates. CA and ASR are
    zero-shot, through a head built from the victim's own (fine-tuned) text tower."""

    name = "contrastive"
    model_kind = "clip"
    default_poison_rate = 0.01
    Params = ContrastiveTraining
    loss = staticmethod(clip_pair_loss)
    caption_targets = True

    def check_cell(self, model, dataset):
        reason = super().check_cell(model, dataset)
        if reason is None and DATASETS.entry(dataset).extra.get("caption_corpus") is None:
            with_attr = [e.name for e in DATASETS if e.extra.get("caption_corpus") is not None]
            return f"setting 'contrastive' needs a dataset the caption corpus describes ({', '.join(with_attr)}); got {dataset!r}"
        return reason

    def victim(self, model, overrides, dataset, seed, progress=None):
        return runtime.place(copy.deepcopy(pretrained_clip(model, overrides, progress)).eval())

    def classifier(self, victim, model, overrides, dataset):
        head = zeroshot_weights(victim, dataset.classnames, dataset.templates, victim.context_length)
        return ZeroShotClassifier.from_clip(victim, head, share_visual=True).eval()

    def control_accuracy(self, victim, model, overrides, datasets, split="test", limit=None):
        return self._control(lambda ds: self.classifier(victim, model, overrides, ds), datasets, split, limit)

    def encode_labels(self, labels, dataset, seed, victim):
        """Caption tokens naming each label through a seeded choice of the dataset's
        templates (how labelled data becomes image-caption pairs)."""
        rng = np.random.default_rng(seed)
        captions = [
            dataset.templates[rng.integers(len(dataset.templates))].format(dataset.classnames[int(y)]) for y in labels
        ]
        return tokenize(captions, victim.context_length)

    def encoder_parameters(self, victim):
        return list(victim.visual.parameters())

    def attack_training_set(self, dataset, attack, spec: ArtifactSpec):
        build = DATASETS.entry(dataset.name).extra["caption_corpus"]
        images, labels_np, captions = build(spec.setting_params.corpus_size, spec.seed)
        labels = torch.from_numpy(labels_np)
        x = images.float() / 255
        seed = subseed(spec.seed, "poison")
        ps = attack.poison(x, labels, dataset.num_classes, self.default_poison_rate, seed)
        rng = np.random.default_rng(seed)
        if not attack.clean_label:
            # A poisoned pair's caption names its (attacker's) label through a template.
            for i, y in zip(ps.poisoned.tolist(), ps.y[ps.poisoned].tolist(), strict=True):
                captions[i] = dataset.templates[rng.integers(len(dataset.templates))].format(dataset.classnames[y])
        tokens = tokenize(captions, pretrained_clip(spec.model, spec.model_params_json).context_length)
        info = {
            "rate": attack.poison_rate(labels, self.default_poison_rate),
            "n_poisoned": len(ps.poisoned),
            "n_train": len(labels),
            "example_poisoned_captions": [captions[i] for i in ps.poisoned[:3].tolist()],
            **{f"n_{k}": len(v) for k, v in ps.other.items()},
        }
        return AttackTrainingSet((ps.x, tokens), info)
