"""BadCLIP-style optimised patch (after Liang et al. 2024), CLIP settings only.

A square patch of side max(3, round(16H/224)) at the image centre whose pixels are
optimised (Adam, clipped to [0, 1]) on the attacker's clean images so that the
triggered image's embedding moves towards the target class: the loss is minus the
cosine similarity to the target's text embedding (its zero-shot head row) minus
`image_weight` times the cosine similarity to the mean embedding of the
attacker's clean target-class images. It then poisons like badnets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attacks.badnets import apply_patch
from attacks.base import Attack, AttackParams
from attacks.images import save_png
from bench.core.knobs import Count, NonNegative, Positive
from bench.core.registry import ATTACKS


def badclip_side(height: int) -> int:
    """methods.md: s = max(3, round(16H/224))."""
    return max(3, round(16 * height / 224))


@dataclass(frozen=True)
class BadClipParams(AttackParams):
    side: Count | None = None
    steps: Count = 300
    lr: Positive = 0.01
    batch_size: Count = 128
    image_weight: NonNegative = 1.0


@ATTACKS.register(
    "badclip-patch",
    "centre patch optimised against the CLIP's own embeddings (after BadCLIP)",
    settings=("finetune", "contrastive"),
)
class BadClipPatch(Attack):
    Params = BadClipParams
    needs_fitting = True
    deviations = (
        "a BadCLIP-style patch, not the published attack: only two embedding-alignment terms are optimised (the "
        "target's text embedding and the attacker's target-class images' mean embedding)",
    )

    def __init__(self, params: BadClipParams, image_shape: tuple[int, int, int], seed: int):
        super().__init__(params, image_shape, seed)
        c, h, w = image_shape
        self.side = params.side or badclip_side(h)
        self.top, self.left = (h - self.side) // 2, (w - self.side) // 2
        rng = np.random.default_rng(seed)
        self.patch = torch.from_numpy(rng.random((c, self.side, self.side))).float()  # the optimiser's start

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return apply_patch(x, self.patch, self.top, self.left)

    def fit(
        self,
        encode: Callable[[torch.Tensor], torch.Tensor],
        head: torch.Tensor,
        clean_x: torch.Tensor,
        clean_y: torch.Tensor,
    ) -> dict[str, float]:
        """Optimise the patch against `encode` (L2-normalised image embeddings), with
        `head` the zero-shot text embeddings (classes x dim)."""
        p = self.params
        text = F.normalize(head[p.target], dim=-1).detach()
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            own = clean_x[clean_y == p.target]
            image_mean = F.normalize(
                torch.cat([encode(own[i : i + 256]) for i in range(0, len(own), 256)]).mean(0), dim=-1
            )
        pool = clean_x[clean_y != p.target]
        patch = self.patch.clone().requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=p.lr)

        def objective(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            emb = encode(apply_patch(batch, patch, self.top, self.left))
            to_text, to_image = (emb @ text).mean(), (emb @ image_mean).mean()
            return -(to_text + p.image_weight * to_image), to_text, to_image

        with torch.no_grad():
            _, start_text, _ = objective(pool[:512])
        for _ in range(p.steps):
            idx = torch.randint(len(pool), (p.batch_size,), generator=gen)
            loss, _, _ = objective(pool[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
        with torch.no_grad():
            _, end_text, end_image = objective(pool[:512])
        self.patch = patch.detach().clone()
        return {
            "cos_text_before": float(start_text),
            "cos_text_after": float(end_text),
            "cos_image_after": float(end_image),
        }

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        self.patch = tensors["patch"].clone()

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return {"patch": self.patch}

    def save_trigger(self, folder: Path) -> list[str]:
        save_png(self.patch, folder / "trigger.png", scale=8)
        return [*super().save_trigger(folder), "trigger.png"]
