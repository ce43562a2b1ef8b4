"""Training dynamics: every training sample's logits, as training itself computed them.

Training already runs every training sample forward once per epoch; keeping those logits
(per sample id, at each step it is trained on) costs no extra forward pass, and area under the
margin, data maps and forgetting events were defined on exactly these outputs (Pleiss et al.
2020, Swayamdipta et al. 2020, Toneva et al. 2019). The detect stage reads them
(:func:`ftviz.detectors.detect_training_set`) to examine the whole training set, where a wrong
label teaches the model.

Files (run directory)::

    dynamics/step-XXXXXXX.npz   the rows recorded since the previous file, up to optimizer
                                step XXXXXXX: ids (M,) int64 (training sample ids),
                                step (M,) int64 (updates applied before that forward pass),
                                logits (M, C) float16, and with ``train.dynamics_features``
                                features (M, D) float16: the embedding the head read (the
                                input of the logits), the same vector a snapshot keeps for a
                                probe sample; rows in training order
    train_samples.parquet       id, given_label, true_label, is_noisy, class_name, true_class_name
    train_images.npy            (N, h, w, 3) uint8 thumbnails of the training images, row i =
                                row i of train_samples.parquet in id order; no side over 32 px
                                (larger images box-filtered down, smaller ones kept as they
                                are). ftviz's own loop writes it; the Trainer callback has no
                                images and writes none.

A row's ``step`` counts the updates applied before its forward pass, as a snapshot's step
does: rows of step s were computed with the weights of snapshot s. Rows are buffered on the
device (no synchronisation per batch) and written at epoch ends, resume saves (checkpoints) and
the end; under several processes every rank's rows are gathered in one collective and rank 0
writes. On resume from step S every file past S is removed: those steps are trained again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftviz.errors import FtvizError
from ftviz.rundir import snapshot_name

DYNAMICS_DIR = "dynamics"
TRAIN_SAMPLES = "train_samples.parquet"
TRAIN_IMAGES = "train_images.npy"
# Longest side of a kept training image: enough to recognise a sample on a card or in
# Spotlight, and 50,000 CIFAR-10 images stay 150 MB (the images of ImageNet-sized folders
# are box-filtered down to it rather than kept at 224 px, 49x the bytes).
TRAIN_IMAGE_SIDE = 32


def chunk_name(last_step: int) -> str:
    return snapshot_name(last_step)


def _chunk_step(path: Path) -> int:
    return int(path.stem.split("-")[1])


def chunk_paths(run) -> list[Path]:
    """The dynamics files of ``run`` in step order ([] when it recorded none)."""
    folder = run.path / DYNAMICS_DIR
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("step-*.npz") if p.stem.split("-")[1].isdigit()), key=_chunk_step)


def has_dynamics(run) -> bool:
    return bool(chunk_paths(run)) and run.file(TRAIN_SAMPLES).is_file()


class DynamicsLog:
    """Buffer of (id, step, logits) rows of training batches, written to ``run/dynamics/``.

    Parameters
    ----------
    run : the :class:`ftviz.rundir.RunDir`.

    Every rank records its own rows (:meth:`record`) and every rank calls :meth:`flush` at the
    same points (it gathers); rank 0 writes.
    """

    def __init__(self, run):
        self.run = run
        self._clear()
        self.rows_written = 0

    def _clear(self) -> None:
        self._ids, self._steps, self._order, self._logits, self._features = [], [], [], [], []

    def record(self, step: int, ids, logits, *, features=None, order=None) -> None:
        """Keep one batch's rows.

        Parameters
        ----------
        step : optimizer updates applied before this forward pass.
        ids : (B,) int tensor or array, the training sample ids of the batch.
        logits : (B, C) tensor or array, what the forward pass computed (kept as float16).
        features : (B, D) tensor or array, the embedding the logits were computed from (kept as
            float16), or None; a log keeps features for every batch or for none.
        order : (B,) int, each row's position in the global batch of this step (rows from
            several processes are written in this order); default: arrival order.
        """
        import torch

        logits = torch.as_tensor(logits).detach()
        ids = torch.as_tensor(ids, device=logits.device).reshape(-1)
        if logits.ndim != 2 or len(logits) != len(ids):
            raise ValueError(f"logits must be (B, C) with B = len(ids); got {tuple(logits.shape)} and {len(ids)}")
        if self._ids and (features is None) != (not self._features):
            raise ValueError("features must be given for every batch of a log or for none")
        if features is not None:
            features = torch.as_tensor(features, device=logits.device).detach().reshape(len(ids), -1)
            self._features.append(features.to(torch.float16))
        if order is None:
            order = torch.arange(len(ids), device=logits.device) + sum(len(i) for i in self._ids)
        # float16 on the device: no copy to the host (and no synchronisation) per batch.
        self._logits.append(logits.to(torch.float16))
        self._ids.append(ids.to(torch.int64))
        self._order.append(torch.as_tensor(order, device=logits.device).reshape(-1).to(torch.int64))
        self._steps.append(torch.full((len(ids),), int(step), dtype=torch.int64, device=logits.device))

    @property
    def pending(self) -> int:
        return sum(len(i) for i in self._ids)

    def flush(self, last_step: int, *, gather: bool = True) -> Path | None:
        """Write the buffered rows as ``dynamics/step-<last_step>.npz`` (rank 0); returns its path.

        ``gather`` False: this process's rows only, without a collective (one process, or a
        save that not every rank makes).
        """
        from ftviz import distributed

        table = self._take()
        if gather and distributed.rank_and_world()[1] > 1:
            table = _gather_table(table)
        elif table is not None:
            table = table.cpu().numpy()
        if not distributed.is_main() or table is None or not len(table):
            return None
        ids, steps, order = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2].astype(np.int64)
        classes = int(table[0, 3])
        rows = np.lexsort((order, steps))  # training order: by step, then place in the global batch
        path = self.run.path / DYNAMICS_DIR / chunk_name(last_step)
        features = table[rows, 4 + classes:] if table.shape[1] > 4 + classes else None
        _write_chunk(path, ids[rows], steps[rows], table[rows, 4:4 + classes].astype(np.float16), features)
        self.rows_written += len(rows)
        return path

    def _take(self) -> np.ndarray | None:
        """The buffer as one (R, 4 + C [+ D]) float64 table [id, step, order, C, logits..., features...];
        emptied. One table, so several processes' rows travel in one collective."""
        import torch

        if not self._ids:
            return None
        ids, logits = torch.cat(self._ids), torch.cat(self._logits)
        parts = [
            torch.stack([ids, torch.cat(self._steps), torch.cat(self._order),
                         torch.full_like(ids, logits.shape[1])], 1).double(),
            logits.double(),  # float16 -> float64 is exact
        ]
        if self._features:
            parts.append(torch.cat(self._features).double())
        self._clear()
        return torch.cat(parts, 1)

    def restore(self, step: int) -> None:
        """Resume from ``step``: drop the buffer and every file of rows past ``step`` (rank 0)."""
        from ftviz import distributed

        self._clear()
        if not distributed.is_main():
            return
        for path in chunk_paths(self.run):
            if _chunk_step(path) > step:
                path.unlink()


