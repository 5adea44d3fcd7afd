"""Models by open_clip and timm names (ARCH:TAG, --pretrained, timm:ARCH.TAG), the small-input
stem, PreAct-ResNet18, and the local-cache markers of `bench list models --pretrained`."""

import os
import subprocess
import sys

import pytest
import torch

from bench.cli.args import with_pretrained
from bench.core.config import ConfigError, SuiteConfig
from bench.core.registry import MODELS, UnknownNameError
from bench.models.classifiers import PreActResNet, TimmParams, build_timm
from bench.models.zoo import model_params
from bench.run.grid import Selection, plan_grid


def test_arch_colon_tag_resolves_to_the_open_clip_model_with_that_tag():
    entry = MODELS.entry("ViT-B-32:openai")
    assert entry.extra == {"kind": "clip", "family": "open_clip", "arch": "ViT-B-32", "tag": "openai"}
    assert model_params("ViT-B-32:openai", None).pretrained == "openai"
    # any architecture of open_clip.list_models(), not only the registered four
    assert MODELS.entry("ViT-B-16-quickgelu:metaclip_400m").extra["arch"] == "ViT-B-16-quickgelu"
    assert MODELS.entry("ViT-H-14").extra == {"kind": "clip", "family": "open_clip", "arch": "ViT-H-14"}
    # resolved names stay out of the listings and of 'all'
    assert "ViT-B-32:openai" not in MODELS.names() and "ViT-B-32:openai" in MODELS


def test_the_tag_in_the_name_enters_the_trial_config_and_its_id():
    suite = SuiteConfig(name="n", models=["tiny-clip"], control_datasets=["colors"])
    plans = {
        tag: plan_grid(suite, Selection(attacks="badnets", defenses="none", models=f"ViT-B-32:{tag}"))
        for tag in ("openai", "laion2b_s34b_b79k")
    }
    spec = plans["openai"].artifacts[0]
    assert spec.model == "ViT-B-32:openai"
    assert spec.model_params_json == {"pretrained": "openai", "checkpoint": None, "init_seed": 0}
    assert plans["openai"].trials[0].id != plans["laion2b_s34b_b79k"].trials[0].id


def test_the_name_fixes_the_tag():
    with pytest.raises(ConfigError, match="fixed by the name ViT-B-32:openai"):
        model_params("ViT-B-32:openai", {"pretrained": "laion2b_s34b_b79k"})
    with pytest.raises(ConfigError, match="give a checkpoint to the bare ViT-B-32"):
        model_params("ViT-B-32:openai", {"checkpoint": "/x.safetensors"})


