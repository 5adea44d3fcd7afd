"""Pre-trained victims shipped with the package (bench/weights/): released in float16,
found by the same config hash as the cache, byte for byte what pre-training builds."""

import shutil

import pytest
import torch

from bench.core.registry import MODELS
from bench.models import pretrain
from bench.models.pretrain import PretrainConfig, checkpoint_path, get_pretrained, shipped_path
from bench.models.zoo import TinyClipParams
from bench.store import CorruptCheckpointError, file_digest, read_json

TINY = PretrainConfig(steps=2, batch_size=16, warmup_steps=1, n_shapes=64, n_scenes=32)


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_a_shipped_checkpoint_is_what_pretraining_builds_and_a_cold_cache_loads_it(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "SHIPPED_DIR", tmp_path / "weights")
    stages = []
    trained, _ = get_pretrained(TINY, on_stage=stages.append)
    assert stages == ["pre-training"]
    for k, v in trained.state_dict().items():  # released in float16: every weight is a float16 value
        if v.is_floating_point():
            assert torch.equal(v, v.half().float()), k
    built = checkpoint_path(TINY)
    assert read_json(built.with_suffix(".json"))["pretrain"]["weights_dtype"] == "float16"

    # Ship it, empty the cache: a cold machine loads the shipped file, bit for bit the trained weights.
    (tmp_path / "weights").mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(built.with_suffix(suffix), (tmp_path / "weights" / built.name).with_suffix(suffix))
        built.with_suffix(suffix).unlink()
    stages.clear()
    loaded, _ = get_pretrained(TINY, on_stage=stages.append)
    assert stages == ["shipped weights"] and not built.with_suffix(".safetensors").exists()
    assert all(torch.equal(a, b) for a, b in zip(_state(trained).values(), loaded.state_dict().values(), strict=True))

    # Training it again from scratch rebuilds the shipped bytes (what `bench pretrain --check-shipped` checks).
    get_pretrained(TINY, force=True)
    assert file_digest(built.with_suffix(".safetensors")) == file_digest(shipped_path(TINY).with_suffix(".safetensors"))

    # Another config (here: another step count) never finds it; a damaged shipped file is refused.
    assert shipped_path(PretrainConfig(**{**TINY.__dict__, "steps": 3})) is None
    built.with_suffix(".safetensors").unlink()
    built.with_suffix(".json").unlink()
    weights = shipped_path(TINY).with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CorruptCheckpointError):
        get_pretrained(TINY)


def test_every_shipped_file_is_the_current_default_of_a_registered_model():
    """A changed generator or architecture changes the default's hash: its shipped file is then
    stale, and this fails until it is rebuilt with `bench pretrain --model M --ship`."""
    defaults = {}
    for name in MODELS.names():
        params = getattr(MODELS.get(name), "Params", None)
        if params is not None and hasattr(params, "pretrain_config"):
            defaults[pretrain.checkpoint_name(params().pretrain_config())] = name
    shipped = sorted(p.stem for p in pretrain.SHIPPED_DIR.glob("*.safetensors"))
    assert shipped, "no pre-trained victim is shipped"
    for stem in shipped:
        assert stem in defaults, f"bench/weights/{stem} is the checkpoint of no registered model's default config"
        meta = read_json((pretrain.SHIPPED_DIR / stem).with_suffix(".json"))
        assert meta["pretrain"] == MODELS.get(defaults[stem]).Params().pretrain_config().to_dict()
        assert meta["weights_file"]["sha256"] == file_digest((pretrain.SHIPPED_DIR / stem).with_suffix(".safetensors"))
    assert shipped_path(TinyClipParams().pretrain_config()) is not None  # the default victim never pre-trains cold
