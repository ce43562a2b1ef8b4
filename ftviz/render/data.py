"""Loading what the renderers show from one run directory.

The files are read through the run's typed readers (:class:`ftviz.rundir.RunDir`: per-frame
scores, suspicion, detectors, class names), the ones Spotlight and ``ftviz compare`` use too.
The training set's suspicion (``train_suspicion.parquet`` with ``train_samples.parquet`` and
``train_images.npy``) is read here, for the page and Spotlight alike
(:func:`read_training_suspicion`, :func:`training_suspects`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ftviz.errors import FtvizError
from ftviz.rundir import snapshot_name

TRAIN_SUSPICION = "train_suspicion.parquet"


def suspicion_order(suspicion) -> np.ndarray:
    """Row positions from most to least suspicious: suspicion descending, equal values in row
    order (rows are in id order, so: then id), NaN last. The one ordering of the probe's cards,
    the training set's cards and Spotlight's training rows.

    >>> suspicion_order([0.2, float("nan"), 0.9, 0.2]).tolist()
    [2, 0, 3, 1]
    """
    values = np.asarray(suspicion, dtype=np.float64)
    return np.argsort(-np.where(np.isfinite(values), values, -np.inf), kind="stable")


def scores_per_frame(run, *, steps=None, n_points: int | None = None, columns=None, scores=None,
                     complete: bool = False) -> dict[str, np.ndarray]:
    """Per-frame score arrays from ``scores.parquet``: {column: (T, N) array}, plus "present".

    :meth:`ftviz.rundir.RunDir.frame_scores` (the one reader), under its earlier name.
    """
    return run.frame_scores(columns, steps=steps, count=n_points, scores=scores, complete=complete)


@dataclass
class AnimationData:
    """Everything the renderers show, loaded from one run directory.

    Attributes
    ----------
    steps : (T,) int, the snapshot step of each frame.
    frames : (T, N, 2) float32 aligned coordinates.
    given_labels, true_labels : (N,) int (``true_labels`` None where the run does not know).
    is_noisy : (N,) bool or None, given label differs from the true one (injected noise).
    outlier, quality : (T, N) float64, NaN where a score is missing.
    issue : (T, N) bool; predicted : (T, N) int (-1 where missing).
    top : (T, k) int, ids of the k highest outlier scores per frame.
    train_metrics, eval_metrics : dict of column -> list (NaN as None), sorted by step.
    disparity, knn_overlap, explained_variance : (T,) float (NaN where unknown).
    projection : {"method", "name", ...} from run.json's project record ("pca" for older runs).
    images : (N, H, W, 3) uint8 probe images or None.
    generated : {frame index: PNG path} for the frames with a generated-sample grid.
    suspicion : pandas DataFrame of ``suspicion.parquet`` in id order, or None (older runs).
    detectors : pandas DataFrame of ``detectors.parquet``, or None.
    training : :class:`TrainingSuspects`, the training set's most suspicious samples (runs
        with ``train_suspicion.parquet``), or None. Static: not per frame.
    """

    name: str
    model: str
    dataset: str
    class_names: list[str]
    steps: np.ndarray
    epochs: np.ndarray
    frames: np.ndarray
    given_labels: np.ndarray
    true_labels: np.ndarray | None
    is_noisy: np.ndarray | None
    outlier: np.ndarray
    quality: np.ndarray
    issue: np.ndarray
    predicted: np.ndarray
    top: np.ndarray
    train_metrics: dict
    eval_metrics: dict
    disparity: np.ndarray
    knn_overlap: np.ndarray
    explained_variance: np.ndarray
    projection: dict = field(default_factory=lambda: {"method": "pca", "name": "PCA"})
    images: np.ndarray | None = None
    generated: dict[int, Path] = field(default_factory=dict)
    noise_rate: float = 0.0
    suspicion: object = None
    detectors: object = None
    training: "TrainingSuspects | None" = None

    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def n_points(self) -> int:
        return self.frames.shape[1]

    @property
    def has_noise(self) -> bool:
        return self.is_noisy is not None and bool(self.is_noisy.any())

    @property
    def title(self) -> str:
        return f"{self.name} — {self.model} on {self.dataset}"

    @property
    def subtitle(self) -> str:
        parts = [f"{self.n_points:,} probe samples", f"{self.n_frames} snapshots",
                 f"{len(self.class_names)} classes"]
        if self.noise_rate:
            parts.append(f"{self.noise_rate:.0%} labels flipped")
        parts.append(f"{self.projection.get('name', 'PCA')} projection")
        return " · ".join(parts)


def load_animation_data(run, *, top: int | None = None, with_images: bool = True,
                        with_training: bool = True) -> AnimationData:
    """Read what the animation shows from ``run`` (a :class:`ftviz.rundir.RunDir`).

    Needs the train, score and project stages; raises :class:`MissingStageError` naming the
    command to run otherwise, and :class:`FtvizError` if the files disagree in shape.
    ``suspicion.parquet`` and ``detectors.parquet`` are read when present, and with
    ``with_training`` the training set's most suspicious samples (:func:`training_suspects`;
    their few thumbnails are read whatever ``with_images`` says, which is about the probe's).
    """
    manifest = run.manifest()
    run.require("score")
    frames = np.asarray(run.frames(), dtype=np.float32)
    projection = run.projection()
    samples = run.samples()
    metrics = run.metrics()
    if frames.ndim != 3 or frames.shape[2] != 2:
        raise FtvizError(f"{run.path}/frames.npy must be (T, N, 2), got {frames.shape}; rerun ftviz project {run.path}")
    n_frames, n_points = frames.shape[:2]
    if len(projection) != n_frames:
        raise FtvizError(
            f"{run.path}: frames.npy has {n_frames} frames but projection.parquet {len(projection)} rows; "
            f"rerun ftviz project {run.path}"
        )
    if len(samples) != n_points:
        raise FtvizError(
            f"{run.path}: frames.npy has {n_points} points but samples.parquet {len(samples)} rows; "
            "the run is inconsistent, rerun it"
        )
    if not np.isfinite(frames).all():
        raise FtvizError(f"{run.path}/frames.npy holds NaN or infinite coordinates; rerun ftviz project {run.path}")

    steps = projection["step"].to_numpy().astype(np.int64)
    samples = samples.sort_values("id")
    ids = samples["id"].to_numpy()
    if not np.array_equal(ids, np.arange(n_points)):
        raise FtvizError(f"{run.path}/samples.parquet ids must be 0..N-1; rerun training")
    given, true, noisy = probe_labels(samples)
    per_frame = run.frame_scores(["outlier_score", "label_quality", "is_label_issue", "predicted_label"],
                                 steps=steps, count=n_points)
    top_ids = top_outlier_ids(per_frame["outlier_score"], manifest, top=top)

    dataset = manifest.get("dataset", {})
    training = training_suspects(run, top_count(manifest, top)) if with_training else None
    labels_needed = max(int(np.max(per_frame["predicted_label"], initial=0)) + 1, training_labels(training))
    class_names = run.class_names(labels_needed, samples=samples)

    generated = generated_images(run, steps)
    images = None
    if with_images:
        try:
            images = run.probe_images()
        except FtvizError:
            images = None
        if images is not None and (images.ndim != 4 or len(images) != n_points):
            images = None

    return AnimationData(
        name=str(manifest.get("name", run.path.name)),
        model=str(manifest.get("model", {}).get("name", "model")),
        dataset=str(dataset.get("name", "dataset")),
        class_names=class_names,
        steps=steps,
        epochs=_epochs_at(metrics, steps),
        frames=frames,
        given_labels=given,
        true_labels=true,
        is_noisy=noisy,
        outlier=per_frame["outlier_score"],
        quality=per_frame["label_quality"],
        issue=per_frame["is_label_issue"],
        predicted=per_frame["predicted_label"],
        top=top_ids,
        train_metrics=_metric_columns(metrics, "train"),
        eval_metrics=_metric_columns(metrics, "eval"),
        disparity=_column(projection, "disparity_to_previous", n_frames),
        knn_overlap=_column(projection, "knn_overlap", n_frames),
        explained_variance=_column(projection, "explained_variance", n_frames),
        projection=projection_info(manifest),
        images=images,
        generated=generated,
        noise_rate=float(manifest.get("noise_rate") or 0.0),
        suspicion=run.suspicion(optional=True, count=n_points),
        detectors=run.detectors(),
        training=training,
    )


def probe_labels(samples) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(given (N,) int64, true (N,) int64 or None, is_noisy (N,) bool or None) of samples.parquet
    sorted by id; is_noisy from given != true where the column is absent."""
    given = samples["given_label"].to_numpy().astype(np.int64)
    true = samples["true_label"].to_numpy().astype(np.int64) if "true_label" in samples else None
    noisy = samples["is_noisy"].to_numpy().astype(bool) if "is_noisy" in samples else None
    if noisy is None and true is not None:
        noisy = given != true
    return given, true, noisy


