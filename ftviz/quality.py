"""Per-sample suspicion scores with Cleanlab: feature-space outliers and label issues.

Functions take and return numpy arrays, keyword-only. :func:`score_run` applies them to every
snapshot of a run and writes ``scores.parquet``.

Conventions
-----------
``outlier_score`` = 1 - Cleanlab's ``OutOfDistribution`` feature score (cosine kNN, k = 10 by
default), so *higher* means *more atypical*, in [0, 1]. ``label_quality`` is Cleanlab's
self-confidence label quality score: *lower* means the given label is *more suspicious*.
"""

from __future__ import annotations

import warnings

import numpy as np

from ftviz.config import ScoreConfig, check_section
from ftviz.errors import FtvizError
from ftviz.numerics import NeighbourSearch, exact_neighbours, softmax


def outlier_scores(embedding: np.ndarray, *, k: int = 10, method: str = "auto", device: str = "auto",
                   distances: np.ndarray | None = None) -> np.ndarray:
    """Cleanlab's kNN outlier score of each row, flipped so higher = more atypical.

    Parameters
    ----------
    embedding : (N, D) features; N must exceed k.
    method : "cleanlab" calls ``cleanlab.outlier.OutOfDistribution`` as is; "knn" computes the
        same cosine k-nearest-neighbour distances (:func:`cosine_knn_distances`, on the GPU when
        there is one) and hands them to Cleanlab's own distance-to-score transform; "auto"
        takes "knn" where Cleanlab would use the cosine metric (D > 3), else "cleanlab".
    device : for "knn": "auto" (cuda when available), "cpu" or "cuda".
    distances : for "knn": (N, k) the cosine distances to each row's k nearest other rows, when
        already found (:func:`score_frame`), else the search is made here.

    Returns
    -------
    (N,) float64 in [0, 1].
    """
    features = np.asarray(embedding, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"embedding must be (N, D), got shape {features.shape}")
    if len(features) <= k:
        raise FtvizError(f"the outlier score needs more than k={k} probe samples, got {len(features)}")
    if method not in ("auto", "knn", "cleanlab"):
        raise ValueError(f"method must be 'auto', 'knn' or 'cleanlab', got {method!r}")
    if not uses_knn(method, features.shape[1]):
        from cleanlab.outlier import OutOfDistribution

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = OutOfDistribution(params={"k": k}).fit_score(features=features, verbose=False)
        return 1.0 - np.asarray(scores, dtype=np.float64)
    from cleanlab.internal.outlier import correct_precision_errors, transform_distances_to_scores

    if distances is None:
        distances = cosine_knn_distances(features, k=k, device=device)
    average = distances.mean(axis=1)
    # Cleanlab's defaults: t = 1 and the median average distance as the scale.
    scale = float(max(np.median(average), 100 * np.finfo(np.float64).eps))
    scores = transform_distances_to_scores(average, 1, scaling_factor=scale)
    scores = correct_precision_errors(scores, average, "cosine")
    return 1.0 - np.asarray(scores, dtype=np.float64)


def uses_knn(method: str, dimensions: int) -> bool:
    """Whether the outlier score searches neighbours itself ("knn") rather than through Cleanlab."""
    return method == "knn" or (method == "auto" and dimensions > 3)


def neighbour_queries(section: ScoreConfig, shape: tuple[int, int]) -> list[tuple]:
    """The neighbour sets a frame of ``shape`` (N, D) needs for its scores (see NeighbourSearch)."""
    count, dimensions = shape
    return [("cosine", section.k, None)] if uses_knn(section.method, dimensions) and count > section.k else []


def cosine_knn_distances(
    features: np.ndarray, *, k: int, device: str = "auto", block: int = 1024, search: str = "auto",
    margin: int = 16,
) -> np.ndarray:
    """Cosine distances (1 - cos) from each row to its k nearest *other* rows, ascending.

    Brute force, like scikit-learn's ``NearestNeighbors(metric="cosine")`` that Cleanlab uses:
    :func:`ftviz.numerics.exact_neighbours`, here on the GPU when there is one and with its bf16
    candidate search on a GPU (``device``, ``search`` and ``margin`` as there), since
    the outlier score runs at every frame.

    Parameters
    ----------
    features : (N, D) float32.

    Returns
    -------
    (N, k) float64.
    """
    return exact_neighbours(features, k, metric="cosine", block=block, device=device, search=search, margin=margin)[1]


