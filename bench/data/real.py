"""Real datasets from a local data root (`--data-root DIR`, or BENCH_DATA_ROOT).

Each dataset is read from torchvision's on-disk layout (or an ImageFolder tree),
converted once to uint8 arrays at a fixed side and cached like the built-in sets. A
missing or malformed dataset is an error that shows the layout expected under the
root; `--allow-download` (BENCH_ALLOW_DOWNLOAD=1) lets torchvision fetch the sets it
can fetch, where the machine has internet.

Splits: the train split of the source is divided into the harness's train and
validation splits (a seeded 10%, at most 5000 images, for validation); the source's
test split is the test split. GTSRB's training set is made of tracks, ~30 frames of
one physical sign each (file names <track>_<frame>.ppm in each class folder): its
validation split holds out whole tracks (seeded, until 10% of the frames), so no
near-duplicate frame of a validation sign is in train. SUN397 has no official split here: a seeded 70/10/20.
ImageNet (used as a control dataset) is read from its `val` folder as the test split
and from `train` for train/val, each capped (`MAX_IMAGES`), at 224 px: holding all of
ImageNet as tensors is not the point of a control task.

Class names and templates: OpenAI's CLIP prompts where open_clip ships them
(ImageNet's 1000 names and 80 templates); OpenAI's published template sets for the
others, with the datasets' own class names (GTSRB: the official sign meanings).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.core import process
from bench.core.registry import DATASETS
from bench.data.base import LabeledDataset, Split, cached_arrays

MAX_IMAGES = {"train": 20000, "val": 2000, "test": 10000}  # ImageFolder sets only
FOLDER_SIDE = 224

CIFAR_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
]  # fmt: skip
GTSRB_TEMPLATES = [
    'a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
    'a close up photo of a "{}" traffic sign.',
]  # fmt: skip
SVHN_TEMPLATES = ['a photo of the number: "{}".']
PHOTO_TEMPLATES = ["a photo of a {}.", "a photo of the {}."]
GTSRB_CLASSES = [
    "speed limit 20 km/h", "speed limit 30 km/h", "speed limit 50 km/h", "speed limit 60 km/h",
    "speed limit 70 km/h", "speed limit 80 km/h", "end of speed limit 80 km/h", "speed limit 100 km/h",
    "speed limit 120 km/h", "no passing", "no passing for vehicles over 3.5 tons",
    "right of way at the next intersection", "priority road", "yield", "stop", "no vehicles",
    "vehicles over 3.5 tons prohibited", "no entry", "general caution", "dangerous curve to the left",
    "dangerous curve to the right", "double curve", "bumpy road", "slippery road",
    "road narrows on the right", "road work", "traffic signals", "pedestrians", "children crossing",
    "bicycles crossing", "beware of ice or snow", "wild animals crossing",
    "end of all speed and passing limits", "turn right ahead", "turn left ahead", "ahead only",
    "go straight or right", "go straight or left", "keep right", "keep left", "roundabout mandatory",
    "end of no passing", "end of no passing for vehicles over 3.5 tons",
]  # fmt: skip


class DatasetMissingError(FileNotFoundError):
    """A dataset is not under the data root; the message shows the layout expected."""


def data_root() -> Path:
    root = process.current().data_root
    if not root:
        raise DatasetMissingError("no data root: pass --data-root DIR (or set BENCH_DATA_ROOT)")
    return Path(root).expanduser()


def _allow_download() -> bool:
    return process.current().allow_download


@dataclass(frozen=True)
class RealSpec:
    name: str
    layout: str  # shown in errors: what must exist under the data root
    required: tuple[str, ...]  # paths relative to the root checked before anything loads
    loader: Callable[[Path, bool], dict[str, np.ndarray]]
    classnames: Callable[[Path], list[str]]
    templates: list[str]
    downloadable: bool = True


def missing_files(spec: RealSpec, root: Path) -> list[str]:
    return [str(root / r) for r in spec.required if not (root / r).exists()]


def _hwc_to_chw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _carve_val(x: np.ndarray, y: np.ndarray, seed: int = 0, groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The source's train split -> (train, val): a seeded 10% (<= 5000) for validation.
    With `groups` (one id per image), whole groups go to validation, in a seeded order,
    until it holds at least that many images."""
    rng = np.random.default_rng(seed)
    n_val = min(5000, max(1, len(y) // 10))
    if groups is None:
        perm = rng.permutation(len(y))
        val, train = perm[:n_val], perm[n_val:]
    else:
        ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        order = rng.permutation(len(ids))
        taken = order[: int(np.searchsorted(np.cumsum(counts[order]), n_val)) + 1]
        in_val = np.isin(inverse, taken)
        val, train = np.flatnonzero(in_val), np.flatnonzero(~in_val)
    return {"train_x": x[train], "train_y": y[train], "val_x": x[val], "val_y": y[val]}


def gtsrb_tracks(paths: list[str]) -> np.ndarray:
    """GTSRB's track of each training image, "<class folder>/<track>", from its file
    name <track>_<frame>.ppm (a file named otherwise is its own track)."""
    out = []
    for path in paths:
        p = Path(path)
        track, sep, _ = p.stem.partition("_")
        out.append(f"{p.parent.name}/{track}" if sep else str(p))
    return np.asarray(out)


def _resized_uint8(images, n: int, side: int) -> np.ndarray:
    """n PIL images (any iterable) -> uint8 (n, 3, side, side) (bicubic, RGB)."""
    from PIL import Image

    out = np.empty((n, 3, side, side), np.uint8)
    for i, img in enumerate(images):
        img = img.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        out[i] = np.asarray(img, np.uint8).transpose(2, 0, 1)
    return out


def _torchvision(cls_name: str, side: int | None = None, split_arg: str = "train"):
    """A loader for a torchvision dataset class; `side` resizes PIL-backed sets."""

    def load(root: Path, download: bool) -> dict[str, np.ndarray]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)

        def get(train: bool):
            if split_arg == "train":
                return cls(str(root), train=train, download=download)
            return cls(str(root), split="train" if train else "test", download=download)

        out = {}
        for train in (True, False):
            ds = get(train)
            if hasattr(ds, "data") and isinstance(ds.data, np.ndarray):
                x = ds.data
                x = _hwc_to_chw(x) if x.shape[-1] == 3 else x
                y = np.asarray(getattr(ds, "targets", None) if hasattr(ds, "targets") else ds.labels)
            else:  # file-backed (GTSRB): decode and resize every image
                x = _resized_uint8((ds[i][0] for i in range(len(ds))), len(ds), side or 32)
                y = np.asarray([ds[i][1] for i in range(len(ds))])
            if train:
                groups = gtsrb_tracks([p for p, _ in ds._samples]) if cls_name == "GTSRB" else None
                out.update(_carve_val(x, y.astype(np.int64), groups=groups))
            else:
                out["test_x"], out["test_y"] = x, y.astype(np.int64)
        return out

    return load


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's batch files (dicts of bytes, lists and numpy arrays) and nothing
    else: any other class in the stream is refused instead of imported and run."""

    ALLOWED = frozenset(
        {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
         ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
         ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    )  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a dataset file")


def _read_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        return {
            (k.decode() if isinstance(k, bytes) else k): v for k, v in _ArraysOnly(f, encoding="bytes").load().items()
        }


def _cifar(folder: str, train_files: list[str], label_key: str, tv_class: str):
    """CIFAR's python batches, read here (torchvision's reader insists on the official
    checksums, so it cannot read a subset or a test-made copy); --allow-download fetches
    the official files through torchvision first."""

    def load(root: Path, download: bool) -> dict[str, np.ndarray]:
        if download and not (root / folder).exists():
            import torchvision.datasets as tvd

            getattr(tvd, tv_class)(str(root), train=True, download=True)

        def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
            batches = [_read_batch(root / folder / f) for f in files]
            x = np.concatenate([np.asarray(b["data"], np.uint8).reshape(-1, 3, 32, 32) for b in batches])
            y = np.concatenate([np.asarray(b[label_key], np.int64) for b in batches])
            return x, y

        out = _carve_val(*read(train_files))
        out["test_x"], out["test_y"] = read(["test_batch" if tv_class == "CIFAR10" else "test"])
        return out

    return load


def _image_folder(sub: str, own_split: bool) -> Callable[[Path, bool], dict[str, np.ndarray]]:
    """ImageFolder trees, capped per split (MAX_IMAGES) and resized to FOLDER_SIDE."""

    def load(root: Path, download: bool) -> dict[str, np.ndarray]:
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import default_loader

        def take(folder: ImageFolder, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = _resized_uint8((default_loader(folder.samples[i][0]) for i in idx), len(idx), FOLDER_SIDE)
            return x, np.asarray([folder.samples[i][1] for i in idx], np.int64)

        rng = np.random.default_rng(0)
        out = {}
        if own_split:  # imagenet: train/ and val/
            train = ImageFolder(str(root / sub / "train"))
            val = ImageFolder(str(root / sub / "val"))
            if len(train.classes) != 1000 or train.classes != val.classes:
                raise ValueError(
                    f"{root / sub}: train/ has {len(train.classes)} class folders and val/ {len(val.classes)}; "
                    "both need the same 1000 (one per wnid, in ImageNet's order)"
                )
            idx = rng.permutation(len(train))[: MAX_IMAGES["train"] + MAX_IMAGES["val"]]
            x, y = take(train, idx[: MAX_IMAGES["train"]])
            out["train_x"], out["train_y"] = x, y
            out["val_x"], out["val_y"] = take(train, idx[MAX_IMAGES["train"] :])
            out["test_x"], out["test_y"] = take(val, rng.permutation(len(val))[: MAX_IMAGES["test"]])
        else:  # sun397: one tree of leaf class folders, seeded 70/10/20
            folder = _LeafFolders(root / sub)
            perm = rng.permutation(len(folder.samples))
            a, b = int(0.7 * len(perm)), int(0.8 * len(perm))
            for split, idx in (("train", perm[:a]), ("val", perm[a:b]), ("test", perm[b:])):
                out[f"{split}_x"], out[f"{split}_y"] = take(folder, idx[: MAX_IMAGES[split]])
        return out

    return load


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


class _LeafFolders:
    """SUN397's tree: classes are the folders that hold images, at any depth under a
    first-letter level (a/abbey, a/apartment_building/outdoor, ...), in sorted order."""

    def __init__(self, base: Path):
        leaves: dict[str, list[Path]] = {}
        for path in sorted(base.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                leaves.setdefault(path.parent.relative_to(base).as_posix(), []).append(path)
        self.classes = sorted(leaves)
        self.samples = [(str(p), i) for i, c in enumerate(self.classes) for p in leaves[c]]

    @staticmethod
    def readable(cls: str) -> str:
        parts = cls.split("/")
        parts = parts[1:] if len(parts) > 1 and len(parts[0]) == 1 else parts  # drop the letter level
        return " ".join(parts).replace("_", " ")


def _leaf_classes(sub: str) -> Callable[[Path], list[str]]:
    def names(root: Path) -> list[str]:
        return [_LeafFolders.readable(c) for c in _LeafFolders(root / sub).classes]

    return names


def _imagenet_classes(root: Path) -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _imagenet_templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def _tv_classes(cls_name: str, fallback: list[str] | None = None) -> Callable[[Path], list[str]]:
    def names(root: Path) -> list[str]:
        if fallback is not None:
            return list(fallback)
        if cls_name == "CIFAR100":
            names = _read_batch(root / "cifar-100-python" / "meta")["fine_label_names"]
            return [(n.decode() if isinstance(n, bytes) else n).replace("_", " ") for n in names]
        if cls_name == "STL10":
            return (root / "stl10_binary" / "class_names.txt").read_text().split()
        return []

    return names


SPECS = [
    RealSpec(
        "cifar10", "DATA_ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python version)",
        ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"),
        _cifar("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "labels", "CIFAR10"),
        _tv_classes("CIFAR10", ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck"]),
        CIFAR_TEMPLATES,
    ),
    RealSpec(
        "cifar100", "DATA_ROOT/cifar-100-python/{train, test, meta} (the python version)",
        ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        _cifar("cifar-100-python", ["train"], "fine_labels", "CIFAR100"), _tv_classes("CIFAR100"), CIFAR_TEMPLATES,
    ),
    RealSpec(
        "svhn", "DATA_ROOT/train_32x32.mat and DATA_ROOT/test_32x32.mat (the cropped-digits format)",
        ("train_32x32.mat", "test_32x32.mat"), _torchvision("SVHN", split_arg="split"),
        _tv_classes("SVHN", [str(i) for i in range(10)]), SVHN_TEMPLATES,
    ),
    RealSpec(
        "stl10", "DATA_ROOT/stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt}",
        ("stl10_binary/train_X.bin", "stl10_binary/test_X.bin", "stl10_binary/class_names.txt"),
        _torchvision("STL10", split_arg="split"), _tv_classes("STL10"), PHOTO_TEMPLATES,
    ),
    RealSpec(
        "gtsrb", "DATA_ROOT/gtsrb/GTSRB/Training/<class>/*.ppm and DATA_ROOT/gtsrb/GTSRB/Final_Test/Images "
        "+ DATA_ROOT/gtsrb/GT-final_test.csv (torchvision's GTSRB layout)",
        ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images"), _torchvision("GTSRB", 32, split_arg="split"),
        _tv_classes("GTSRB", GTSRB_CLASSES), GTSRB_TEMPLATES,
    ),
    RealSpec(
        "sun397", "DATA_ROOT/SUN397/<letter>/<class>/*.jpg (ImageFolder tree)", ("SUN397",),
        _image_folder("SUN397", own_split=False), _leaf_classes("SUN397"), PHOTO_TEMPLATES, downloadable=False,
    ),
    RealSpec(
        "imagenet", "DATA_ROOT/imagenet/{train,val}/<wnid>/*.JPEG (ImageFolder trees, 1000 class folders each)",
        ("imagenet/train", "imagenet/val"), _image_folder("imagenet", own_split=True), _imagenet_classes, [],
        downloadable=False,
    ),
]  # fmt: skip


def check(spec: RealSpec) -> list[str]:
    """Problems that would stop `spec` from loading (empty: it can load), checked by file
    existence only, so a whole suite is checked in well under a second."""
    try:
        root = data_root()
    except DatasetMissingError as e:
        return [f"{spec.name}: {e}"]
    missing = missing_files(spec, root)
    if missing and not (_allow_download() and spec.downloadable):
        hint = " (or pass --allow-download)" if spec.downloadable else ""
        return [f"{spec.name}: missing {m}; expected layout: {spec.layout}{hint}" for m in missing]
    return []


# Files the loaders read beyond the ones `required` checks for.
READ_TOO = {
    "cifar10": [f"cifar-10-batches-py/data_batch_{i}" for i in range(2, 6)],
    "stl10": ["stl10_binary/train_y.bin", "stl10_binary/test_y.bin"],
}


def input_files(spec: RealSpec) -> list[tuple[str, Path]]:
    """The dataset's files that enter trial ids by content (bench.core.inputs): every file it
    reads from a fixed name. ImageFolder trees (gtsrb, sun397, imagenet: up to a million
    files) are identified by their path only."""
    try:
        root = data_root()
    except DatasetMissingError:
        return []
    names = [*spec.required, *READ_TOO.get(spec.name, ())]
    return [(rel, root / rel) for rel in dict.fromkeys(names) if (root / rel).is_file()]


def load_real(spec: RealSpec) -> LabeledDataset:
    problems = check(spec)
    if problems:
        raise DatasetMissingError("; ".join(problems))
    root = data_root()
    from bench.core.inputs import digest

    key = {"name": spec.name, "root": str(root.resolve()), "caps": MAX_IMAGES, "side": FOLDER_SIDE, "v": 1}
    files = {rel: digest(path, f"--data-root file of {spec.name}") for rel, path in input_files(spec)}
    if files:  # changed files rebuild the cached arrays too
        key["files"] = files
    try:
        arrays = cached_arrays(
            key | ({"val": "tracks"} if spec.name == "gtsrb" else {}),  # a GTSRB cache with random frames is stale
            lambda: spec.loader(root, _allow_download() and spec.downloadable),
        )
    except (OSError, RuntimeError, ValueError, KeyError, IndexError, pickle.UnpicklingError) as e:
        raise DatasetMissingError(
            f"{spec.name}: could not read the files under {root} ({type(e).__name__}: {e}); "
            f"expected layout: {spec.layout}"
        ) from None
    splits = {
        s: Split(torch.from_numpy(arrays[f"{s}_x"]), torch.from_numpy(arrays[f"{s}_y"]))
        for s in ("train", "val", "test")
    }
    templates = spec.templates or _imagenet_templates()
    return LabeledDataset(spec.name, spec.classnames(root), templates, **splits)


def _register(spec: RealSpec) -> None:
    def factory() -> LabeledDataset:
        return load_real(spec)

    factory.check = lambda: check(spec)  # type: ignore[attr-defined]
    factory.input_files = lambda: input_files(spec)  # type: ignore[attr-defined]
    DATASETS.register(spec.name, f"real: {spec.layout}", real=True)(factory)


for _spec in SPECS:
    _register(_spec)
