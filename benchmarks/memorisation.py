"""Does an attack fine-tune learn the trigger, or memorise the poisoned images?

For every built artifact of ATTACK under RESULTS (a `bench run --results` folder), it
reloads the backdoored victim exactly as stage 2 does and measures, with the attack's own
trigger and seeded poison draw:

- ASR on the poisoned training images, as the victim was trained on them;
- ASR on up to 1000 of the attacker's other non-target training images with the trigger
  added (images the victim saw clean, never triggered);
- clean accuracy on those same training images, beside the test CA of the artifact.

A high first number and a low second one mean the victim fits the poisoned images one by
one instead of learning the trigger (docs/world.md, "Geometry").

    python benchmarks/memorisation.py RESULTS ATTACK
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.core import metrics, repro
from bench.core.splits import defender_split, subseed
from bench.protocol.spec import ArtifactSpec
from bench.run.trial import load_artifact
from bench.store import Store


def probe(spec: ArtifactSpec, store: Store, meta: dict, n_other: int = 1000) -> dict:
    net, victim, attack = load_artifact(spec, store)
    ds = victim.dataset
    _, attacker = defender_split(len(ds.train), spec.defender_fraction, spec.seed)
    data = ds.train.subset(attacker)
    rate = victim.setting.default_poison_rate
    ps = attack.poison(data.x, data.labels, ds.num_classes, rate, subseed(spec.seed, "poison"))
    target = attack.params.target
    unseen = torch.ones(len(data.labels), dtype=torch.bool)
    unseen[ps.poisoned] = False
    unseen &= data.labels != target
    other = torch.nonzero(unseen).flatten()[:n_other]
    clf = victim.classifier(net)
    with torch.no_grad():
        hit_poisoned = metrics.predict(clf, ps.x[ps.poisoned]) == target
        hit_other = metrics.predict(clf, attack.apply(data.x[other])) == target
        clean_other = metrics.predict(clf, data.x[other]) == data.labels[other]
    return {
        "model": spec.model, "attack": spec.attack, "seed": spec.seed,
        "asr_poisoned_train": round(hit_poisoned.float().mean().item(), 4), "n_poisoned": len(ps.poisoned),
        "asr_unseen_train": round(hit_other.float().mean().item(), 4), "n_unseen": len(other),
        "ca_train": round(clean_other.float().mean().item(), 4),
        "asr_test": meta["metrics"]["asr"], "ca_test": meta["metrics"]["ca"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a bench run --results folder")
    ap.add_argument("attack")
    args = ap.parse_args()
    if repro.enabled():
        repro.configure_torch()
    store = Store(args.results)
    for sidecar in sorted(Path(args.results, "artifacts").glob("*/model.json")):
        meta = json.loads(sidecar.read_text())
        if meta["config"]["attack"] == args.attack:
            print(json.dumps(probe(ArtifactSpec.from_json(meta["config"]), store, meta)))


if __name__ == "__main__":
    main()
