"""The shared maths of ftviz, each computed in one place: softmax, one exact neighbour search,
the kNN label vote, and the AUROC of a score against the injected label noise.

Every stage calls these (as scikit-learn's estimators call ``utils.extmath.softmax`` and
``NearestNeighbors``), so the outlier score, the label vote, the kNN accuracy of ``ftviz
compare``, the t-SNE affinities and the overlap metric search neighbours the same way.
Importing this module costs numpy only; torch is imported inside :func:`exact_neighbours`,
and only when it is asked to run on a GPU or with a bf16 candidate search.

Conventions
-----------
- Probabilities and log-probabilities are float64, computed stably (max subtracted).
- Neighbours exclude the query itself and come nearest first; distances are float64.
- An AUROC takes a score where *higher = more suspicious*; a score where low is suspicious
  (label quality, margin) is negated or flipped by the caller.
"""

from __future__ import annotations

import numpy as np

METRICS = ("cosine", "euclidean")


# ---- probabilities -------------------------------------------------------------------------
def log_softmax(logits: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Log-softmax along ``axis``, in float64, stable for large logits.

    Parameters
    ----------
    logits : (..., C) any float dtype (float16 snapshots included).

    Returns
    -------
    (..., C) float64; ``exp`` of it sums to 1 along ``axis``.

    >>> log_softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(4).tolist()
    [[-0.6931, -0.6931], [0.0, -1000.0]]
    """
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(logits: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis`` (any leading shape: (N, C) or a history (T, N, C)), in float64.

    Returns
    -------
    Same shape as ``logits``, float64, summing to 1 along ``axis``.

    >>> softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    array([[1. , 0. ],
           [0.5, 0.5]])
    """
    shifted = np.asarray(logits, dtype=np.float64)
    exp = np.exp(shifted - shifted.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


# ---- neighbours ----------------------------------------------------------------------------
def exact_neighbours(
    X: np.ndarray, k: int, *, metric: str = "cosine", rows=None, block: int = 1024, device: str = "cpu",
    search: str = "fp32", margin: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest *other* rows of ``X`` for each query row, exactly, nearest first.

    Brute force in float32, as blocked matrix products with a top-k per block (memory stays at
    block x N), like scikit-learn's ``NearestNeighbors(algorithm="brute")``; the k distances
    found are then recomputed in float64 (the same whatever the BLAS threads). Cosine serves the
    outlier score and the label vote (Cleanlab's metric for embeddings); Euclidean serves the
    t-SNE affinities and the overlap metric (openTSNE's metric).

    Parameters
    ----------
    X : (N, D) features (any float dtype; searched in float32).
    k : neighbours per query, 1 <= k <= N - 1.
    metric : "cosine" (distance 1 - cos, clipped at 0; zero rows stay zero) or "euclidean".
    rows : (M,) indices of the query rows (default all N); neighbours are searched among all N.
    block : query rows per matrix product.
    device : "cpu" (numpy), "cuda" / "cuda:<i>" (torch on that GPU), or "auto" (the GPU when
        torch sees one, else the CPU).
    search : "fp32"; "bf16" finds ``k + margin`` candidates with a bf16 product (several times
        the fp32 throughput on GPUs and AMX CPUs; torch) and re-ranks them exactly in float32,
        the margin covering bf16's rounding (~4e-3 on a cosine): identical neighbours to "fp32"
        on a clustered 10,000 x 768 test, where a margin of 8 changed 1 % of the rows; "auto"
        takes "bf16" for N > 4096 where bf16 is fast, else "fp32".

    Returns
    -------
    indices : (M, k) int64 row indices of X.
    distances : (M, k) float64, ascending along each row.

    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> exact_neighbours(X, 1)[0].ravel().tolist()
    [1, 0, 1]
    >>> exact_neighbours(X, 1, metric="euclidean", rows=[2])[1].round(4).tolist()
    [[1.2728]]
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be (N, D), got shape {X.shape}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not 1 <= k <= len(X) - 1:
        raise ValueError(f"k must lie in 1..N-1 = 1..{len(X) - 1}, got {k}")
    rows = np.arange(len(X)) if rows is None else np.asarray(rows, dtype=np.int64)
    device, search = _resolve(device, search, len(X))
    width = min(len(X) - 1, k + margin) if search == "bf16" else k
    ops = _NumpyOps(X, metric) if device == "cpu" and search == "fp32" else _TorchOps(X, metric, device, search)
    indices = np.empty((len(rows), k), dtype=np.int64)
    for start in range(0, len(rows), block):
        chunk = rows[start : start + block]
        _, found = ops.top(ops.closeness(chunk), width)
        if width > k:  # re-rank the bf16 candidates by their exact fp32 closeness
            _, pick = ops.top(ops.exact_closeness(chunk, found), k)
            found = ops.take(found, pick)
        indices[start : start + len(chunk)] = ops.numpy(found)
    # The search only picks the neighbours; their distances are computed once more in float64.
    return _exact_distances(X, rows, indices, metric, block=block)


def _exact_distances(X: np.ndarray, rows: np.ndarray, indices: np.ndarray, metric: str, *,
                     block: int) -> tuple[np.ndarray, np.ndarray]:
    """The found neighbours' distances recomputed in float64, each row re-sorted.

    The search's float32 products sum in an order that depends on the BLAS threads, and a
    cosine distance near 0 keeps few of float32's digits: recomputing the k distances of each
    query in float64 (a few multiply-adds per neighbour) gives the same numbers, to ~1e-15,
    whatever the threads (the follower runs on fewer than the stages after training).
    """
    distances = np.empty(indices.shape, dtype=np.float64)
    for start in range(0, len(rows), block):
        query = X[rows[start : start + block]].astype(np.float64)
        found = X[indices[start : start + block]].astype(np.float64)  # (B, k, D)
        if metric == "cosine":
            norms = np.linalg.norm(query, axis=1)[:, None] * np.linalg.norm(found, axis=2)
            cosine = np.einsum("bd,bkd->bk", query, found) / np.where(norms > 0, norms, 1.0)
            distances[start : start + block] = np.maximum(1.0 - np.where(norms > 0, cosine, 0.0), 0.0)
        else:
            distances[start : start + block] = np.sqrt(((found - query[:, None, :]) ** 2).sum(axis=2))
    order = np.argsort(distances, axis=1, kind="stable")
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(distances, order, axis=1)


def _resolve(device: str, search: str, count: int) -> tuple[str, str]:
    """``device`` and ``search`` with "auto" replaced by what this machine does fast."""
    if search not in ("auto", "fp32", "bf16"):
        raise ValueError(f"search must be 'auto', 'fp32' or 'bf16', got {search!r}")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if search == "auto":
        from ftviz.embed import cpu_has_fast_bf16

        fast = device.startswith("cuda") or cpu_has_fast_bf16()
        search = "bf16" if fast and count > 4096 else "fp32"
    return device, search


class _NumpyOps:
    """The fp32 search on the CPU with numpy: closeness of query rows to every row, and top-k.

    Closeness is larger = nearer: the cosine similarity of unit rows, or minus the squared
    Euclidean distance |x|^2 - 2 x.y + |y|^2 (one matrix product per block).
    """

    def __init__(self, X: np.ndarray, metric: str):
        self.metric = metric
        if metric == "cosine":
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            self.X = X / np.where(norms > 0, norms, 1.0).astype(np.float32)
        else:
            self.X = X
            self.squared = (X**2).sum(axis=1)

    def closeness(self, chunk: np.ndarray) -> np.ndarray:
        product = self.X[chunk] @ self.X.T  # (B, N)
        if self.metric == "cosine":
            out = product
        else:
            out = -(self.squared[chunk, None] - 2.0 * product + self.squared[None, :])
        out[np.arange(len(chunk)), chunk] = -np.inf  # a point is not its own neighbour
        return out

    @staticmethod
    def top(closeness: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        part = np.argpartition(-closeness, width - 1, axis=1)[:, :width]
        values = np.take_along_axis(closeness, part, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        return np.take_along_axis(values, order, axis=1), np.take_along_axis(part, order, axis=1)

    @staticmethod
    def take(found: np.ndarray, pick: np.ndarray) -> np.ndarray:
        return np.take_along_axis(found, pick, axis=1)

    @staticmethod
    def numpy(array: np.ndarray) -> np.ndarray:
        return array


class _TorchOps:
    """The same search with torch: on a GPU, and/or with bf16 candidates (:func:`exact_neighbours`)."""

    def __init__(self, X: np.ndarray, metric: str, device: str, search: str):
        import torch

        self.torch, self.metric, self.device = torch, metric, device
        self.X = torch.from_numpy(np.ascontiguousarray(X)).to(device)
        if metric == "cosine":
            norms = self.X.norm(dim=1, keepdim=True)
            self.X = self.X / torch.where(norms > 0, norms, torch.ones_like(norms))
        self.squared = (self.X**2).sum(dim=1)
        self.coarse = self.X.to(torch.bfloat16) if search == "bf16" else self.X

    def closeness(self, chunk: np.ndarray):
        torch = self.torch
        index = torch.from_numpy(chunk).to(self.device)
        with torch.inference_mode():
            product = (self.coarse[index] @ self.coarse.T).float()  # (B, N)
            if self.metric == "euclidean":
                product = -(self.squared[index, None] - 2.0 * product + self.squared[None, :])
            product[torch.arange(len(chunk), device=self.device), index] = -torch.inf
        return product

    def exact_closeness(self, chunk: np.ndarray, found):
        torch = self.torch
        with torch.inference_mode():
            query = self.X[torch.from_numpy(chunk).to(self.device)]  # (B, D)
            candidates = self.X[found]  # (B, W, D)
            if self.metric == "cosine":
                return torch.einsum("bd,bcd->bc", query, candidates)
            return -((candidates - query[:, None, :]) ** 2).sum(dim=2)

    def top(self, closeness, width: int):
        with self.torch.inference_mode():
            top = closeness.topk(width, dim=1)
        return top.values, top.indices

    def take(self, found, pick):
        return found.gather(1, pick)

    @staticmethod
    def numpy(tensor) -> np.ndarray:
        return tensor.cpu().numpy()


def knn_label_shares(*, embedding: np.ndarray, labels: np.ndarray, num_classes: int, k: int = 10,
                     block: int = 1024, device: str = "cpu") -> np.ndarray:
    """Share of each class among the labels of every sample's k nearest other samples (cosine,
    :func:`exact_neighbours`): the kNN classifier's vote on the embedding.

    Parameters
    ----------
    embedding : (N, D) features; labels : (N,) int in 0..num_classes-1.
    k : neighbours, capped at N - 1 (with one sample, the vote is its own label).

    Returns
    -------
    (N, C) float64, rows sum to 1. Its argmax is the kNN prediction, ties going to the
    smallest label.

    >>> knn_label_shares(embedding=np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]),
    ...                  labels=np.array([0, 1, 1]), num_classes=2, k=1)
    array([[0., 1.],
           [1., 0.],
           [0., 1.]])
    """
    labels = np.asarray(labels, dtype=np.int64)
    count = len(labels)
    k = min(k, count - 1)
    if k < 1:
        return np.eye(num_classes)[labels] if count else np.zeros((0, num_classes))
    neighbours, _ = exact_neighbours(embedding, k, metric="cosine", block=block, device=device)
    votes = np.zeros((count, num_classes), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(count), k), labels[neighbours].ravel()), 1)
    return votes / k


# ---- detectors against injected noise -------------------------------------------------------
def auroc_against_noise(score: np.ndarray, is_noisy: np.ndarray) -> float:
    """AUROC of ``score`` as a detector of the flipped labels ``is_noisy``.

    The probability that a random flipped sample scores higher than a random clean one (ties
    count half): the Mann-Whitney statistic, equal to scikit-learn's ``roc_auc_score``.

    Parameters
    ----------
    score : (N,) float, *higher = more suspicious* (pass ``1 - label_quality`` or ``-margin``
        for scores where low is suspicious).
    is_noisy : (N,) bool, the labels flipped on purpose.

    Returns
    -------
    float in [0, 1] (0.5 = chance); NaN when no label, or every label, was flipped.

    >>> auroc_against_noise(np.array([0.9, 0.2, 0.8, 0.1, 0.0]), np.array([1, 1, 0, 0, 0], dtype=bool))
    0.8333333333333334
    """
    score = np.asarray(score, dtype=np.float64)
    is_noisy = np.asarray(is_noisy, dtype=bool)
    if score.shape != is_noisy.shape or score.ndim != 1:
        raise ValueError(f"score and is_noisy must both be (N,), got {score.shape} and {is_noisy.shape}")
    if not np.isfinite(score).all():
        raise ValueError("score holds NaN or infinite values")
    noisy, clean = int(is_noisy.sum()), int((~is_noisy).sum())
    if noisy == 0 or clean == 0:
        return float("nan")
    _, group, sizes = np.unique(score, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(sizes) - (sizes - 1) / 2.0  # 1-based ranks, ties sharing their mean
    noisy_rank_sum = mean_rank[group.ravel()][is_noisy].sum()
    return float((noisy_rank_sum - noisy * (noisy + 1) / 2.0) / (noisy * clean))
