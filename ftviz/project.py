"""2-D projection of every snapshot (PCA), aligned across frames with :mod:`ftviz.align`.

``basis="per_frame"`` fits one PCA per snapshot (the article's method: each frame shows its
own two main directions); ``basis="shared"`` fits one PCA on all snapshots together, so the
axes mean the same thing in every frame. Either way consecutive frames are then aligned with
Procrustes so the cloud does not flip or spin between frames.
"""

from __future__ import annotations

import numpy as np


def pca_basis(features: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top principal directions of ``features`` (N, D) from the D x D covariance.

    Returns (mean (D,), components (D, n_components), explained variance ratio (n_components,)).
    The covariance route costs N D^2 and then D^3, cheaper than an SVD of (N, D) for N >> D.
    Signs are fixed (largest |loading| positive) so the output is deterministic.
    """
    X = np.asarray(features, dtype=np.float64)
    mean = X.mean(axis=0)
    centred = X - mean
    covariance = centred.T @ centred / max(1, len(X) - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:n_components]
    components = eigenvectors[:, order]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])])
    components = components * np.where(signs == 0, 1.0, signs)
    total = max(eigenvalues.sum(), np.finfo(float).tiny)
    return mean, components, np.clip(eigenvalues[order], 0, None) / total


class FrameProjector:
    """Project snapshots (T, N, D) to aligned 2-D frames (T, N, 2), sklearn style.

    Parameters
    ----------
    basis : "per_frame" | "shared".
    reference : Procrustes reference passed to :func:`ftviz.align.align_sequence`.
    n_components : output dimension (2 for the scatter plot).
    """

    def __init__(self, *, basis: str = "per_frame", reference="previous", n_components: int = 2):
        self.basis = basis
        self.reference = reference
        self.n_components = n_components

    def fit_transform(self, embeddings: np.ndarray) -> np.ndarray:
        from ftviz.align import align_sequence

        if self.basis not in ("per_frame", "shared"):
            raise ValueError(f"basis must be 'per_frame' or 'shared', got {self.basis!r}")
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 3:
            raise ValueError(f"embeddings must be (T, N, D), got shape {embeddings.shape}")
        T = embeddings.shape[0]
        frames = np.empty((T, embeddings.shape[1], self.n_components), dtype=np.float64)
        self.explained_variance_ = np.empty(T)
        if self.basis == "shared":
            stacked = embeddings.reshape(-1, embeddings.shape[-1])
            mean, components, ratio = pca_basis(stacked, self.n_components)
            self.components_ = components
            for t in range(T):
                frames[t] = (embeddings[t].astype(np.float64) - mean) @ components
                self.explained_variance_[t] = _explained(embeddings[t], frames[t])
        else:
            for t in range(T):
                mean, components, ratio = pca_basis(embeddings[t], self.n_components)
                projected = (embeddings[t].astype(np.float64) - mean) @ components
                # Each frame to unit RMS radius, as scipy's procrustes standardises (the article).
                # Fitting a scale instead would shrink every frame by its correlation with the
                # previous one, and chained over many frames the cloud collapses to a point.
                rms = np.sqrt((projected**2).sum(axis=1).mean())
                frames[t] = projected / max(rms, np.finfo(float).tiny)
                self.explained_variance_[t] = ratio.sum()
        # Only rotations and reflections between frames: the sizes are set above (per frame)
        # or are the real ones (shared basis).
        aligned = align_sequence(frames, reference=self.reference, scaling=False)
        return aligned.astype(np.float32)


def _explained(features: np.ndarray, projected: np.ndarray) -> float:
    X = features.astype(np.float64)
    total = ((X - X.mean(0)) ** 2).sum()
    return float(((projected - projected.mean(0)) ** 2).sum() / max(total, np.finfo(float).tiny))


def knn_overlap(full: np.ndarray, low: np.ndarray, *, k: int = 10, sample: int = 2000, seed: int = 0) -> float:
    """Mean fraction of each point's k nearest neighbours (full space) kept in the 2-D frame.

    Parameters
    ----------
    full : (N, D) embedding; low : (N, 2) its projection. Distances are Euclidean in both.
    sample : at most this many query points (neighbours are searched among all N).

    Returns
    -------
    float in [0, 1]: 1 = the 2-D frame keeps every neighbourhood, ~k/N = random.
    """
    n = len(full)
    k = min(k, n - 1)
    if k < 1:
        return float("nan")
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, size=min(sample, n), replace=False))

    def neighbours(X: np.ndarray) -> np.ndarray:
        X = X.astype(np.float32)
        squared = (X**2).sum(1)
        distances = squared[queries, None] - 2.0 * X[queries] @ X.T + squared[None, :]
        distances[np.arange(len(queries)), queries] = np.inf  # a point is not its own neighbour
        return np.argpartition(distances, k, axis=1)[:, :k]

    high, flat = neighbours(full), neighbours(low)
    shared = (high[:, :, None] == flat[:, None, :]).any(axis=2).sum(axis=1)  # (Q,) common neighbours
    return float(shared.mean() / k)


def project_run(run, config=None, *, progress: bool = True) -> None:
    """Write ``frames.npy`` (T, N, 2) float32 and ``projection.parquet`` for ``run``.

    projection.parquet columns: step, explained_variance (of the 2-D frame),
    disparity_to_previous (Procrustes disparity, scipy's definition; NaN for the first frame),
    knn_overlap (neighbourhood preservation, see :func:`knn_overlap`).
    """
    run.require("train")
    basis = config.basis if config is not None else "per_frame"
    reference = _parse_reference(config.reference if config is not None else "previous")
    k = config.knn if config is not None else 10
    sample = config.knn_sample if config is not None else 2000
    with run.stage("project", basis=basis, reference=str(reference)):
        _project(run, basis, reference, k, sample)


def _project(run, basis: str, reference, k: int, sample: int) -> None:
    import pandas as pd

    from ftviz.align import disparity
    from ftviz.rundir import write_npy, write_parquet

    steps, embeddings, _ = run.load_embeddings()
    projector = FrameProjector(basis=basis, reference=reference)
    frames = projector.fit_transform(embeddings)
    disparities = [float("nan")] + [disparity(frames[t - 1], frames[t]) for t in range(1, len(frames))]
    overlaps = [knn_overlap(embeddings[t], frames[t], k=k, sample=sample) for t in range(len(frames))]
    write_npy(run.file("frames.npy"), frames)
    write_parquet(run.file("projection.parquet"), pd.DataFrame({
        "step": steps,
        "explained_variance": projector.explained_variance_,
        "disparity_to_previous": disparities,
        "knn_overlap": overlaps,
    }))


def _parse_reference(reference):
    """Config strings like "3" or "-1" mean a frame index; others are names."""
    try:
        return int(reference)
    except (TypeError, ValueError):
        return reference
