"""Loading what the renderers show from one run directory, and the one reader of per-frame scores.

:func:`scores_per_frame` turns ``scores.parquet`` (long: one row per step and sample) into
(T, N) arrays; the page, Spotlight and ``ftviz compare`` all read scores through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftviz.errors import FtvizError

# scores.parquet columns -> (dtype, value where a (step, id) row is missing).
SCORE_COLUMNS = {
    "outlier_score": (np.float64, np.nan),
    "label_quality": (np.float64, np.nan),
    "is_label_issue": (bool, False),
    "predicted_label": (np.int64, -1),
    "confidence": (np.float64, np.nan),
}


def scores_per_frame(run, *, steps=None, n_points: int | None = None, columns=None, scores=None,
                     complete: bool = False) -> dict[str, np.ndarray]:
    """Per-frame score arrays from ``scores.parquet``: {column: (T, N) array}.

    Parameters
    ----------
    run : :class:`ftviz.rundir.RunDir` (its score stage must be done unless ``scores`` is given).
    steps : (T,) snapshot steps, one row of the output each; default the run's snapshot steps.
    n_points : N; default the number of rows of ``samples.parquet``.
    columns : the columns to read (default: those of :data:`SCORE_COLUMNS` the file has);
        a column the file lacks comes back filled with its missing value.
    scores : the table, if already read.
    complete : raise :class:`FtvizError` (naming ``ftviz score``) unless every (step, id)
        pair has a row; otherwise missing rows keep the missing value (NaN, False, -1).

    Returns
    -------
    dict of (T, N) arrays: float64 scores, bool flags, int64 labels; plus "present", (T, N) bool.
    """
    if scores is None:
        scores = run.scores()
    if steps is None:
        steps = run.snapshot_steps()
    if n_points is None:
        n_points = len(run.samples())
    steps = np.asarray(steps, dtype=np.int64)
    n_frames = len(steps)
    if columns is None:
        columns = [c for c in SCORE_COLUMNS if c in scores]
    out = {}
    for column in columns:
        dtype, missing = SCORE_COLUMNS.get(column, (np.float64, np.nan))
        out[column] = np.full((n_frames, n_points), missing, dtype=dtype)
    present = np.zeros((n_frames, n_points), dtype=bool)
    if n_frames and len(scores):
        step_values = scores["step"].to_numpy().astype(np.int64)
        id_values = scores["id"].to_numpy().astype(np.int64)
        order = np.argsort(steps)
        position = np.clip(np.searchsorted(steps[order], step_values), 0, n_frames - 1)
        known = (steps[order][position] == step_values) & (id_values >= 0) & (id_values < n_points)
        rows, cols = order[position[known]], id_values[known]
        present[rows, cols] = True
        for column in columns:
            if column in scores:
                values = scores[column].to_numpy()[known]
                if out[column].dtype.kind in "iub" and values.dtype.kind == "f":
                    values = np.where(np.isnan(values), SCORE_COLUMNS.get(column, (None, -1))[1], values)
                out[column][rows, cols] = values
    if complete and not present.all():
        frame, sample = np.argwhere(~present)[0]
        path = getattr(run, "path", "the run")
        raise FtvizError(
            f"{path}: scores.parquet has no row for step {int(steps[frame])}, id {int(sample)} "
            f"({int((~present).sum())} missing of {present.size}); rerun `ftviz score {path}`"
        )
    out["present"] = present
    return out


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


def load_animation_data(run, *, top: int | None = None, with_images: bool = True) -> AnimationData:
    """Read what the animation shows from ``run`` (a :class:`ftviz.rundir.RunDir`).

    Needs the train, score and project stages; raises :class:`MissingStageError` naming the
    command to run otherwise, and :class:`FtvizError` if the files disagree in shape.
    ``suspicion.parquet`` and ``detectors.parquet`` are read when present.
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
    given = samples["given_label"].to_numpy().astype(np.int64)
    true = samples["true_label"].to_numpy().astype(np.int64) if "true_label" in samples else None
    noisy = samples["is_noisy"].to_numpy().astype(bool) if "is_noisy" in samples else None
    if noisy is None and true is not None:
        noisy = given != true

    per_frame = scores_per_frame(run, steps=steps, n_points=n_points,
                                 columns=["outlier_score", "label_quality", "is_label_issue", "predicted_label"])
    if top is None:
        top = int(manifest.get("config", {}).get("score", {}).get("top", 8))
    top = max(1, min(top, n_points))
    ranked = np.where(np.isnan(per_frame["outlier_score"]), -np.inf, per_frame["outlier_score"])
    top_ids = np.argsort(-ranked, axis=1, kind="stable")[:, :top]

    dataset = manifest.get("dataset", {})
    class_names = [str(c) for c in dataset.get("class_names") or []]
    n_classes = int(max(given.max(initial=0), np.max(per_frame["predicted_label"], initial=0)) + 1)
    if len(class_names) < n_classes:
        from_samples = dict(zip(samples["given_label"], samples.get("class_name", samples["given_label"])))
        class_names = [str(from_samples.get(c, c)) for c in range(n_classes)]

    generated = {}
    folder = run.path / "generated"
    if folder.is_dir():
        for index, step in enumerate(steps):
            image = folder / f"step-{int(step):07d}.png"
            if image.is_file():
                generated[index] = image

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
        suspicion=_suspicion_table(run, n_points),
        detectors=_optional_table(run, "detectors.parquet"),
    )


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


def _optional_table(run, name: str):
    """A table another stage may have written (None when absent: older runs)."""
    if not run.file(name).is_file():
        return None
    return run.read_parquet(name)


def _suspicion_table(run, n_points: int):
    table = _optional_table(run, "suspicion.parquet")
    if table is None:
        return None
    if "id" not in table or "suspicion" not in table:
        raise FtvizError(f"{run.path}/suspicion.parquet needs id and suspicion columns; rerun ftviz detect {run.path}")
    table = table.sort_values("id").reset_index(drop=True)
    if not np.array_equal(table["id"].to_numpy(), np.arange(n_points)):
        raise FtvizError(
            f"{run.path}/suspicion.parquet has {len(table)} rows, not one per probe sample (0..{n_points - 1}); "
            f"rerun ftviz detect {run.path}"
        )
    return table


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
