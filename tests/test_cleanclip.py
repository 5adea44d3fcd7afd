import math

import numpy as np
import torch

from defenses.cleanclip import cleanclip_loss, decay_groups
from defenses.eda import SYNONYMS, eda


def _infonce_by_hand(a, b, scale):
    """Symmetric InfoNCE for a 2-sample batch, written out term by term."""
    a = [[t / math.sqrt(sum(u * u for u in v)) for t in v] for v in a]
    b = [[t / math.sqrt(sum(u * u for u in v)) for t in v] for v in b]
    s = [[scale * sum(x * y for x, y in zip(a[i], b[j], strict=True)) for j in range(2)] for i in range(2)]
    rows = [-(s[i][i] - math.log(math.exp(s[i][0]) + math.exp(s[i][1]))) for i in range(2)]
    cols = [-(s[j][j] - math.log(math.exp(s[0][j]) + math.exp(s[1][j]))) for j in range(2)]
    return (sum(rows) / 2 + sum(cols) / 2) / 2


def _infonce_one_way(a, b, scale):
    """Row i of a picks row i of b: mean over rows of -log softmax, written out."""
    a = [[t / math.sqrt(sum(u * u for u in v)) for t in v] for v in a]
    b = [[t / math.sqrt(sum(u * u for u in v)) for t in v] for v in b]
    s = [[scale * sum(x * y for x, y in zip(a[i], b[j], strict=True)) for j in range(2)] for i in range(2)]
    return sum(-(s[i][i] - math.log(math.exp(s[i][0]) + math.exp(s[i][1]))) for i in range(2)) / 2


def test_cleanclip_loss_equals_a_hand_computation_on_two_samples():
    img = [[1.0, 0.0, 0.5], [0.2, 1.0, -0.3]]
    img_aug = [[0.9, 0.1, 0.4], [0.0, 1.0, 0.0]]
    txt = [[0.5, 0.5, 0.0], [-0.1, 0.8, 0.2]]
    txt_aug = [[0.4, 0.6, 0.1], [0.0, 0.7, 0.3]]
    scale = 10.0
    # CLIP term symmetric; in-modal terms one-directional (image -> augmented image,
    # text -> augmented text), as CleanCLIP's get_loss computes them
    expect = (
        _infonce_by_hand(img, txt, scale)
        + (_infonce_one_way(img, img_aug, scale) + _infonce_one_way(txt, txt_aug, scale)) / 2
    )
    got = cleanclip_loss(*(torch.tensor(v) for v in (img, img_aug, txt, txt_aug)), torch.tensor(math.log(scale)))
    assert math.isclose(float(got), expect, rel_tol=1e-5)
    # the one-directional terms differ from their symmetric versions on this batch
    assert not math.isclose(_infonce_one_way(img, img_aug, scale), _infonce_by_hand(img, img_aug, scale), rel_tol=1e-3)


def test_weight_decay_follows_cleanclips_name_rule():
    from bench.models.clip import ClipArch, build_clip

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    model.logit_scale = torch.nn.Parameter(torch.ones(()))
    model.class_embedding = torch.nn.Parameter(torch.ones(3))
    decay, no_decay = decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    # by name, not by rank: "0.weight" and the 1-d class embedding are decayed, and the
    # LayerNorm named "1" too (its name carries no "ln"), exactly as the reference's rule does
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model.class_embedding), id(model[1].weight)}
    assert len(no_decay["params"]) == 3  # linear bias, norm bias, logit_scale
    clip = build_clip(ClipArch())
    names = {id(p): n for n, p in clip.named_parameters()}
    exempt = {names[id(p)] for p in decay_groups(clip, 0.1)[1]["params"]}
    assert "visual.bn1.weight" in exempt and "ln_final.weight" in exempt and "logit_scale" in exempt
    assert "positional_embedding" not in exempt and "visual.layer1.0.downsample.1.weight" not in exempt


def test_eda_changes_a_caption_and_keeps_it_a_caption():
    rng = np.random.default_rng(0)
    src = "a photo of a red circle on a striped background."
    outs = {eda(src, rng) for _ in range(40)}
    assert len(outs) > 5 and all(o.endswith(".") for o in outs)
    assert any(any(s in o for s in SYNONYMS["photo"]) for o in outs)  # synonym replacement/insertion happens
    assert eda("star", np.random.default_rng(1)) in {"star", "pentagram", "star pentagram", "pentagram star"}
