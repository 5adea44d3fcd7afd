"""Metrics of methods.md section 4. The formulas are pure functions of numbers or
tensors; `predict` is the one place that runs a model over images."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Top-1 predictions (on the CPU) of `model` on float images x in [0, 1], in
    batches on the model's device under the runtime's precision."""
    from bench.core import runtime

    batch_size = batch_size or runtime.current().eval_batch_size
    device = runtime.model_device(model)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with runtime.autocast(device):
            out.append(model(runtime.to_device(x[i : i + batch_size], device)).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def share(hits: torch.Tensor) -> float:
    """Exact share of True in a bool tensor (count / total, no float32 rounding)."""
    n = hits.numel()
    return int(hits.sum()) / n if n else float("nan")


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to labels (CA when the images are clean)."""
    return share(pred == labels)


def attack_success_rate(pred_triggered: torch.Tensor, true_labels: torch.Tensor, targets: torch.Tensor) -> float:
    """ASR: share of triggered images whose true label is not their target that are
    predicted as the target. Images already of the target class are excluded."""
    keep = true_labels != targets
    return share(pred_triggered[keep] == targets[keep])


def robust_accuracy(pred_triggered: torch.Tensor, true_labels: torch.Tensor, targets: torch.Tensor) -> float:
    """RA: share of the same triggered images predicted as their true label."""
    keep = true_labels != targets
    return share(pred_triggered[keep] == true_labels[keep])


def ca_retention(ca_def: float, ca_bd: float) -> float:
    return ca_def / ca_bd if ca_bd > 0 else float("nan")


def asr_removal(asr_bd: float, asr_def: float) -> float:
    return (asr_bd - asr_def) / asr_bd if asr_bd > 0 else float("nan")


def der(ca_bd: float, ca_def: float, asr_bd: float, asr_def: float) -> float:
    """BackdoorBench's defense effectiveness rating with the correct sign: a clean
    accuracy drop is subtracted (BackdoorBench's own code adds it)."""
    return (max(0.0, asr_bd - asr_def) - max(0.0, ca_bd - ca_def) + 1) / 2


# ---------------------------------------------------------------- trigger visibility


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, valid convolution, mean over channels) of two batches (N, C, H, W).
    Images smaller than the window use a window of their own size.

    Conventions, checked against torchmetrics in tests/test_metrics.py:
    - The mean is over the valid region only (positions where the whole window lies
      inside the image), as in Wang et al.'s reference code and scikit-image's
      `structural_similarity`. torchmetrics' `structural_similarity_index_measure`
      reflect-pads the images and averages the whole H x W map, border included, so
      its number differs (by about 1e-3 on 32 px images); on the valid region its map
      (`return_full_image=True`, cropped by 5 px per side) equals ours.
    - Variances are not clamped at 0 (torchmetrics clamps); with the float64 inputs
      `perturbation_stats` uses, the difference is rounding error."""
    _, c, h, w = x.shape
    size = min(11, h, w)
    win = _gaussian_window(size).to(x.dtype if x.is_floating_point() else torch.float64)
    win = win.expand(c, 1, size, size).to(x.device)
    x, y = x.to(win.dtype), y.to(win.dtype)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, win, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx**2
    syy = filt(y * y) - my**2
    sxy = filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))


def perturbation_stats(clean: torch.Tensor, triggered: torch.Tensor) -> dict[str, float]:
    """How visible a trigger is: mean per-image L2 and Linf of the perturbation,
    PSNR (dB, from the mean MSE over the set; inf when identical) and mean SSIM."""
    d = (triggered - clean).flatten(1).double()
    mse = float((d**2).mean())
    return {
        "l2": float(d.norm(dim=1).mean()),
        "linf": float(d.abs().amax(dim=1).mean()),
        "psnr": float("inf") if mse == 0 else float(10 * torch.log10(torch.tensor(1.0 / mse))),
        # In chunks: a grouped double conv over a whole 224 px split needs tens of GB.
        "ssim": float(
            torch.cat(
                [ssim(clean[i : i + 64].double(), triggered[i : i + 64].double()) for i in range(0, len(clean), 64)]
            ).mean()
        ),
    }
