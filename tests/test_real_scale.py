"""Real weights and datasets, tested against files the tests make: a fake CIFAR-10 in
its on-disk format, a fake ImageFolder tree, a tiny open_clip checkpoint, a pickled
checkpoint that must be refused, and the paper suite's pre-flight check."""

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data.real import DatasetMissingError, check, load_real
from bench.models.published import OpenClipParams, WeightsError, load_open_clip, missing_weights, read_state_dict


def make_fake_cifar10(root: Path, per_batch: int = 60, n_test: int = 50) -> None:
    """torchvision's CIFAR-10 python layout: pickled dicts of a uint8 (N, 3072) array and labels."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}

    for i in range(1, 6):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch), f, protocol=2)
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f, protocol=2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10}, f, protocol=2)


def make_fake_sun397(root: Path, classes=("a/abbey", "b/beach", "c/canyon"), per_class: int = 12) -> None:
    rng = np.random.default_rng(1)
    for c in classes:
        d = root / "SUN397" / c
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"sun_{i}.jpg")


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("BENCH_ALLOW_DOWNLOAD", raising=False)
    return tmp_path / "data"


def _spec(name):
    from bench.data.real import SPECS

    return next(s for s in SPECS if s.name == name)


def test_fake_cifar10_loads_with_its_names_templates_and_a_carved_validation_split(data_root):
    make_fake_cifar10(data_root)
    ds = load_real(_spec("cifar10"))
    assert ds.train.images.shape[1:] == (3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert len(ds.train) + len(ds.val) == 300 and len(ds.val) == 30 and len(ds.test) == 50
    assert ds.classnames[0] == "airplane" and ds.num_classes == 10
    assert len(ds.templates) == 18 and ds.templates[0] == "a photo of a {}."
    raw = pickle.load(open(data_root / "cifar-10-batches-py" / "test_batch", "rb"))
    assert np.array_equal(ds.test.images[0].numpy().reshape(-1), raw[b"data"][0])  # pixel layout kept


def test_a_cifar_file_carrying_code_is_refused(data_root):
    make_fake_cifar10(data_root)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(data_root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DatasetMissingError, match="refused to load"):
        load_real(_spec("cifar10"))


def test_missing_datasets_name_every_file_and_the_layout(data_root):
    problems = check(_spec("cifar10"))
    assert len(problems) == 3
    assert str(data_root / "cifar-10-batches-py" / "data_batch_1") in problems[0]
    assert "expected layout: DATA_ROOT/cifar-10-batches-py" in problems[0]
    assert "--allow-download" in problems[0]
    assert "--allow-download" not in check(_spec("imagenet"))[0]  # not downloadable


def test_an_image_folder_tree_loads_resized_with_folder_class_names(data_root, monkeypatch):
    import bench.data.real as real

    monkeypatch.setattr(real, "FOLDER_SIDE", 24)
    make_fake_sun397(data_root)
    ds = load_real(_spec("sun397"))
    assert ds.classnames == ["abbey", "beach", "canyon"]
    assert ds.train.images.shape[1:] == (3, 24, 24)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 36


def test_a_malformed_imagenet_tree_says_what_it_needs(data_root):
    for split in ("train", "val"):
        d = data_root / "imagenet" / split / "n01440764"
        d.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(d / "x.JPEG")
    with pytest.raises(DatasetMissingError, match="need the same 1000"):
        load_real(_spec("imagenet"))


def test_a_tiny_open_clip_checkpoint_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import save_file

    model, _ = load_open_clip("tiny-vit", OpenClipParams(init_seed=3))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    loaded, info = load_open_clip("tiny-vit", OpenClipParams(checkpoint=str(path), init_seed=9))
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert len(info["weights_sha256"]) == 64


def test_a_checkpoint_that_needs_unpickling_is_refused(tmp_path):
    model, _ = load_open_clip("tiny-vit", OpenClipParams())
    path = tmp_path / "whole_module.pt"
    torch.save(model, path)  # a pickled module: loading it would import and run code
    with pytest.raises(WeightsError, match="needs unpickling code"):
        read_state_dict(path)
    plain = tmp_path / "state.pt"
    torch.save(model.state_dict(), plain)  # a plain state dict loads with weights_only=True
    assert set(read_state_dict(plain)) == set(model.state_dict())


def test_missing_published_weights_name_the_file_and_never_touch_the_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dialled = []  # any connection attempt, to a hub or anywhere else, is recorded and refused

    def no_network(sock, address, *a, **k):
        dialled.append(address)
        raise OSError("the test forbids the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    msg = missing_weights("ViT-B-32", OpenClipParams(pretrained="openai"))
    assert dialled == []
    assert "models--timm--vit_base_patch32_clip_224.openai" in msg and "open_clip_model.safetensors" in msg
    assert "no pretrained tag 'nope'" in missing_weights("ViT-B-32", OpenClipParams(pretrained="nope"))


def _bench(*args, cwd, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_paper_suite_without_files_fails_before_any_work_naming_each_one(tmp_path, monkeypatch, capsys):
    """Checked by what happened, not by how long it took: the CLI runs in this process with
    every way into work (a victim, a dataset's images, an executor, Ray) replaced by a trap."""
    import ray

    from bench.cli import commands as cli
    from bench.data import real
    from bench.models import published
    from bench.run import grid, ray_grid

    (tmp_path / "empty").mkdir()  # an existing but empty data root (a missing one is a one-line --data-root error)
    sprung = []

    def trap(name):
        def sprang(*a, **k):
            sprung.append(name)
            raise AssertionError(f"{name} was called: work started before the missing files were reported")

        return sprang

    for owner, name in [(published, "load_open_clip"), (real, "load_real"), (grid, "run_serial"),
                        (ray_grid, "run_ray"), (ray, "init")]:  # fmt: skip
        monkeypatch.setattr(owner, name, trap(name))
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    code = cli.main(["run", "--suite", "paper", "--data-root", str(tmp_path / "empty"),
                     "--results", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert sprung == []
    for needed in ("cifar-10-batches-py/data_batch_1", "cifar-100-python/train", "train_32x32.mat",
                   "stl10_binary/train_X.bin", "gtsrb/GTSRB/Training", "SUN397", "imagenet/val",
                   "vit_base_patch32_clip_224.openai"):  # fmt: skip
        assert needed in err, needed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no results folder, no cache: nothing written


@pytest.mark.slow
def test_the_paper_code_path_runs_on_test_made_files_with_a_tiny_stand_in(tmp_path):
    """The paper suite's path (published-model loader with a checkpoint file, a real
    dataset reader, a control dataset from an ImageFolder tree), at toy size."""
    from safetensors.torch import save_file

    data = tmp_path / "data"
    make_fake_cifar10(data, per_batch=80, n_test=60)
    make_fake_sun397(data)
    model, _ = load_open_clip("tiny-vit", OpenClipParams())
    ckpt = tmp_path / "tiny-vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    suite = tmp_path / "paper-tiny.yaml"
    suite.write_text(
        "name: paper-tiny\nmodels: [tiny-vit]\ndatasets: [cifar10]\nsettings: [finetune]\n"
        "attacks: [badnets]\ndefenses: [none, tbar, finetune]\ncontrol_datasets: [sun397]\n"
        f"model_params: {{tiny-vit: {{checkpoint: {ckpt}}}}}\n"
        "setting_params: {finetune: {steps: 5, batch_size: 16}}\n"
        "defense_params: {tbar: {steps: 3, alpha_points: 3, data_fraction: 0.1}, finetune: {budget_x: 1, epochs: 1}}\n"
    )
    r = _bench("run", "--suite", str(suite), "--data-root", str(data), "--executor", "serial",
               "--results", str(tmp_path / "res"), "--leaderboards", str(tmp_path / "lb"), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "records").glob("*.json")]
    assert {rec["config"]["defense"] for rec in recs} == {"none", "tbar", "finetune"}
    assert all(rec["status"] == "ok" and "sun397" in rec["metrics"]["control"] for rec in recs)


def make_fake_gtsrb(root: Path, classes: int = 3, tracks: int = 4, frames: int = 5, n_test: int = 6) -> None:
    """torchvision's GTSRB layout: Training/<class>/<track>_<frame>.ppm, Final_Test/Images and
    GT-final_test.csv. Every frame of a track is one flat colour naming (class, track)."""
    base = root / "gtsrb"
    for c in range(classes):
        d = base / "GTSRB" / "Training" / f"{c:05d}"
        d.mkdir(parents=True)
        for t in range(tracks):
            for f in range(frames):
                img = np.zeros((30, 34, 3), np.uint8)
                img[..., 0], img[..., 1], img[..., 2] = 40 * c, 40 * t, 10 * f
                Image.fromarray(img).save(d / f"{t:05d}_{f:05d}.ppm")
    test = base / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(n_test):
        Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(test / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;30;30;0;0;29;29;{i % classes}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")


def test_gtsrb_validation_holds_out_whole_tracks(data_root):
    make_fake_gtsrb(data_root)
    ds = load_real(_spec("gtsrb"))
    assert len(ds.train) + len(ds.val) == 60 and len(ds.test) == 6 and ds.num_classes == 43
    # 10% of 60 frames is 6: whole tracks of 5 frames go to validation until >= 6, so two tracks
    assert len(ds.val) == 10

    def tracks(split):
        px = split.images[:, :2, 5, 5]  # (class, track) colour of each frame
        return {tuple(v.tolist()) for v in px}

    assert tracks(ds.train).isdisjoint(tracks(ds.val))
    assert len(tracks(ds.val)) == 2 and len(tracks(ds.train)) == 10


def test_gtsrb_track_ids_come_from_file_names():
    from bench.data.real import gtsrb_tracks

    ids = gtsrb_tracks(["/r/00003/00012_00029.ppm", "/r/00003/00012_00000.ppm", "/r/00004/00012_00000.ppm", "/r/x.ppm"])
    assert ids.tolist() == ["00003/00012", "00003/00012", "00004/00012", "/r/x.ppm"]
