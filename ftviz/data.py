"""Datasets as uint8 image arrays with labels and class names, plus recorded label noise.

Every source becomes an :class:`ImageSet` (images (N, H, W, 3) uint8, labels (N,) int64), so
the stages never see where the data came from. :func:`load_splits` turns a ``[data]`` config
into the training set and the fixed probe set, with injected noise recorded in both.

Sources: ``digits`` (scikit-learn's handwritten digits, offline, the default), ``synthetic``
(for tests), and the sources in :data:`RAW_LOADERS` (CIFAR-10 and image folders register
themselves there).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ftviz.errors import FtvizError


@dataclass
class ImageSet:
    """images (N, H, W, 3) uint8; labels (N,) int64 in [0, len(class_names))."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.class_names)


@dataclass
class Splits:
    """What training needs: the train set and the probe set, each with given and true labels.

    ``train.labels`` and ``probe.labels`` are the labels the model sees (noise injected);
    ``*_true_labels`` are the originals, so detectors can be scored.
    """

    dataset: str
    train: ImageSet
    probe: ImageSet
    train_true_labels: np.ndarray
    probe_true_labels: np.ndarray
    # Asymmetric noise only: class c's labels were flipped to noise_map[c] (recorded in run.json).
    noise_map: list[int] | None = None
    # Training sample ids (row i of ``train`` is sample train_ids[i]): positions in the training
    # split before any fix dropped samples, so runs with and without fixes name the same sample
    # alike. None: 0..len(train)-1.
    train_ids: np.ndarray | None = None
    # Hash of the training split's images before fixes (ftviz.dynamics.split_fingerprint).
    train_fingerprint: str = ""
    # What data.fixes changed: {"relabelled": n, "dropped": n} (empty without fixes).
    fixes_applied: dict | None = None

    @property
    def train_sample_ids(self) -> np.ndarray:
        return np.arange(len(self.train)) if self.train_ids is None else np.asarray(self.train_ids, dtype=np.int64)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def num_classes(self) -> int:
        return len(self.train.class_names)


# name -> loader(path) returning {"train": ImageSet, "test": ImageSet | None}; a loader with
# an ``image_size`` keyword is also given data.image_size (image folders resize as they read).
RawLoader = Callable[..., dict]
RAW_LOADERS: dict[str, RawLoader] = {}