def test_pretrained_option_names_the_same_models():
    assert with_pretrained("ViT-B-32,RN50", "openai") == "ViT-B-32:openai,RN50:openai"
    assert with_pretrained("timm:resnet18", "a1_in1k") == "timm:resnet18.a1_in1k"
    for models, match in (("tiny-clip", "no pretrained tags"), ("ViT-B-32:openai", "names a tag already"),
                          ("timm:resnet18.a1_in1k", "names a tag already"), ("all", "not 'all'")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            with_pretrained(models, "openai")


def test_unknown_architecture_and_tag_are_one_line_with_suggestions():
    cases = {
        "ViT-B-3:openai": ["unknown open_clip architecture 'ViT-B-3'", "Did you mean 'ViT-B-32'?"],
        "ViT-B-32:opnai": ["no pretrained tag 'opnai'", "Did you mean 'openai'?", "Tags: openai, laion400m_e31"],
        "tiny-vit:openai": ["no pretrained tag 'openai'", "Tags: none"],
        "timm:resnt18": ["unknown timm architecture 'resnt18'", "Did you mean 'resnet18'?"],
        "timm:resnet18.a1": ["no pretrained tag 'a1'", "a1_in1k", "tv_in1k"],
        "ViT-H-1": ["unknown model 'ViT-H-1'", "Did you mean 'ViT-H-1", "any open_clip architecture as ARCH"],
        "ViT-B-16-SigLIP": ["needs the Hugging Face tokenizer", "CLIP-BPE architectures only"],
    }
    for name, words in cases.items():
        with pytest.raises(UnknownNameError) as e:
            MODELS.entry(name)
        msg = str(e.value)
        assert "\n" not in msg
        for word in words:
            assert word in msg, (name, msg)


def test_missing_weights_hint_names_hf_download(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    msg = MODELS.get("ViT-B-32:openai").missing(model_params("ViT-B-32:openai", None))
    assert "hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors" in msg
    assert "huggingface-cli" not in msg
    msg = MODELS.get("timm:resnet18.a1_in1k").missing(model_params("timm:resnet18.a1_in1k", None))
    assert "hf download timm/resnet18.a1_in1k model.safetensors" in msg


def test_preact_resnet18_is_backdoorbenchs_network():
    net = MODELS.get("preact-resnet18").build(model_params("preact-resnet18", None), 10, seed=0)
    assert sum(p.numel() for p in net.parameters()) == 11_171_146  # BackdoorBench's PreActResNet18(10)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert [p.shape for p in net.head_parameters()] == [(10, 512), (10,)]
    inner = PreActResNet((2, 2, 2, 2), 10)
    shapes = {}
    for name in ("conv1", "layer1", "layer2", "layer3", "layer4"):
        getattr(inner, name).register_forward_hook(lambda m, i, o, name=name: shapes.update({name: tuple(o.shape)}))
    inner(torch.rand(1, 3, 32, 32))
    assert shapes == {"conv1": (1, 64, 32, 32), "layer1": (1, 64, 32, 32), "layer2": (1, 128, 16, 16),
                      "layer3": (1, 256, 8, 8), "layer4": (1, 512, 4, 4)}  # fmt: skip
    from defenses.units import unit_layer

    assert unit_layer(net) is net.net.layer4  # the pruning defenses find its last stage


def _first_stage_side(net) -> int:
    seen = {}
    net.net.layer1.register_forward_hook(lambda m, i, o: seen.update(side=o.shape[-1]))
    net.eval()(torch.rand(1, 3, 32, 32))
    return seen["side"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet18d"])
def test_timm_small_stem_keeps_32px_in_the_first_stage(arch):
    small = MODELS.get(f"timm:{arch}").build(model_params(f"timm:{arch}", None), 10, seed=0)
    assert _first_stage_side(small) == 32 and isinstance(small.net.maxpool, torch.nn.Identity)
    timm_stem = MODELS.get(f"timm:{arch}").build(model_params(f"timm:{arch}", {"stem": "timm"}), 10, seed=0)
    assert _first_stage_side(timm_stem) == 8  # ImageNet stem: /2 conv, /2 max-pool
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_small_stem_only_where_it_can_be_swapped():
    vit = build_timm("vit_tiny_patch16_224", None, TimmParams(), 10, seed=0)  # auto: timm's own stem
    assert vit(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="timm ResNets only"):
        build_timm("vit_tiny_patch16_224", None, TimmParams(stem="small"), 10, seed=0)
    with pytest.raises(ConfigError, match="stem"):
        model_params("timm:resnet18", {"stem": "tiny"})


def _fake_hub_file(cache, repo: str, filename: str, tensors: dict | None = None):
    """The layout huggingface_hub's cache has for one downloaded file."""
    from safetensors.torch import save_file

    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0123456789abcdef")
    snap = root / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    if tensors is None:
        (snap / filename).write_bytes(b"not real weights")
    else:
        save_file(tensors, str(snap / filename))
    return snap / filename


def test_timm_pretrained_tag_loads_from_the_local_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants
    import timm

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    torch.manual_seed(1)
    published = timm.create_model("resnet18").state_dict()  # 1000 classes, as on the hub
    _fake_hub_file(tmp_path, "timm/resnet18.a1_in1k", "model.safetensors", published)
    assert MODELS.get("timm:resnet18.a1_in1k").missing(model_params("timm:resnet18.a1_in1k", None)) is None
    net = MODELS.get("timm:resnet18.a1_in1k").build(model_params("timm:resnet18.a1_in1k", None), 10, seed=0)
    torch.testing.assert_close(net.net.layer1[0].conv1.weight, published["layer1.0.conv1.weight"])
    assert net.net.fc.out_features == 10 and net.net.conv1.kernel_size == (3, 3)  # new head, small stem
    assert net.mean == (0.485, 0.456, 0.406)  # the tag's own normalisation


def test_list_models_pretrained_marks_what_is_in_the_cache(tmp_path):
    hf_home = tmp_path / "hf"
    _fake_hub_file(hf_home / "hub", "timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-m", "bench.cli", "list", "models", "--pretrained", "ViT-B-32*"],
                       env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln.startswith("│") and ":" in ln}
    assert " yes " in rows["ViT-B-32:openai"] and str(hf_home / "hub") in rows["ViT-B-32:openai"]  # the file found
    assert " no " in rows["ViT-B-32:laion2b_s34b_b79k"]
    assert all(name.startswith("ViT-B-32") for name in rows)


def test_list_filters_by_pattern_like_timm():
    from bench.report import listing

    names = [r[0] for r in listing.model_rows("ViT-B*")]
    assert {"ViT-B-32", "ViT-B-16", "ViT-B-32-quickgelu"} <= set(names) and "tiny-clip" not in names
    assert not any("SigLIP" in n for n in names)  # the ones bench refuses are not offered
    timm_names = [r[0] for r in listing.model_rows("timm:resnet18*")]
    assert {"timm:resnet18", "timm:resnet18d"} <= set(timm_names)
    assert [r[0] for r in listing.model_rows(None)] == MODELS.names()  # no pattern: the registered ones
    assert [r[0] for r in listing.pretrained_rows("timm:resnet18.*")][:1] == ["timm:resnet18.a1_in1k"]