def _gather_table(table):
    """Every rank's (R_r, K) float64 table, concatenated in rank order on every rank (numpy).

    Row counts may differ between ranks: counts are gathered first and the tables padded.
    float64 carries int64 ids and float16 logits exactly (gloo has no float16 collectives).
    """
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    device = table.device if table is not None else torch.device("cpu")
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    width = torch.tensor([table.shape[1] if table is not None else 0, len(table) if table is not None else 0],
                         dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(width) for _ in range(world)]
    dist.all_gather(sizes, width)
    columns = max(int(s[0]) for s in sizes)
    longest = max(int(s[1]) for s in sizes)
    if longest == 0:
        return None
    padded = torch.zeros((longest, columns), dtype=torch.float64, device=device)
    if table is not None and len(table):
        padded[: len(table)] = table.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(size[1])] for part, size in zip(parts, sizes)]).cpu().numpy()


def _write_chunk(path: Path, ids: np.ndarray, steps: np.ndarray, logits: np.ndarray, features=None) -> None:
    from ftviz.rundir import atomic_path

    arrays = dict(ids=ids.astype(np.int64), step=steps.astype(np.int64), logits=logits.astype(np.float16))
    if features is not None:
        arrays["features"] = np.asarray(features).astype(np.float16)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def _read_chunk(path: Path, names: tuple[str, ...], *, optional: str | None = None) -> dict[str, np.ndarray] | None:
    """The arrays ``names`` of one dynamics file, with ``optional`` too; None when the file
    lacks ``optional`` (features). Raises :class:`FtvizError` naming the file when it is damaged."""
    try:
        with np.load(path) as data:
            if optional is not None and optional not in data.files:
                return None
            return {name: data[name] for name in (*names, *([optional] if optional else []))}
    except Exception as error:  # zip / key errors from a damaged file
        raise FtvizError(f"{path} is corrupt ({type(error).__name__}); delete {path.parent} and rerun "
                         "training to record the training dynamics again") from None