def register_source(name: str) -> Callable[[RawLoader], RawLoader]:
    """Register ``loader(path[, image_size=...])`` as ``data.dataset = name``."""

    def decorator(loader: RawLoader) -> RawLoader:
        RAW_LOADERS[name] = loader
        return loader

    return decorator


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, H, W, C) uint8 images to (N, size, size, C) uint8."""
    from PIL import Image

    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
        resized = np.asarray(pil.resize((size, size), Image.BILINEAR))
        out[i] = resized.reshape(size, size, -1)
    return out


def load_digits_images(image_size: int = 32) -> ImageSet:
    """scikit-learn's 1,797 handwritten digits, 8x8 grey in [0, 16], as RGB uint8 images."""
    pixels, target = _digits_arrays()
    grey = (pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)[..., None]
    grey = resize_images(grey, image_size)
    rgb = np.repeat(grey, 3, axis=-1)
    return ImageSet(rgb, target, [str(d) for d in range(10)])


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (1797, 64) float64, target (1797,) int64), read from the file scikit-learn ships.

    The file is read directly, as ``sklearn.datasets.load_digits`` reads it: importing
    scikit-learn to call that costs ~1.5 s of a run's start (its import, not the data), paid
    before training in every run. Where the file is not at its usual place, scikit-learn's loader.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as text:
                table = np.loadtxt(text, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target.astype(np.int64)


def make_synthetic(
    n: int = 600, num_classes: int = 10, image_size: int = 32, *, seed: int = 0
) -> ImageSet:
    """Class templates (smooth random colour patterns) plus per-image noise: easy to learn."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(num_classes, 4, 4, 3)).astype(np.uint8)
    templates = resize_images(coarse, image_size).astype(np.float32)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = templates[labels] + rng.normal(0, 25, size=(n, image_size, image_size, 3))
    return ImageSet(
        images.clip(0, 255).astype(np.uint8),
        labels.astype(np.int64),
        [f"class{c}" for c in range(num_classes)],
    )


NOISE_KINDS = ("symmetric", "asymmetric")


def inject_label_noise(
    labels: np.ndarray,
    rate: float,
    num_classes: int,
    *,
    seed: int,
    kind: str = "symmetric",
    confused_with: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * N)`` labels, chosen uniformly at random.

    ``kind="symmetric"`` sends each chosen label to a uniformly chosen *other* class;
    ``kind="asymmetric"`` sends a label of class c to ``confused_with[c]``, its most confused
    neighbour class (see :func:`most_confused_classes`), as real annotation errors do
    (Patrini et al. 2017 call this class-conditional, "asymmetric" noise).

    Returns (noisy labels (N,) int64, flipped mask (N,) bool).
    """
    if kind not in NOISE_KINDS:
        raise FtvizError(f"unknown label noise {kind!r}; set data.noise to one of: {', '.join(NOISE_KINDS)}")
    rng = np.random.default_rng(seed)
    noisy = labels.astype(np.int64).copy()
    flipped = np.zeros(len(labels), dtype=bool)
    count = int(round(rate * len(labels)))
    if count == 0 or num_classes < 2:
        return noisy, flipped
    chosen = rng.choice(len(labels), size=count, replace=False)
    if kind == "asymmetric":
        target = np.asarray(confused_with, dtype=np.int64) if confused_with is not None else None
        if target is None or target.shape != (num_classes,) or np.any(target == np.arange(num_classes)):
            raise ValueError("asymmetric noise needs confused_with: (C,) int, another class for every class")
        noisy[chosen] = target[noisy[chosen]]
    else:
        shift = rng.integers(1, num_classes, size=count)  # 1..C-1 never lands on the same class
        noisy[chosen] = (noisy[chosen] + shift) % num_classes
    flipped[chosen] = True
    return noisy, flipped


def most_confused_classes(images: np.ndarray, labels: np.ndarray, num_classes: int, *, block: int = 4096) -> np.ndarray:
    """For every class, the other class its images are most often mistaken for, without a model.

    The confusion is that of the nearest-class-mean classifier in pixel space, on the clean
    labels: each image is compared with every class's mean image, and class c's neighbour is
    the other class j whose mean its images are most often closest to (off-diagonal argmax of
    the confusion counts). Ties, and classes whose images are never closer to another mean,
    go to the class whose mean image is nearest to c's. Deterministic, needs no trained
    network (which would itself be trained on the noise), and measures confusion between
    actual images rather than a hand-written map; on the digits it gives
    0->6, 1->9, 2->3, 3->9, 4->8, 5->9, 6->1, 7->8, 8->1, 9->7.

    Parameters
    ----------
    images : (N, H, W, 3) uint8.
    labels : (N,) true labels in [0, num_classes).

    Returns
    -------
    (num_classes,) int64; entry c is never c (a class absent from ``labels`` maps to the
    present class with the nearest mean).
    """
    flat = images.reshape(len(images), -1)
    labels = np.asarray(labels, dtype=np.int64)
    present = np.bincount(labels, minlength=num_classes) > 0
    means = np.zeros((num_classes, flat.shape[1]), dtype=np.float64)
    for c in np.flatnonzero(present):
        means[c] = flat[labels == c].mean(axis=0, dtype=np.float64)
    mean_sq = (means**2).sum(1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for start in range(0, len(flat), block):  # blocks keep a 50k x 3072 set out of float64 memory
        x = flat[start : start + block].astype(np.float64)
        distance = mean_sq[None, :] - 2.0 * x @ means.T  # + |x|^2, the same for every class
        distance[:, ~present] = np.inf
        np.add.at(confusion, (labels[start : start + block], distance.argmin(1)), 1)
    between = mean_sq[:, None] + mean_sq[None, :] - 2.0 * means @ means.T
    between[:, ~present] = np.inf
    np.fill_diagonal(confusion, -1)
    np.fill_diagonal(between, np.inf)
    # Most confusions first, then the nearest mean: lexsort's last key is the primary one.
    return np.array([np.lexsort((between[c], -confusion[c]))[0] for c in range(num_classes)], dtype=np.int64)


def stratified_indices(
    labels: np.ndarray, n: int, *, seed: int, key: str = "n", source: str = "the split"
) -> np.ndarray:
    """Sorted indices of a class-stratified subset of size ``n`` (all when n <= 0 or n == N).

    Asking for more than ``N`` is an error, not a silent cap (a run must not be smaller than
    its config says); ``key`` (the config key) and ``source`` (what is sampled) word it.
    """
    if n > len(labels):
        raise FtvizError(
            f"{key} = {n} but {source} has only {len(labels)} images; set {key} to at most {len(labels)} (0 = all)"
        )
    if n <= 0 or n == len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    try:
        chosen, _ = train_test_split(
            np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed
        )
    except ValueError:  # too few per class to stratify: fall back to a plain random subset
        chosen = np.random.default_rng(seed).choice(len(labels), size=n, replace=False)
    return np.sort(chosen)


def hold_out_test_split(images: ImageSet, fraction: float, *, seed: int, dataset: str) -> tuple[ImageSet, ImageSet]:
    """(train, test): ``fraction`` of every class held out, for a source without a test split.

    Stratifying needs at least two images of every class and, on each side, at least as many
    images as classes; data that cannot give that is refused in one line, before any training.
    """
    from sklearn.model_selection import train_test_split

    counts = np.bincount(images.labels, minlength=len(images.class_names))
    lonely = [images.class_names[c] for c in np.flatnonzero(counts == 1)]
    advice = 'add images, or set data.probe = "train" to probe the training set'
    if lonely:
        raise FtvizError(
            f'data.probe = "test" holds out data.test_fraction = {fraction} of every class of the {dataset} '
            f"training split, but class {lonely[0]!r} has only 1 image"
            f"{f' ({len(lonely)} classes have 1)' if len(lonely) > 1 else ''}; {advice}"
        )
    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(images)), test_size=fraction, stratify=images.labels, random_state=seed
        )
    except ValueError as error:  # e.g. fewer held-out images than classes
        reason = " ".join(str(error).split())
        raise FtvizError(
            f'data.probe = "test" cannot hold out data.test_fraction = {fraction} of the {len(images)} {dataset} '
            f"images stratified by class ({reason}); change data.test_fraction or {advice}"
        ) from None
    return images.subset(np.sort(train_idx)), images.subset(np.sort(test_idx))