def label_scores(*, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cleanlab label quality and issue flags from logits.

    Parameters
    ----------
    logits : (N, C) model outputs before softmax.
    labels : (N,) given labels, int.

    Returns
    -------
    label_quality : (N,) float64 in [0, 1], lower = more suspicious.
    is_label_issue : (N,) bool, Cleanlab's ``find_label_issues`` (prune by noise rate).
    """
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits (N, C) and labels (N,) disagree: {logits.shape} vs {labels.shape}")
    return label_scores_from_probs(probs=softmax(logits), labels=labels)


def label_scores_from_probs(*, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cleanlab's label quality (self-confidence) and ``find_label_issues`` flags for (N, C) probs.

    Returns (quality (N,) float64, low = suspicious; issues (N,) bool).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = get_label_quality_scores(labels, probs)
        try:
            issues = find_label_issues(labels, probs, n_jobs=1)
        except (ValueError, ZeroDivisionError):
            # Degenerate predictions (e.g. step 0 of a random network predicting one class):
            # no confident joint can be estimated, so nothing is flagged at this step.
            issues = np.zeros(len(labels), dtype=bool)
    return np.asarray(quality, dtype=np.float64), np.asarray(issues, dtype=bool)


SCORE_COLUMNS = ("outlier_score", "label_quality", "is_label_issue", "predicted_label", "confidence")


def score_frame(embedding: np.ndarray, logits: np.ndarray, labels: np.ndarray, section: ScoreConfig, *,
                neighbours: NeighbourSearch | None = None) -> dict:
    """One snapshot's scores: a dict of (N,) arrays named :data:`SCORE_COLUMNS`.

    embedding (N, D), logits (N, C), labels (N,) given labels; ``section`` the ``[score]``
    settings (k, method, device); ``neighbours`` the frame's shared search, if any.
    """
    found, queries = None, neighbour_queries(section, embedding.shape)
    if queries:
        # The neighbour search first: numpy alone, so a follower still importing cleanlab in
        # another thread finishes that meanwhile. The cosine neighbours are kept with the
        # scores (N x k int32): the detect stage's kNN label vote on the last frame reads them.
        if neighbours is None:
            neighbours = NeighbourSearch(embedding, queries, device=section.device, search="auto")
        found, distances = neighbours.get("cosine", section.k)
        outlier = outlier_scores(embedding, k=section.k, method=section.method, distances=distances)
    else:
        outlier = outlier_scores(embedding, k=section.k, method=section.method, device=section.device)
    probs = softmax(logits)
    quality, issues = label_scores_from_probs(probs=probs, labels=labels)
    frame = {"outlier_score": np.asarray(outlier), "label_quality": np.asarray(quality),
             "is_label_issue": np.asarray(issues), "predicted_label": probs.argmax(1).astype(np.int64),
             "confidence": probs.max(1)}
    if found is not None:
        frame["neighbours"] = found.astype(np.int32)
    return frame


def score_frames(run, section: ScoreConfig, steps, *, progress: bool = False, neighbours=None):
    """Score each of ``steps`` not yet recorded under ``analysis/score/`` and record it.

    The follower calls this as snapshots land, :func:`score_run` for every step after
    training: the same numbers either way, and a stop loses at most the frame in progress.
    ``neighbours(step, embedding)``, if given, returns the frame's shared NeighbourSearch.
    Returns the :class:`ftviz.framecache.FrameCache` the frames are in.
    """
    from tqdm.auto import tqdm

    cache = score_cache(run, section)
    labels = run.samples()["given_label"].to_numpy()
    todo = [step for step in steps if not cache.has(step)]
    for step in tqdm(todo, desc="score", unit="frame", disable=not progress, leave=False):
        embedding, logits = run.load_snapshot(step)
        if len(embedding) != len(labels):
            raise FtvizError(
                f"{run.path}: snapshot {step} has {len(embedding)} rows but samples.parquet has "
                f"{len(labels)}; the run is inconsistent, rerun training"
            )
        if not (np.isfinite(embedding).all() and np.isfinite(logits).all()):
            raise FtvizError(f"{run.path}: snapshot step {step} holds NaN or infinite embeddings or logits "
                             "(training diverged); rerun training with a lower train.lr")
        search = neighbours(step, embedding) if neighbours is not None else None
        cache.put(step, score_frame(embedding, logits, labels, section, neighbours=search))
    return cache


def recorded_neighbours(run, step: int, *, k: int) -> np.ndarray | None:
    """The cosine neighbours (N, >= k) int64, nearest first, the score stage recorded for
    ``step``'s embedding, or None (not recorded, too few, or a damaged file)."""
    import json

    from ftviz.framecache import FrameCache

    try:
        settings = json.loads((run.path / "analysis" / "score" / "settings.json").read_text())
    except (OSError, ValueError):
        return None
    frame = FrameCache(run, "score", settings).get(step)  # read only: never opened (nothing removed)
    found = None if frame is None else frame.get("neighbours")
    count = len(frame["label_quality"]) if frame is not None and "label_quality" in frame else -1
    if found is None or found.ndim != 2 or len(found) != count or found.shape[1] < k or k < 1:
        return None
    if found.size and (found.min() < 0 or found.max() >= count):
        return None
    return found.astype(np.int64)


def score_cache(run, section: ScoreConfig):
    """The score stage's per-frame files for these settings (see :mod:`ftviz.framecache`)."""
    from ftviz.framecache import FrameCache

    return FrameCache(run, "score", {"k": section.k, "method": section.method, "device": section.device}).open()


def score_run(run, section: ScoreConfig, *, progress: bool = True) -> None:
    """Score every snapshot of ``run`` with the ``[score]`` settings and write ``scores.parquet``.

    Columns: step, id, outlier_score, label_quality, is_label_issue, predicted_label,
    confidence (softmax probability of the predicted label). Frames the follower already
    scored are read from ``analysis/score/``.
    """
    import pandas as pd

    from ftviz.rundir import write_parquet

    run.require("train")
    check_section(section, "score")  # a section built in code never met ftviz.config.validate
    ids = run.samples()["id"].to_numpy()
    steps = run.snapshot_steps()
    with run.stage("score", k=section.k, method=section.method):
        cache = score_frames(run, section, steps, progress=progress)
        tables = []
        for step in steps:
            frame = cache.get(step)
            if frame is None:  # damaged since it was written: make it again
                cache.path(step).unlink(missing_ok=True)
                score_frames(run, section, [step])
                frame = cache.get(step)
            tables.append(pd.DataFrame({"step": np.full(len(ids), step, dtype=np.int64), "id": ids,
                                        **{column: frame[column] for column in SCORE_COLUMNS}}))
        write_parquet(run.file("scores.parquet"), pd.concat(tables, ignore_index=True))
