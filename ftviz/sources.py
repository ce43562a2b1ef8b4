"""More image sources: CIFAR-10 (hub, local pickles) and folders of images, one per class.

Each loader takes ``data.path`` and returns ``{"train": ImageSet, "test": ImageSet | None}``;
:func:`ftviz.data.load_splits` draws the probe set and injects noise from there.

``dataset = "cifar10"``
    ``data.path = ""``: ``uoft-cs/cifar10`` through ``datasets.load_dataset`` (online, or
    from the local cache; ``HF_HUB_OFFLINE=1`` is respected). ``data.path`` = a
    ``cifar-10-batches-py`` folder (the official python pickles, or the folder above it, or
    the ``cifar-10-python.tar.gz`` archive itself), or a dataset saved with
    ``DatasetDict.save_to_disk`` (for machines without network).
``dataset = "imagefolder"``
    ``data.path/<class>/<image>`` (one split, divided with ``data.test_fraction``) or
    ``data.path/train/<class>/...`` plus ``data.path/test/<class>/...``. Every image is
    converted to RGB; images whose size differs from the most common size in the folder are
    resized (bilinear) to that size, so all share one (H, W).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from ftviz.data import ImageSet, register_source
from ftviz.errors import FtvizError

CIFAR10_HUB_ID = "uoft-cs/cifar10"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_META = "batches.meta"
CIFAR_SIDE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


# ---- CIFAR-10 ------------------------------------------------------------------------------
@register_source("cifar10")
def load_cifar10(path: str) -> dict:
    """CIFAR-10 as 50,000 train and 10,000 test images (32, 32, 3) uint8 with class names."""
    if not path:
        return load_hf_image_dataset(CIFAR10_HUB_ID)
    location = Path(path).expanduser()
    if location.is_file() and location.name.endswith((".tar.gz", ".tgz", ".tar")):
        return load_cifar10_archive(location)
    if not location.is_dir():
        raise FtvizError(
            f"no CIFAR-10 folder at {path}: set data.path to a cifar-10-batches-py folder, "
            "or to \"\" to load uoft-cs/cifar10 from the hub"
        )
    if (location / "dataset_dict.json").is_file():
        return load_hf_image_dataset(str(location))
    if not (location / CIFAR_META).is_file() and (location / "cifar-10-batches-py").is_dir():
        location = location / "cifar-10-batches-py"
    return load_cifar10_pickles(location)


def load_cifar10_pickles(folder: Path | str) -> dict:
    """Read the official ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``); pickles with bytes keys (the original, Python 2) or str keys."""
    folder = Path(folder)
    needed = (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH, CIFAR_META)
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise FtvizError(
            f"{folder} is not a complete cifar-10-batches-py folder (missing {', '.join(missing)}); "
            "extract cifar-10-python.tar.gz again or point data.path at the right folder"
        )
    return _cifar_from_blobs({name: (folder / name).read_bytes() for name in needed}, str(folder))


def load_cifar10_archive(archive: Path) -> dict:
    """Read ``cifar-10-python.tar.gz`` without extracting it to disk."""
    wanted = {*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH, CIFAR_META}
    blobs = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    blobs[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise FtvizError(f"{archive} is not a readable tar archive ({error}); download it again") from None
    missing = sorted(wanted - set(blobs))
    if missing:
        raise FtvizError(f"{archive} lacks {', '.join(missing)}: it is not cifar-10-python.tar.gz")
    return _cifar_from_blobs(blobs, str(archive))


def _cifar_from_blobs(blobs: dict[str, bytes], where: str) -> dict:
    meta = _unpickle(blobs[CIFAR_META], f"{where}/{CIFAR_META}")
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise FtvizError(f"{where}/{CIFAR_META} has no label_names list; it is not a CIFAR-10 meta file")
    class_names = [_text(name) for name in names]
    train_parts = [_cifar_batch(blobs[name], f"{where}/{name}", len(class_names)) for name in CIFAR_TRAIN_BATCHES]
    test_images, test_labels = _cifar_batch(blobs[CIFAR_TEST_BATCH], f"{where}/{CIFAR_TEST_BATCH}", len(class_names))
    return {
        "train": ImageSet(
            np.concatenate([part[0] for part in train_parts]),
            np.concatenate([part[1] for part in train_parts]),
            class_names,
        ),
        "test": ImageSet(test_images, test_labels, class_names),
    }


def _cifar_batch(blob: bytes, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch: rows of 3,072 bytes (1,024 red, then green, then blue, each row-major)
    -> images (N, 32, 32, 3) uint8 and labels (N,) int64, without a per-image loop."""
    batch = _unpickle(blob, where)
    if "data" not in batch or "labels" not in batch:
        raise FtvizError(f"{where} has no 'data' and 'labels' entries; it is not a CIFAR-10 batch")
    data = np.asarray(batch["data"])
    pixels = 3 * CIFAR_SIDE * CIFAR_SIDE
    if data.ndim != 2 or data.shape[1] != pixels:
        raise FtvizError(
            f"{where}: data has shape {data.shape}, CIFAR-10 rows are {pixels} values (3 x 32 x 32); "
            "this is not a CIFAR-10 batch (CIFAR-100 and other sizes are not supported)"
        )
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or data.min(initial=0) < 0 or data.max(initial=0) > 255:
            raise FtvizError(f"{where}: data must be bytes 0..255, got {data.dtype}")
        data = data.astype(np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise FtvizError(f"{where}: {len(data)} images but {len(labels)} labels; the file is damaged")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise FtvizError(f"{where}: labels outside 0..{num_classes - 1} (batches.meta names {num_classes} classes)")
    images = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def write_cifar10_pickles(folder: Path | str, train: ImageSet, test: ImageSet, *, bytes_keys: bool = True) -> Path:
    """Write ``train`` (split into the five ``data_batch_*``) and ``test`` in the official
    ``cifar-10-batches-py`` format; the inverse of :func:`load_cifar10_pickles`.

    For tests and benchmarks that need CIFAR-format data offline. Images must be
    (N, 32, 32, 3) uint8. ``bytes_keys`` writes b"data" etc. as the original (Python 2) files do.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda name: name.encode()) if bytes_keys else (lambda name: name)

    def dump(name: str, value: dict) -> None:
        with open(folder / name, "wb") as handle:
            pickle.dump({key(k): v for k, v in value.items()}, handle, protocol=2)

    def batch(images: ImageSet, label: str) -> dict:
        if images.images.shape[1:] != (CIFAR_SIDE, CIFAR_SIDE, 3):
            raise ValueError(f"CIFAR-10 images are (N, 32, 32, 3), got {images.images.shape}")
        rows = np.ascontiguousarray(images.images.transpose(0, 3, 1, 2)).reshape(len(images), -1)
        names = [f"{label.replace(' ', '_')}_{i}.png" for i in range(len(images))]
        return {"batch_label": key(label), "labels": images.labels.astype(int).tolist(), "data": rows,
                "filenames": [key(n) for n in names]}

    for number, part in enumerate(np.array_split(np.arange(len(train)), len(CIFAR_TRAIN_BATCHES)), start=1):
        dump(f"data_batch_{number}", batch(train.subset(part), f"training batch {number} of 5"))
    dump(CIFAR_TEST_BATCH, batch(test, "testing batch 1 of 1"))
    dump(CIFAR_META, {"label_names": [key(n) for n in train.class_names],
                      "num_cases_per_batch": int(np.ceil(len(train) / len(CIFAR_TRAIN_BATCHES))),
                      "num_vis": 3 * CIFAR_SIDE * CIFAR_SIDE})
    return folder


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can run code, these cannot."""

    _allowed = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
        ("_codecs", "encode"),  # how protocol 2 stores bytes written by Python 3
    }

    def find_class(self, module, name):
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(blob: bytes, where: str) -> dict:
    """A CIFAR pickle as a dict with str keys (the originals have bytes keys: b"data")."""
    try:
        value = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as error:  # truncated, not a pickle, or a pickle of something else
        raise FtvizError(
            f"{where} is not a readable CIFAR-10 pickle ({type(error).__name__}: {str(error)[:80]}); "
            "download and extract cifar-10-python.tar.gz again"
        ) from None
    if not isinstance(value, dict):
        raise FtvizError(f"{where} holds a {type(value).__name__}, not a CIFAR-10 batch dict")
    return {_text(key): item for key, item in value.items()}


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# ---- datasets from the hub (or saved to disk) -----------------------------------------------
def load_hf_image_dataset(source: str) -> dict:
    """A hub id or a ``save_to_disk`` folder with "train" (and "test") splits, an Image column
    and a ClassLabel column, as ImageSets. The images are decoded once, here."""
    try:
        import datasets
    except ImportError:
        raise FtvizError(
            "loading from the dataset hub needs the `datasets` package: pip install 'ftviz[hub]', "
            "or set data.path to a local cifar-10-batches-py folder"
        ) from None
    from ftviz.models.hub import hub_error

    try:
        if Path(source).is_dir():
            splits = datasets.load_from_disk(source)
        else:
            splits = datasets.load_dataset(source)
    except Exception as error:  # ConnectionError, DatasetNotFoundError, OSError, ...
        raise hub_error(source, error, what="dataset", setting="data.path") from None
    if not isinstance(splits, datasets.DatasetDict) or "train" not in splits:
        raise FtvizError(f"{source} has no 'train' split; ftviz needs train (and test) splits")
    test_name = next((name for name in ("test", "validation", "valid") if name in splits), None)
    return {
        "train": image_set_from_hf(splits["train"], f"{source} train"),
        "test": image_set_from_hf(splits[test_name], f"{source} {test_name}") if test_name else None,
    }


