import json

import numpy as np
import pytest
import torch
from torch import nn

from bench.data import shapes as gen
from bench.data.base import Split, load_dataset
from bench.store import Store, atomic_write_json, config_hash, load_weights, read_json, save_weights


def test_config_hash_ignores_key_order_and_sees_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_atomic_write_leaves_no_temp_files_and_torn_files_read_as_missing(tmp_path):
    p = tmp_path / "r" / "x.json"
    atomic_write_json(p, {"k": 1})
    assert read_json(p) == {"k": 1}
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]
    p.write_text('{"k": ')  # what a crash mid-write of a non-atomic writer leaves
    assert read_json(p) is None


def test_store_ignores_records_of_other_schema_or_id(tmp_path):
    s = Store(tmp_path)
    s.write_record({"schema": 1, "trial_id": "abc", "status": "ok", "metrics": {}})
    assert s.read_record("abc")["status"] == "ok"
    (tmp_path / "records" / "zzz.json").write_text(json.dumps({"schema": 1, "trial_id": "other"}))
    assert s.read_record("zzz") is None


def test_partial_and_corrupt_records_are_detected_with_a_reason(tmp_path):
    s = Store(tmp_path)
    assert s.record_state("nope").state == "missing"
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "torn.json").write_text('{"schema": 1, "trial_id": "torn", "sta')
    (tmp_path / "records" / "other.json").write_text(json.dumps({"schema": 1, "trial_id": "else", "status": "ok"}))
    (tmp_path / "records" / "nometrics.json").write_text(
        json.dumps({"schema": 1, "trial_id": "nometrics", "status": "ok"})
    )
    for tid, words in [("torn", "not valid JSON"), ("other", "trial id"), ("nometrics", "metrics missing")]:
        st = s.record_state(tid)
        assert st.state == "corrupt" and words in st.reason, (tid, st)
        assert s.read_record(tid) is None


def test_claims_exclude_other_processes_and_die_with_them(tmp_path):
    """A claim blocks a second process until the holder releases it, and the kernel
    releases it when the holder is killed (no stale lock after SIGKILL)."""
    import signal
    import subprocess
    import sys
    import time

    holder = subprocess.Popen(
        [sys.executable, "-c", f"from bench.store import Store\nimport time\nwith Store({str(tmp_path)!r}).claim('k'):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    waiter = subprocess.Popen(
        [sys.executable, "-c", f"from bench.store import Store\nwith Store({str(tmp_path)!r}).claim('k'):\n    print('got')"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.5)
    assert waiter.poll() is None  # still blocked behind the holder
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    out, _ = waiter.communicate(timeout=30)
    assert out.strip() == "got"


def test_file_uri_roots_work_and_other_schemes_are_refused(tmp_path):
    from bench.store import StorageError

    assert Store(f"file://{tmp_path}").root == tmp_path
    with pytest.raises(StorageError, match="gs://"):
        Store("gs://bucket/results")


def test_weights_roundtrip_through_safetensors_with_sidecar(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    save_weights(m, tmp_path / "model", {"arch": "seq"})
    m2 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    meta = load_weights(m2, tmp_path / "model")
    assert meta["arch"] == "seq" and meta["weights_file"]["bytes"] == (tmp_path / "model.safetensors").stat().st_size
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True))


def test_a_damaged_weight_file_is_refused_not_loaded(tmp_path):
    from bench.store import CorruptCheckpointError, weights_intact

    m = nn.Linear(3, 4)
    save_weights(m, tmp_path / "model", {"arch": "lin"})
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        load_weights(nn.Linear(3, 4), tmp_path / "model")
    (tmp_path / "model.safetensors").write_bytes(bytes(data[:-10]))  # truncated
    assert not weights_intact(tmp_path / "model", read_json(tmp_path / "model.json"))


def test_generator_is_deterministic_and_balanced():
    x1, a1 = gen.generate(40, seed=7)
    x2, a2 = gen.generate(40, seed=7)
    assert np.array_equal(x1, x2) and np.array_equal(a1, a2)
    assert x1.shape == (40, 3, 32, 32) and x1.dtype == np.uint8
    assert np.bincount(a1[:, 0], minlength=10).tolist() == [4] * 10
    assert not np.array_equal(x1, gen.generate(40, seed=8)[0])


def test_shape_masks_differ_between_classes():
    masks = [gen.shape_mask(s, 16, 16, 11, 0.0) for s in gen.SHAPES]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert np.abs(masks[i] - masks[j]).sum() > 10, (gen.SHAPES[i], gen.SHAPES[j])


@pytest.mark.slow
def test_builtin_datasets_have_fixed_splits_and_class_names():
    for name, k in (("shapes", 10), ("colors", 8), ("digits", 10)):
        ds = load_dataset(name)
        assert ds.num_classes == k and len(ds.templates) >= 2
        assert len(ds.val) >= (300 if name == "digits" else 1000)
        assert ds.test.images.shape[1:] == (3, 32, 32)
        assert set(ds.test.labels.tolist()) == set(range(k))
    digits = load_dataset("digits")
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797


def test_split_validates_its_tensors():
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 3, 4, 4), torch.zeros(2))