def top_count(manifest: dict, top: int | None = None) -> int:
    """The number of cards a page shows: ``top``, else the run's ``score.top`` (at least 1)."""
    if top is None:
        top = int(manifest.get("config", {}).get("score", {}).get("top", 8))
    return max(1, int(top))


def top_outlier_ids(outlier: np.ndarray, manifest: dict, *, top: int | None = None) -> np.ndarray:
    """(T, top) ids of each frame's most atypical samples (outlier (T, N), NaN last); ``top``
    defaults to the run's ``score.top``."""
    top = min(top_count(manifest, top), outlier.shape[1])
    ranked = np.where(np.isnan(outlier), -np.inf, outlier)
    return np.argsort(-ranked, axis=1, kind="stable")[:, :top]


# ---- the training set (train_suspicion.parquet) ----------------------------------------------
def read_training_suspicion(run):
    """``train_suspicion.parquet`` joined with the labels of ``train_samples.parquet``, in id
    order; None when the run has no such file (no training dynamics, or no detect stage yet).

    Returns
    -------
    pandas.DataFrame, one row per training sample: ``train_suspicion.parquet``'s columns
    (suspicion, suspicion_rank, is_label_issue, issue_step, suggested_label, aum, ...), plus
    ``given_label``, and ``true_label`` / ``is_noisy`` where train_samples.parquet has them,
    plus ``row``: the sample's row in ``train_images.npy``.

    Raises :class:`FtvizError` (one line naming ``ftviz detect``) when the two files disagree.
    """
    from ftviz.dynamics import TRAIN_SAMPLES, read_train_samples

    if not run.file(TRAIN_SUSPICION).is_file():
        return None
    rerun = f"rerun `ftviz detect {run.path}`"
    table = run.read_parquet(TRAIN_SUSPICION, "detect")
    missing = [c for c in ("id", "suspicion", "is_label_issue") if c not in table]
    if missing:
        raise FtvizError(f"{run.path}/{TRAIN_SUSPICION} lacks the columns {', '.join(missing)}; {rerun}")
    if not run.file(TRAIN_SAMPLES).is_file():
        raise FtvizError(f"{run.path} has {TRAIN_SUSPICION} but no {TRAIN_SAMPLES}; {rerun}")
    samples = read_train_samples(run)
    table = table.sort_values("id").reset_index(drop=True)
    ids = table["id"].to_numpy(np.int64)
    if not np.array_equal(ids, samples["id"].to_numpy(np.int64)):
        raise FtvizError(f"{run.path}/{TRAIN_SUSPICION} has {len(table)} rows, not one per row of "
                         f"{TRAIN_SAMPLES} ({len(samples)}); {rerun}")
    table["row"] = np.arange(len(table), dtype=np.int64)
    for column in ("given_label", "true_label", "is_noisy"):
        if column in samples and column not in table:
            table[column] = samples[column].to_numpy()
    return table