def sample_positions(sample_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position (M,), known (M,) bool): the row of each of ``ids`` in the sorted ``sample_ids``,
    and whether it is there at all."""
    position = np.searchsorted(sample_ids, ids)
    known = (position < len(sample_ids)) & (sample_ids[np.minimum(position, len(sample_ids) - 1)] == ids)
    return position, known


def load_dynamics(run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every recorded row of ``run``: (ids (M,) int64, step (M,) int64, logits (M, C) float16),
    in training order. Raises :class:`FtvizError` naming the file when one is damaged."""
    ids, steps, logits = [], [], []
    for path in chunk_paths(run):
        chunk = _read_chunk(path, ("ids", "step", "logits"))
        ids.append(chunk["ids"].astype(np.int64))
        steps.append(chunk["step"].astype(np.int64))
        logits.append(chunk["logits"])
    if not ids:
        raise FtvizError(f"{run.path} has no training dynamics ({DYNAMICS_DIR}/); rerun training with "
                         "train.dynamics = true")
    out = np.concatenate(ids), np.concatenate(steps), np.concatenate(logits)
    if out[2].ndim != 2 or not (len(out[0]) == len(out[1]) == len(out[2])):
        raise FtvizError(f"{run.path}/{DYNAMICS_DIR} holds rows of different lengths; rerun training")
    return out


def last_features(run, sample_ids: np.ndarray) -> np.ndarray | None:
    """Each training sample's features at its last recorded pass: (N, D) float32, row i for
    ``sample_ids[i]``, NaN for a sample without any; None when the newest file holds none
    (``train.dynamics_features`` off, a Trainer model whose head was not found, an older run).

    Files are read newest first and reading stops once every sample has its row, so memory
    and reading stay about one epoch's features whatever the number of epochs.
    """
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    out, filled = None, np.zeros(len(sample_ids), dtype=bool)
    for path in reversed(chunk_paths(run)):
        chunk = _read_chunk(path, ("ids",), optional="features")
        if chunk is None:
            return out  # older rows without features (the setting changed on resume)
        ids, features = chunk["ids"].astype(np.int64), chunk["features"]
        if features.ndim != 2 or len(features) != len(ids):
            raise FtvizError(f"{path} holds features of shape {features.shape} for {len(ids)} rows; rerun training")
        if out is None:
            out = np.full((len(sample_ids), features.shape[1]), np.nan, dtype=np.float32)
        elif features.shape[1] != out.shape[1]:
            raise FtvizError(f"{path.parent} holds features of different widths; rerun training")
        position, known = sample_positions(sample_ids, ids)
        # Newest row first: reversed, np.unique's first index is the latest pass in this file.
        rows = np.flatnonzero(known)[::-1]
        _, first = np.unique(position[rows], return_index=True)
        rows = rows[first]
        rows = rows[~filled[position[rows]]]
        out[position[rows]] = features[rows]
        filled[position[rows]] = True
        if filled.all():
            break
    return out