def check_image_set(images: ImageSet, what: str) -> None:
    """Errors for data the pipeline cannot use: empty, one class, wrong shape or dtype."""
    if len(images) == 0:
        raise FtvizError(f"{what} is empty: point data.path at a folder with images")
    if images.images.ndim != 4 or images.images.shape[-1] != 3 or images.images.dtype != np.uint8:
        raise FtvizError(
            f"{what} images must be (N, H, W, 3) uint8, got {images.images.shape} {images.images.dtype}"
        )
    if len(images.images) != len(images.labels):
        raise FtvizError(f"{what}: {len(images.images)} images but {len(images.labels)} labels")
    present = np.unique(images.labels)
    if len(present) < 2:
        raise FtvizError(f"{what} has only one class ({present.tolist()}): ftviz needs at least two")
    if present.min() < 0 or present.max() >= len(images.class_names):
        raise FtvizError(f"{what} has labels outside 0..{len(images.class_names) - 1}")


def load_raw(config) -> dict:
    """{"train": ImageSet, "test": ImageSet | None} for the configured source."""
    name = config.dataset
    if name == "digits":
        return {"train": load_digits_images(config.image_size), "test": None}
    if name == "synthetic":
        size = config.train_size or 600
        return {"train": make_synthetic(size, image_size=config.image_size), "test": None}
    _load_optional_sources()
    if name not in RAW_LOADERS:
        known = ", ".join(sorted({"digits", "synthetic", *RAW_LOADERS}))
        raise FtvizError(f"unknown dataset {name!r}; choose one of: {known}")
    loader = RAW_LOADERS[name]
    if "image_size" in inspect.signature(loader).parameters:
        return loader(config.path, image_size=config.image_size)
    return loader(config.path)