class TrainingSuspects(NamedTuple):
    """The training set's most suspicious samples, as a page's training panel shows them.

    table : the ``top`` rows of :func:`read_training_suspicion`, most suspicious first
        (:func:`suspicion_order`).
    images : (top, h, w, 3) uint8 thumbnails of those rows (``train_images.npy``), or None
        when the run has none.
    count : N, the training samples; flagged : how many carry ``is_label_issue``.
    """

    table: object
    images: np.ndarray | None
    count: int
    flagged: int


def training_suspects(run, top: int, *, tolerant: bool = False) -> TrainingSuspects | None:
    """The ``top`` most suspicious training samples with their thumbnails; None without
    ``train_suspicion.parquet``.

    ``tolerant`` (a live page, whose files may be half made): an unreadable table gives None
    and unreadable images no images, rather than an error. Otherwise a damaged
    ``train_images.npy`` or a table that disagrees with ``train_samples.parquet`` raises
    :class:`FtvizError`.
    """
    from ftviz.dynamics import read_train_images

    try:
        table = read_training_suspicion(run)
    except FtvizError:
        if not tolerant:
            raise
        return None
    if table is None:
        return None
    try:
        # Mapped, not read: a page needs ``top`` rows of what may be 50,000 images.
        every_image = read_train_images(run, count=len(table), mmap=True)
    except FtvizError:
        if not tolerant:
            raise
        every_image = None
    chosen = table.iloc[suspicion_order(table["suspicion"])[: max(0, int(top))]].reset_index(drop=True)
    images = None if every_image is None else np.asarray(every_image[chosen["row"].to_numpy(np.int64)])
    flagged = int(table["is_label_issue"].to_numpy(dtype=bool).sum())
    return TrainingSuspects(table=chosen, images=images, count=len(table), flagged=flagged)