def histories(ids: np.ndarray, steps: np.ndarray, logits: np.ndarray, count: int):
    """Per-sample histories of training-time logits, one slot per time a sample was trained on.

    Slot k of sample i holds the logits of the k-th forward pass of sample i (about epoch k:
    with the ragged last batch dropped, a sample may skip an epoch). A sample seen fewer times
    than the most-seen one keeps its last logits in the slots after (forward fill).

    Parameters
    ----------
    ids, steps : (M,) int64, rows in training order; logits : (M, C).
    count : N, the number of training samples (ids 0..N-1).

    Returns
    -------
    history : (K, N, C) float32 logits; slot_steps : (K, N) int64 step of each slot (-1 where
    the sample was never seen); times_seen : (N,) int64.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= count):
        raise FtvizError(f"training dynamics name sample ids up to {int(ids.max())}, but train_samples.parquet "
                         f"has {count}; rerun training")
    rows = np.argsort(ids, kind="stable")  # by id, training order kept within an id
    sorted_ids = ids[rows]
    first = np.searchsorted(sorted_ids, sorted_ids, side="left")
    occurrence = np.empty(len(ids), dtype=np.int64)
    occurrence[rows] = np.arange(len(ids)) - first
    times_seen = np.bincount(ids, minlength=count).astype(np.int64)
    slots = int(times_seen.max()) if len(ids) else 0
    num_classes = logits.shape[1]
    history = np.zeros((slots, count, num_classes), dtype=np.float32)
    slot_steps = np.full((slots, count), -1, dtype=np.int64)
    history[occurrence, ids] = logits
    slot_steps[occurrence, ids] = steps
    for k in range(1, slots):  # forward fill the slots after a sample's last pass
        unseen = slot_steps[k] < 0
        history[k, unseen] = history[k - 1, unseen]
        slot_steps[k, unseen] = slot_steps[k - 1, unseen]
    return history, slot_steps, times_seen


def write_train_samples(run, *, ids, given_labels, true_labels, class_names) -> None:
    """``train_samples.parquet``: one row per training sample, like ``samples.parquet`` for the probe."""
    import pandas as pd

    from ftviz.rundir import write_parquet

    names = np.asarray([str(name) for name in class_names], dtype=object)
    given, true = np.asarray(given_labels, dtype=np.int64), np.asarray(true_labels, dtype=np.int64)
    write_parquet(run.file(TRAIN_SAMPLES), pd.DataFrame({
        "id": np.asarray(ids, dtype=np.int64),
        "given_label": given,
        "true_label": true,
        "is_noisy": given != true,
        "class_name": names[given],
        "true_class_name": names[true],
    }))


def thumbnails(images: np.ndarray, *, max_side: int = TRAIN_IMAGE_SIDE) -> np.ndarray:
    """Images no larger than ``max_side`` pixels a side, aspect ratio kept.

    Parameters
    ----------
    images : (N, H, W, 3) uint8 (or (N, H, W) / (N, H, W, 1) grey, made RGB).
    max_side : the longest side allowed; larger images are downscaled with Pillow's box
        filter (each output pixel the mean of the input pixels it covers: no aliasing of fine
        detail), smaller ones are returned as they are (never enlarged).

    Returns
    -------
    (N, h, w, 3) uint8 with max(h, w) <= max_side.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be (N, H, W, 3), got {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    images = images[..., :3]
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    count, height, width = images.shape[:3]
    if max(height, width) <= max_side:
        return np.ascontiguousarray(images)
    from PIL import Image

    factor = max_side / max(height, width)
    size = (max(1, min(max_side, round(width * factor))), max(1, min(max_side, round(height * factor))))
    out = np.empty((count, size[1], size[0], 3), dtype=np.uint8)
    for index in range(count):  # one image at a time: the split is never copied at full size
        out[index] = np.asarray(Image.fromarray(np.ascontiguousarray(images[index])).resize(size, Image.Resampling.BOX))
    return out


def write_train_images(run, *, ids, images) -> None:
    """``train_images.npy``: :func:`thumbnails` of ``images`` (N, H, W, 3) uint8, whose row i is
    training sample ``ids[i]``, written in id order (the order of :func:`read_train_samples`)."""
    from ftviz.rundir import write_npy

    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) != len(images):
        raise ValueError(f"{len(ids)} ids for {len(images)} images")
    order = np.argsort(ids, kind="stable")
    if (order != np.arange(len(ids))).any():
        images = np.asarray(images)[order]
    write_npy(run.file(TRAIN_IMAGES), thumbnails(images))


def read_train_images(run, *, count: int | None = None, mmap: bool = False) -> np.ndarray | None:
    """``train_images.npy``: (N, h, w, 3) uint8, row i = row i of :func:`read_train_samples`;
    None when the run has none (the Trainer callback's runs, runs of an earlier ftviz).

    Parameters
    ----------
    count : N, the rows of ``train_samples.parquet`` (default: read it).
    mmap : map the file instead of reading it (a page needs a few rows of 50,000).

    A run directory is untrusted input: the file is read without unpickling, and one that is
    not such an array raises :class:`FtvizError` (one line).
    """
    path = run.file(TRAIN_IMAGES)
    if not path.is_file():
        return None
    fix = "delete it to show the training samples without images, or rerun training"
    try:
        images = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as error:  # not an .npy, truncated, an object array, ...
        raise FtvizError(f"{path} is damaged ({type(error).__name__}); {fix}") from None
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
            or images.shape[-1] != 3 or not 0 < max(images.shape[1:3]) <= TRAIN_IMAGE_SIDE
            or min(images.shape[1:3]) < 1):
        shape = getattr(images, "shape", None)
        raise FtvizError(f"{path} holds {getattr(images, 'dtype', '?')} {shape}, not uint8 (N, h, w, 3) "
                         f"thumbnails of at most {TRAIN_IMAGE_SIDE} px; {fix}")
    count = len(read_train_samples(run)) if count is None else int(count)
    if len(images) != count:
        raise FtvizError(f"{path} has {len(images)} images for the {count} rows of {TRAIN_SAMPLES}; {fix}")
    return images


def read_train_samples(run):
    """``train_samples.parquet`` in id order; ids must be 0..N-1 after any dropped by a fix:
    returns the table as written (ids need not be contiguous)."""
    table = run.read_parquet(TRAIN_SAMPLES, "train")
    missing = [c for c in ("id", "given_label", "true_label") if c not in table]
    if missing:
        raise FtvizError(f"{run.path}/{TRAIN_SAMPLES} lacks the columns {', '.join(missing)}; rerun training")
    return table.sort_values("id").reset_index(drop=True)


def split_fingerprint(images: np.ndarray) -> str:
    """A short hash of a training split's images (shape included): an export of label fixes
    names the split it was made for, and a fix file for other images is refused."""
    import hashlib

    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr(tuple(images.shape)).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()
