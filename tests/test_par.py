"""PAR's loss and augmentation against hand computations."""

import math

import torch

from defenses.par import ParParams, par_augment, par_loss


def _unit(v):
    n = math.sqrt(sum(t * t for t in v))
    return [t / n for t in v]


def _clip_by_hand(a, b, scale):
    a, b = [_unit(v) for v in a], [_unit(v) for v in b]
    s = [[scale * sum(x * y for x, y in zip(a[i], b[j], strict=True)) for j in range(2)] for i in range(2)]
    rows = [-(s[i][i] - math.log(math.exp(s[i][0]) + math.exp(s[i][1]))) for i in range(2)]
    cols = [-(s[j][j] - math.log(math.exp(s[0][j]) + math.exp(s[1][j]))) for j in range(2)]
    return (sum(rows) / 2 + sum(cols) / 2) / 2


def _dist_by_hand(a, b):
    return sum(sum((x - y) ** 2 for x, y in zip(_unit(u), _unit(v), strict=True)) for u, v in zip(a, b, strict=True)) / 2


def test_par_loss_equals_a_hand_computation():
    img = [[1.0, 0.0, 0.5], [0.2, 1.0, -0.3]]
    txt = [[0.5, 0.5, 0.0], [-0.1, 0.8, 0.2]]
    img_bd = [[0.9, 0.3, 0.4], [0.0, 1.0, 0.1]]  # near img: d small, below tau
    txt_bd = [[-0.5, -0.5, 0.1], [0.1, -0.8, -0.2]]  # opposite txt: d near 4, above tau
    scale = 10.0
    d_img, d_txt = _dist_by_hand(img, img_bd), _dist_by_hand(txt, txt_bd)
    assert d_img < 2.15 < d_txt
    t = [torch.tensor(v, requires_grad=True) for v in (img, txt)]
    loss, parts = par_loss(t[0], t[1], torch.tensor(img_bd), torch.tensor(txt_bd), torch.tensor(math.log(scale)))
    # the text distance is past tau: its term is cut to 0; the image term is subtracted with weight 0.5
    assert math.isclose(float(loss.detach()), _clip_by_hand(img, txt, scale) - 0.5 * d_img, rel_tol=1e-5)
    assert math.isclose(parts["d_txt"], d_txt, rel_tol=1e-5) and math.isclose(parts["d_img"], d_img, rel_tol=1e-5)
    # with a larger tau both are subtracted
    loss4, _ = par_loss(t[0], t[1], torch.tensor(img_bd), torch.tensor(txt_bd), torch.tensor(math.log(scale)), tau=4.0)
    assert math.isclose(float(loss4.detach()), _clip_by_hand(img, txt, scale) - 0.5 * (d_img + d_txt), rel_tol=1e-5)
    # the perturbation pushes away: the gradient of -0.5 d_img w.r.t. img points away from img_bd
    scale_t = torch.tensor(math.log(scale), requires_grad=True)
    loss, _ = par_loss(t[0], t[1], torch.tensor(img_bd), torch.tensor(txt_bd), scale_t)
    loss.backward()
    assert scale_t.grad is None  # the logit scale is used detached


def test_par_augment_noise_brightens_and_erase_fills_a_small_square_with_the_mean():
    x = torch.full((64, 3, 32, 32), 0.3)
    p = ParParams(noise_p=1.0, erase_p=0.0)
    noisy = par_augment(x, torch.Generator().manual_seed(0), (0.5, 0.5, 0.5), p)
    assert bool((noisy >= x).all()) and float((noisy > x).float().mean()) > 0.4  # the noise is clipped to [0, 1]
    p = ParParams(noise_p=0.0, erase_p=1.0)
    erased = par_augment(x, torch.Generator().manual_seed(0), (0.5, 0.25, 0.75), p)
    changed = (erased != x).any(dim=1)  # (N, H, W)
    sizes = changed.flatten(1).sum(1)
    assert set(sizes.tolist()) <= {4, 9}  # 0.5-1% of 1024 px: a 2x2 or 3x3 square
    i = int(sizes.argmax())
    assert torch.allclose(erased[i][:, changed[i]], torch.tensor([0.5, 0.25, 0.75]).view(3, 1))
    assert torch.equal(par_augment(x, torch.Generator().manual_seed(0), (0.5,) * 3, ParParams(noise_p=0, erase_p=0)), x)