def _load_optional_sources() -> None:
    """Import modules that register more sources (CIFAR-10, image folders), if present."""
    import importlib

    for module in ("ftviz.sources",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def load_splits(config, *, seed: int) -> Splits:
    """Build the train and probe sets from a :class:`ftviz.config.DataConfig`.

    The probe is the train split (``probe = "train"``, as in the default) or the test split;
    datasets without an official test split are split with ``test_fraction``, stratified.
    Noise of kind ``noise`` (symmetric | asymmetric) is injected into both sets at ``noise_rate``
    with seeds derived from ``seed``.
    """
    raw = load_raw(config)
    train, test = raw["train"], raw.get("test")
    check_image_set(train, f"the {config.dataset} training split")
    if config.probe == "test" and test is None:
        train, test = hold_out_test_split(train, config.test_fraction, seed=seed, dataset=config.dataset)
    held_out = f" (after holding out data.test_fraction = {config.test_fraction} for the probe)" \
        if config.probe == "test" and raw.get("test") is None else ""
    train = train.subset(stratified_indices(train.labels, config.train_size, seed=seed, key="data.train_size",
                                            source=f"the {config.dataset} training split{held_out}"))
    num_classes = len(train.class_names)
    noise = config.noise
    # One map for train and probe, from the clean training images (see most_confused_classes).
    confused_with = most_confused_classes(train.images, train.labels, num_classes) \
        if noise == "asymmetric" and config.noise_rate > 0 else None
    flips = {"kind": noise, "confused_with": confused_with}
    train_noisy, _ = inject_label_noise(train.labels, config.noise_rate, num_classes, seed=seed + 1, **flips)
    from ftviz.dynamics import split_fingerprint

    fingerprint = split_fingerprint(train.images)
    train_ids, applied = np.arange(len(train)), None
    if config.fixes:
        # Before the probe is drawn: a probe from the training split sees the fixed labels.
        train_noisy, keep, applied = apply_label_fixes(config.fixes, train_noisy, num_classes=num_classes,
                                                        fingerprint=fingerprint, how=config.fix)
        train, train_noisy, train_ids = train.subset(keep), train_noisy[keep], keep
    if config.probe == "train":
        probe_source, probe_noisy_all = train, train_noisy
    else:
        check_image_set(test, f"the {config.dataset} test split")
        probe_source = test
        probe_noisy_all, _ = inject_label_noise(test.labels, config.noise_rate, num_classes, seed=seed + 2, **flips)
    probe_split = "test split" if config.probe == "test" else (
        "training set" + (f" (data.train_size = {config.train_size})" if config.train_size > 0 else ""))
    probe_idx = stratified_indices(
        probe_source.labels, config.probe_size, seed=seed, key="data.probe_size",
        source=f"the {config.dataset} {probe_split} the probe is drawn from (data.probe = \"{config.probe}\")")
    probe = ImageSet(probe_source.images[probe_idx], probe_noisy_all[probe_idx], probe_source.class_names)
    return Splits(
        dataset=config.dataset,
        train=ImageSet(train.images, train_noisy, train.class_names),
        probe=probe,
        train_true_labels=train.labels,
        probe_true_labels=probe_source.labels[probe_idx],
        noise_map=None if confused_with is None else confused_with.tolist(),
        train_ids=train_ids,
        train_fingerprint=fingerprint,
        fixes_applied=applied,
    )


FIX_COLUMNS = ("split", "id", "suggested_label", "is_label_issue")


def apply_label_fixes(path, labels: np.ndarray, *, num_classes: int, fingerprint: str, how: str):
    """Apply an export of ``ftviz quality RUN --export`` to the training labels.

    The rows with ``split`` "train" and ``is_label_issue`` true are relabelled to their
    ``suggested_label`` (``how="relabel"``; a row whose suggestion is blank is dropped),
    dropped (``how="drop"``), or each as its ``fix`` cell says (``how="auto"``: "drop" or a
    blank suggestion drops it, anything else relabels; a file without the column is
    relabelled). With ``how`` "drop" or "auto", a training row whose ``fix`` is "drop" is
    dropped whatever its flag (the export marks so the rows next in line that a retrain is
    better without, :func:`ftviz.detectors.retrain_drop_count`). A file naming ids the
    split does not have, labels outside 0..C-1, or made for another training split (its
    ``dataset`` column, when present, is the split's fingerprint) is refused in one line.

    Parameters
    ----------
    labels : (N,) int64 training labels (noise injected), indexed by sample id.

    Returns
    -------
    (labels (N,) int64 relabelled, keep (K,) int64 the ids kept in order, {"relabelled": n, "dropped": n})
    """
    import pandas as pd

    path = str(path)
    where = f"data.fixes = {path!r}"
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise FtvizError(f"{where}: no such file; give the CSV written by `ftviz quality RUN --export FILE.csv`") from None
    except Exception as error:
        raise FtvizError(f"{where} is not a readable CSV ({type(error).__name__}); give the file "
                         "`ftviz quality RUN --export` writes") from None
    missing = [c for c in FIX_COLUMNS if c not in table]
    if missing:
        raise FtvizError(f"{where} lacks the columns {', '.join(missing)}; it must have "
                         f"{', '.join(FIX_COLUMNS)} (as `ftviz quality RUN --export` writes)")
    if "dataset" in table and len(table):
        made_for = {str(value) for value in table["dataset"].dropna().unique()}
        if made_for and made_for != {fingerprint}:
            raise FtvizError(f"{where} was exported for another training split (dataset {sorted(made_for)[0]!r}, "
                             f"this one is {fingerprint!r}): export it from a run of this data config")
    train_rows = table[table["split"].astype(str) == "train"]
    marked = _as_bool(train_rows["is_label_issue"], where)
    if how != "relabel" and "fix" in train_rows:  # rows a retrain drops though no reviewer flag is on them
        marked |= (train_rows["fix"].fillna("").astype(str).str.strip().str.lower() == "drop").to_numpy()
    flagged = train_rows[marked]
    ids = _as_ints(flagged["id"], "id", where)
    bad = ids[(ids < 0) | (ids >= len(labels))]
    if len(bad):
        raise FtvizError(f"{where} names training id {int(bad[0])}, but the training split has ids 0..{len(labels) - 1}"
                         f" ({len(bad)} such rows): export it from a run of this data config")
    if len(np.unique(ids)) != len(ids):
        raise FtvizError(f"{where} names training id {int(ids[np.argmax(np.bincount(ids))])} more than once; "
                         "keep one row per sample")
    labels = np.asarray(labels, dtype=np.int64).copy()
    # The rows dropped: every flagged row (data.fix = "drop"), else those with no suggested
    # label (left blank, or cleared by hand: no label is better than a guessed one).
    suggestion = flagged["suggested_label"]
    if how == "drop":
        drop = np.ones(len(ids), dtype=bool)
    else:
        drop = suggestion.isna().to_numpy() | (suggestion.astype(str).str.strip() == "").to_numpy()
        if how == "auto" and "fix" in flagged:
            drop |= (flagged["fix"].fillna("").astype(str).str.strip().str.lower() == "drop").to_numpy()
    suggested = _as_ints(suggestion[~drop], "suggested_label", where)
    outside = suggested[(suggested < 0) | (suggested >= num_classes)]
    if len(outside):
        raise FtvizError(f"{where} suggests label {int(outside[0])}, outside 0..{num_classes - 1} "
                         f"({len(outside)} such rows): fix those rows or export again")
    relabelled = ids[~drop]
    changed = int((labels[relabelled] != suggested).sum())
    labels[relabelled] = suggested
    keep = np.setdiff1d(np.arange(len(labels)), ids[drop])
    if len(np.unique(labels[keep])) < 2:
        raise FtvizError(f"{where} with data.fix = {how!r} drops {int(drop.sum())} rows and leaves fewer than two "
                         "classes to train on")
    return labels, keep, {"relabelled": changed, "dropped": int(drop.sum())}


def _as_ints(column, name: str, where: str) -> np.ndarray:
    values = _numeric(column)
    if values is None or np.isnan(values).any() or (values != np.round(values)).any():
        raise FtvizError(f"{where}: column {name} must hold whole numbers on every flagged training row")
    return values.astype(np.int64)


def _as_bool(column, where: str) -> np.ndarray:
    text = column.astype(str).str.strip().str.lower()
    truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    unknown = text[~text.isin(list(truth))]
    if len(unknown):
        raise FtvizError(f"{where}: is_label_issue must be true or false, got {unknown.iloc[0]!r}")
    return text.map(truth).to_numpy(bool)


def _numeric(column) -> np.ndarray | None:
    import pandas as pd

    try:
        return pd.to_numeric(column, errors="raise").to_numpy(np.float64)
    except (ValueError, TypeError):
        return None