def image_set_from_hf(split, where: str) -> ImageSet:
    """Convert a ``datasets.Dataset`` with one Image and one ClassLabel column."""
    import datasets

    features = split.features
    image_column = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
    label_column = next((k for k, v in features.items() if isinstance(v, datasets.ClassLabel)), None)
    if image_column is None or label_column is None:
        raise FtvizError(
            f"{where}: needs an Image column and a ClassLabel column, found {dict(features)}"
        )
    class_names = list(features[label_column].names)
    labels = np.asarray(split[label_column], dtype=np.int64)
    images = _common_size([np.asarray(image.convert("RGB")) for image in split[image_column]], where)
    return ImageSet(images, labels, class_names)


# ---- image folders ------------------------------------------------------------------------
@register_source("imagefolder")
def load_image_folder(path: str) -> dict:
    """``path/<class>/*.png`` (test None: split later with ``data.test_fraction``) or
    ``path/train/<class>/...`` and ``path/test/<class>/...``.

    Class names are the subfolder names, sorted; subfolders without images are skipped.
    Images are converted to RGB and resized (bilinear) to the folder's most common size.
    """
    if not path:
        raise FtvizError("dataset 'imagefolder' needs data.path: a folder with one subfolder of images per class")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FtvizError(f"no image folder at {path}: set data.path to a folder with one subfolder per class")
    if (root / "train").is_dir():
        train_files, class_names = _class_files(root / "train")
        test_files = None
        test_root = next((root / n for n in ("test", "val", "validation") if (root / n).is_dir()), None)
        if test_root is not None:
            test_files, test_classes = _class_files(test_root)
            unknown = sorted(set(test_classes) - set(class_names))
            if unknown:
                raise FtvizError(f"{test_root} has classes {unknown} that {root / 'train'} lacks; make the two match")
            test_files = [(file, class_names.index(test_classes[label])) for file, label in test_files]
    else:
        train_files, class_names = _class_files(root)
        test_files = None
    every = train_files + (test_files or [])
    images = _common_size([_read_image(file) for file, _ in every], str(root))
    labels = np.asarray([label for _, label in every], dtype=np.int64)
    count = len(train_files)
    return {
        "train": ImageSet(images[:count], labels[:count], class_names),
        "test": ImageSet(images[count:], labels[count:], class_names) if test_files is not None else None,
    }


def _class_files(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """[(image file, class index)] and the class names (subfolders holding images, sorted)."""
    files, class_names = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(f for f in sub.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if images:
            files += [(f, len(class_names)) for f in images]
            class_names.append(sub.name)
    if not files:
        raise FtvizError(f"{folder} has no class subfolders with images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, class_names


def _read_image(file: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise FtvizError(f"cannot read image {file} ({type(error).__name__}); delete or replace it") from None


def _common_size(images: list[np.ndarray], where: str) -> np.ndarray:
    """Stack RGB images (H, W, 3) uint8 into (N, H, W, 3), resizing the ones whose size
    differs from the most common (H, W) with PIL's bilinear filter."""
    if not images:
        return np.zeros((0, CIFAR_SIDE, CIFAR_SIDE, 3), dtype=np.uint8)
    sizes = Counter(image.shape[:2] for image in images)
    (height, width), _ = sizes.most_common(1)[0]
    if len(sizes) > 1:
        from PIL import Image

        images = [
            image if image.shape[:2] == (height, width)
            else np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
            for image in images
        ]
    return np.stack(images)
