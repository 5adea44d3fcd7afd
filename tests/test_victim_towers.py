"""The CLIP image towers the built-in world can use (bench/models/clip.py), by the map a
32 px image reaches: the geometry issue 22 asks the victims to get right."""

import pytest
import torch

from bench.models.clip import ClipArch, build_clip


def _first_stage(visual, x):
    if hasattr(visual, "stem"):  # open_clip ModifiedResNet (and the fine variant)
        return visual.stem(x)
    return visual.conv1(x)  # open_clip ViT: the patch embedding, one cell per token


@pytest.mark.parametrize(
    ("vision", "width", "first", "last"),
    [("modified-resnet", 16, 8, 1), ("fine-resnet", 16, 16, 2), ("vit", 32, 8, 8)],
)
def test_a_32px_image_reaches_each_tower_at_its_stated_resolution(vision, width, first, last):
    torch.manual_seed(0)
    arch = ClipArch(vision=vision, vision_width=width, vit_layers=1)
    model = build_clip(arch).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = _first_stage(model.visual, x)
        assert stem.shape[-2:] == (first, first)
        if vision != "vit":
            v = model.visual
            deep = v.layer4(v.layer3(v.layer2(v.layer1(stem))))
            assert deep.shape[-2:] == (last, last)
            assert v.attnpool.positional_embedding.shape[0] == last * last + 1  # the pool is sized for the map
        assert model.encode_image(x).shape == (2, arch.embed_dim)


def test_a_corner_patch_lies_in_one_vit_token():
    """BadNets' 3 px bottom-right patch changes exactly one of the ViT's 8x8 patch embeddings,
    as a 21 px patch on a CIFAR image upsampled to 224 px lies in ViT-B/32's corner token."""
    torch.manual_seed(0)
    model = build_clip(ClipArch(vision="vit", vision_width=32, vit_layers=1)).eval()
    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[..., 29:, 29:] = 1.0
    with torch.no_grad():
        changed = (model.visual.conv1(x) - model.visual.conv1(y)).abs().sum(1)[0] > 0
    assert changed.sum() == 1 and changed[7, 7]