def training_labels(training: TrainingSuspects | None) -> int:
    """1 + the largest class label ``training`` names (0 without it): the class names a page needs."""
    if training is None or not len(training.table):
        return 0
    columns = [c for c in ("given_label", "true_label", "suggested_label") if c in training.table]
    return max((int(training.table[c].max()) + 1 for c in columns), default=0)


def generated_images(run, steps) -> dict:
    """{frame index: generated/step-XXXXXXX.png} for the frames that have samples (diffusion runs)."""
    folder = run.path / "generated"
    if not folder.is_dir():
        return {}
    found = {}
    for index, step in enumerate(steps):
        image = folder / snapshot_name(step, ".png")
        if image.is_file():
            found[index] = image
    return found


def projection_info(manifest: dict) -> dict:
    """The project stage's record in run.json: method and its schedule ("pca" for older runs)."""
    from ftviz.project import METHOD_NAMES

    record = manifest.get("stages", {}).get("project", {})
    method = record.get("method") or manifest.get("config", {}).get("project", {}).get("method") or "pca"
    info = {"method": method, "name": record.get("method_name") or METHOD_NAMES.get(method, method)}
    for key in ("basis", "reference", "first_iter", "iter", "last_iter", "perplexity", "neighbors"):
        if key in record:
            info[key] = record[key]
    return info


def _metric_columns(metrics, split: str) -> dict[str, list]:
    table = metrics[metrics["split"] == split].sort_values("step") if "split" in metrics else metrics[:0]
    columns = {}
    for name in ("step", "loss", "accuracy", "true_accuracy"):
        if name in table:
            values = table[name].to_numpy(dtype=np.float64)
            # 5 significant digits: curves drawn on a few hundred pixels (and half the metadata).
            columns[name] = [None if not math.isfinite(v) else (int(v) if name == "step" else float(f"{v:.5g}"))
                             for v in values]
    return columns


def _epochs_at(metrics, steps: np.ndarray) -> np.ndarray:
    if "epoch" not in metrics or not len(metrics):
        return np.full(len(steps), np.nan)
    table = metrics.drop_duplicates("step").sort_values("step")
    return np.interp(steps, table["step"].to_numpy(dtype=float), table["epoch"].to_numpy(dtype=float))


def _column(table, name: str, length: int) -> np.ndarray:
    if name not in table:
        return np.full(length, np.nan)
    return table[name].to_numpy(dtype=np.float64)
