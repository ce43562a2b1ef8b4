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

from ftviz.errors import FtvizError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, computed in float64, returned as float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def outlier_scores(embedding: np.ndarray, *, k: int = 10, method: str = "auto", device: str = "auto") -> np.ndarray:
    """Cleanlab's kNN outlier score of each row, flipped so higher = more atypical.

    Parameters
    ----------
    embedding : (N, D) features; N must exceed k.
    method : "cleanlab" calls ``cleanlab.outlier.OutOfDistribution`` as is; "knn" computes the
        same cosine k-nearest-neighbour distances with blocked matrix products (torch, on the GPU
        when there is one) and hands them to Cleanlab's own distance-to-score transform; "auto"
        takes "knn" where Cleanlab would use the cosine metric (D > 3), else "cleanlab".
    device : for "knn": "auto" (cuda when available), "cpu" or "cuda".

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
    if method == "cleanlab" or (method == "auto" and features.shape[1] <= 3):
        from cleanlab.outlier import OutOfDistribution

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = OutOfDistribution(params={"k": k}).fit_score(features=features, verbose=False)
        return 1.0 - np.asarray(scores, dtype=np.float64)
    from cleanlab.internal.outlier import correct_precision_errors, transform_distances_to_scores

    distances = cosine_knn_distances(features, k=k, device=device)
    average = distances.mean(axis=1)
    # Cleanlab's defaults: t = 1 and the median average distance as the scale.
    scale = float(max(np.median(average), 100 * np.finfo(np.float64).eps))
    scores = transform_distances_to_scores(average, 1, scaling_factor=scale)
    scores = correct_precision_errors(scores, average, "cosine")
    return 1.0 - np.asarray(scores, dtype=np.float64)


def cosine_knn_distances(
    features: np.ndarray, *, k: int, device: str = "auto", block: int = 1024, search: str = "auto",
    margin: int = 16,
) -> np.ndarray:
    """Cosine distances (1 - cos) from each row to its k nearest *other* rows, ascending.

    Brute force, like scikit-learn's ``NearestNeighbors(metric="cosine")`` that Cleanlab uses,
    as blocked matrix products with a top-k per block, so memory stays at block x N.
    ``search="bf16"`` finds ``k + margin`` candidates with a bf16 product (several times the fp32
    throughput on GPUs and AMX CPUs) and re-ranks them exactly in fp32: the rounding of bf16
    (~4e-3 on a cosine) is covered by the margin (identical to the fp32 search on a clustered
    10,000 x 768 test; margin 8 already changed 1% of the rows there), and the distances
    returned are fp32 values. "auto" uses it for N > 4096 where bf16 is fast, else "fp32".

    Parameters
    ----------
    features : (N, D) float32.

    Returns
    -------
    (N, k) float64.
    """
    import torch

    from ftviz.embed import cpu_has_fast_bf16

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if search == "auto":
        fast = device.startswith("cuda") or cpu_has_fast_bf16()
        search = "bf16" if fast and len(features) > 4096 else "fp32"
    X = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    norms = X.norm(dim=1, keepdim=True)
    X = X / torch.where(norms > 0, norms, torch.ones_like(norms))
    coarse = X.to(torch.bfloat16) if search == "bf16" else X
    width = min(len(X) - 1, k + margin) if search == "bf16" else k
    out = torch.empty((len(X), k), dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, len(X), block):
            similarity = coarse[start : start + block] @ coarse.T  # (B, N)
            rows = torch.arange(similarity.shape[0], device=device)
            similarity[rows, rows + start] = -torch.inf  # a point is not its own neighbour
            top = similarity.topk(width, dim=1)
            if search == "bf16":  # exact fp32 cosines of the candidates, then the real top k
                exact = torch.einsum("bd,bcd->bc", X[start : start + block], X[top.indices])
                values = exact.topk(k, dim=1).values
            else:
                values = top.values
            out[start : start + block] = (1.0 - values.double()).clamp_(min=0.0).cpu()
    return out.numpy()


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


def score_run(run, config=None, *, progress: bool = True) -> None:
    """Score every snapshot of ``run`` and write ``scores.parquet``.

    Columns: step, id, outlier_score, label_quality, is_label_issue, predicted_label,
    confidence (softmax probability of the predicted label).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from ftviz.rundir import write_parquet

    run.require("train")
    k = config.k if config is not None else 10
    method = config.method if config is not None else "auto"
    device = config.device if config is not None else "auto"
    samples = run.samples()
    labels = samples["given_label"].to_numpy()
    steps = run.snapshot_steps()
    with run.stage("score", k=k, method=method):
        tables = []
        for step in tqdm(steps, desc="score", unit="frame", disable=not progress, leave=False):
            embedding, logits = run.load_snapshot(step)
            if len(embedding) != len(labels):
                raise FtvizError(
                    f"{run.path}: snapshot {step} has {len(embedding)} rows but samples.parquet has "
                    f"{len(labels)}; the run is inconsistent, rerun training"
                )
            probs = softmax(logits)
            quality, issues = label_scores_from_probs(probs=probs, labels=labels)
            tables.append(pd.DataFrame({
                "step": np.full(len(labels), step, dtype=np.int64),
                "id": samples["id"].to_numpy(),
                "outlier_score": outlier_scores(embedding, k=k, method=method, device=device),
                "label_quality": quality,
                "is_label_issue": issues,
                "predicted_label": probs.argmax(1).astype(np.int64),
                "confidence": probs.max(1),
            }))
        write_parquet(run.file("scores.parquet"), pd.concat(tables, ignore_index=True))
