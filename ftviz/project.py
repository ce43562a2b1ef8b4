"""2-D projection of every snapshot, aligned across frames with :mod:`ftviz.align`.

Three methods (``project.method``):

``"pca"``
    The article's method. ``basis="per_frame"`` fits one PCA per snapshot (each frame shows
    its own two main directions); ``basis="shared"`` fits one PCA on all snapshots together,
    so the axes mean the same thing in every frame. Two linear axes keep the largest
    variance, not the neighbourhoods: ten classes overlap in one round cloud.
``"tsne"``
    t-SNE with openTSNE (Policar et al. 2024, JMLR; optional: ``pip install 'ftviz[projection]'``).
    The first frame is optimised from its PCA (early exaggeration, then the usual phase);
    every later frame starts from the previous frame's layout and is optimised a few
    iterations on its own affinities, so points move only as much as the embedding moved.
``"umap"``
    UMAP with umap-learn (McInnes et al. 2018), warm-started the same way through its
    ``init=`` array. Its first call compiles with numba (~15 s).

Either way consecutive frames are then aligned with Procrustes (rotation and reflection)
so the cloud does not flip or spin between frames. Snapshots are read one frame at a time
(peak memory about one frame plus the (T, N, 2) output), including the shared PCA basis,
whose covariance is accumulated frame by frame.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from ftviz.config import PROJECT_BASES as BASES
from ftviz.config import PROJECT_METHODS as METHODS
from ftviz.config import PROJECT_REFERENCES as REFERENCES
from ftviz.config import ProjectConfig, check_section
from ftviz.errors import FtvizError
from ftviz.numerics import NeighbourSearch, cpu_threads, exact_neighbours

# What the page and run.json call each method.
METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE (openTSNE)", "umap": "UMAP (umap-learn)"}
_EXTRA = "pip install 'ftviz[projection]'"


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------
def check_config(section: ProjectConfig, *, libraries: bool = True) -> None:
    """Raise :class:`FtvizError` (one line) if a ``[project]`` section cannot run.

    Call before any work: checks the values against :class:`ftviz.config.ProjectConfig`'s
    constraints (again: a section built in code never met :func:`ftviz.config.validate`)
    and, with ``libraries``, that the method's library imports (only the projection needs
    it, so ``ftviz score`` does not ask for openTSNE).
    """
    check_section(section, "project")
    if libraries and section.method == "tsne":
        _import_opentsne()
    elif libraries and section.method == "umap":
        _import_umap()


def _parse_reference(reference):
    """Config strings like "3" or "-1" mean a frame index; the others are names."""
    if isinstance(reference, (int, np.integer)):
        return int(reference)
    if reference in REFERENCES:
        return reference
    try:
        return int(reference)
    except (TypeError, ValueError):
        raise FtvizError(
            f"project.reference must be previous, first, last, consensus or a frame index; got {reference!r}"
        ) from None


def _import_opentsne():
    try:
        import openTSNE
    except ImportError:
        raise FtvizError(f"project.method=tsne needs openTSNE: {_EXTRA} (or project.method=pca)") from None
    return openTSNE


def _import_umap():
    try:
        import umap
    except ImportError:
        raise FtvizError(f"project.method=umap needs umap-learn: {_EXTRA} (or project.method=pca)") from None
    return umap


# ---------------------------------------------------------------------------------------
# PCA
# ---------------------------------------------------------------------------------------
def pca_basis(features: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top principal directions of ``features`` (N, D) from the D x D covariance.

    Returns (mean (D,), components (D, n_components), explained variance ratio (n_components,)).
    The covariance route costs N D^2 and then D^3, cheaper than an SVD of (N, D) for N >> D,
    and only the top eigenpairs are solved for (at 10,000 x 768 on one thread, 0.05 s of the
    eigen-solve instead of 0.15 s; OpenBLAS's symmetric update was no faster than the product).
    Signs are fixed (largest |loading| positive) so the output is deterministic.
    """
    X = np.asarray(features, dtype=np.float64)
    mean = X.mean(axis=0)
    centred = X - mean
    covariance = centred.T @ centred / max(1, len(X) - 1)
    return (mean, *_top_directions(covariance, n_components))


def _top_directions(covariance: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``n_components`` eigenvectors of a (D, D) covariance and their share of the
    total variance (its trace)."""
    from scipy.linalg import eigh

    size = len(covariance)
    count = min(n_components, size)
    eigenvalues, eigenvectors = eigh(covariance, subset_by_index=[size - count, size - 1])
    order = np.argsort(eigenvalues)[::-1]
    components = eigenvectors[:, order]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])])
    components = components * np.where(signs == 0, 1.0, signs)
    total = max(float(np.trace(covariance)), np.finfo(float).tiny)
    return components, np.clip(eigenvalues[order], 0, None) / total


class _CovarianceAccumulator:
    """Mean and covariance of many (N, D) frames, one frame at a time (float64, D x D held)."""

    def __init__(self):
        self.count, self.total, self.outer = 0, None, None

    def add(self, X: np.ndarray) -> None:
        X = np.asarray(X, dtype=np.float64)
        if self.total is None:
            self.total = np.zeros(X.shape[1])
            # Shifted by the first frame's mean: sums of squares of large offsets lose digits.
            self.shift = X.mean(axis=0)
            self.outer = np.zeros((X.shape[1], X.shape[1]))
        centred = X - self.shift
        self.count += len(X)
        self.total += centred.sum(axis=0)
        self.outer += centred.T @ centred

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.count
        covariance = (self.outer - self.count * np.outer(mean, mean)) / max(1, self.count - 1)
        return self.shift + mean, covariance


# ---------------------------------------------------------------------------------------
# Neighbour embeddings, warm-started
# ---------------------------------------------------------------------------------------
# The FFT gradient's grid: openTSNE (as FIt-SNE) lays one interpolation interval per unit of
# the layout's extent, but at least 50 a side. A compact layout (t-SNE's first iterations, the
# early frames of an embedding still forming) then gets intervals far finer than a unit, which
# the accuracy does not need and the FFTs pay for. At least 20 a side (unit intervals from 20
# units of extent up): at 10,000 x 768 the first frame's 300 iterations took 4.4 s against 7.4 s
# (KL divergence 4.265 against 4.260); the default run's 35 frames, forced through the FFT
# gradient, kept 0.532 of the last frame's neighbours against 0.524.
FFT_MIN_INTERVALS = 20
EXACT_NEIGHBOURS_UP_TO = 20_000  # beyond, N^2 products cost more than an approximate index


def _planar_neighbours(low: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """(len(rows), k) indices of the k nearest other points in a 2-D frame (a k-d tree)."""
    from scipy.spatial import cKDTree

    low = np.asarray(low, dtype=np.float64)
    _, found = cKDTree(low).query(low[rows], k=k + 1)
    found = np.atleast_2d(found)
    # Drop each query itself (usually the first hit; not always when points coincide).
    keep = found != rows[:, None]
    out = np.empty((len(rows), k), dtype=np.int64)
    for i in range(len(rows)):
        out[i] = found[i][keep[i]][:k]
    return out


def _query_rows(n: int, sample: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(sample, n), replace=False))


def _overlap(high: np.ndarray, flat: np.ndarray) -> float:
    shared = (high[:, :, None] == flat[:, None, :]).any(axis=2).sum(axis=1)  # common neighbours per query
    return float(shared.mean() / high.shape[1])


def _tsne_perplexity(perplexity: float, count: int) -> tuple[float, int]:
    """(perplexity, neighbours) t-SNE uses on ``count`` points: openTSNE needs 3 x perplexity < N."""
    perplexity = min(perplexity, max(1.0, (count - 1) / 3))
    return perplexity, min(count - 1, int(3 * perplexity))


def _tsne_frame(X: np.ndarray, previous: np.ndarray | None, *, perplexity: float, n_iter: int,
                first_iter: int, seed: int, n_jobs: int, found: dict | None = None,
                search: NeighbourSearch | None = None) -> np.ndarray:
    """One frame of t-SNE (openTSNE): from scratch (PCA start) or continued from ``previous``.

    ``found`` (a dict) receives the exact neighbours (N, 3 perplexity), nearest first, when
    they were computed, for the kNN-overlap diagnostic to reuse; ``search`` is the frame's
    shared neighbour search, if any.
    """
    openTSNE = _import_opentsne()
    from openTSNE import affinity

    X = np.ascontiguousarray(X, dtype=np.float32)
    perplexity, k = _tsne_perplexity(perplexity, len(X))
    if len(X) <= EXACT_NEIGHBOURS_UP_TO:
        # Exact neighbours from blocked matrix products, shared with the frame's other
        # searches: at 10,000 x 768 on one thread, 3.5 s alone (about 2 s more beside the
        # outlier score's) against 11.5 s to build openTSNE's approximate index.
        if search is not None:
            neighbours, distances = search.get("euclidean", k)
        else:
            neighbours, distances = exact_neighbours(X, k, metric="euclidean")  # openTSNE's metric
        if found is not None:
            found["neighbours"] = neighbours
        P = affinity.joint_probabilities_nn(neighbours, distances, [perplexity], symmetrize=True, n_jobs=n_jobs)
        affinities = affinity.PrecomputedAffinities(P, normalize=False)
    else:
        affinities = affinity.PerplexityBasedNN(X, perplexity=perplexity, method="auto", n_jobs=n_jobs,
                                                random_state=seed, verbose=False)
    # FFT interpolation past a few thousand points; Barnes-Hut is faster below.
    gradient = "fft" if len(X) > 5000 else "bh"
    grid = {"min_num_intervals": FFT_MIN_INTERVALS} if gradient == "fft" else {}
    if previous is None:
        start = _pca_start(X, seed)
        embedding = openTSNE.TSNEEmbedding(start, affinities, negative_gradient_method=gradient,
                                           n_jobs=n_jobs, random_state=seed, **grid)
        early = max(1, first_iter // 3)
        embedding = embedding.optimize(n_iter=early, exaggeration=12, momentum=0.5)
        return np.asarray(embedding.optimize(n_iter=max(1, first_iter - early), momentum=0.8))
    embedding = openTSNE.TSNEEmbedding(previous, affinities, negative_gradient_method=gradient,
                                       n_jobs=n_jobs, random_state=seed, **grid)
    if n_iter == 0:
        return np.asarray(previous, dtype=np.float64).copy()
    return np.asarray(embedding.optimize(n_iter=n_iter, momentum=0.8))


def _pca_start(X: np.ndarray, seed: int) -> np.ndarray:
    """The first t-SNE frame's start (N, 2): the top two principal components, scaled and
    jittered as openTSNE's ``initialization.pca`` does.

    Not that function itself: scikit-learn's PCA behind it returns values that differ in the
    last bits with the number of BLAS threads (8.7e-11 on the default run's first snapshot),
    and 300 iterations of t-SNE grow that into a different layout (points 24 units apart),
    so a followed run (its frames on 1 or 2 threads, as cores are idle) and the stage after
    training drew different first frames. :func:`pca_basis`'s products give the same bits on
    any thread count, and it imports no scikit-learn into the follower's first frame.
    """
    from openTSNE import initialization

    mean, components, _ = pca_basis(X)
    start = (np.asarray(X, dtype=np.float64) - mean) @ components
    initialization.rescale(start, inplace=True)
    initialization.jitter(start, inplace=True, random_state=seed)
    return np.ascontiguousarray(start)


def _umap_frame(X: np.ndarray, previous: np.ndarray | None, *, neighbors: int, n_iter: int,
                first_iter: int, seed: int, n_jobs: int, found: dict | None = None) -> np.ndarray:
    """One frame of UMAP: spectral start, or continued from ``previous`` through ``init=``."""
    umap = _import_umap()
    import warnings

    X = np.asarray(X, dtype=np.float32)
    neighbors = int(min(neighbors, len(X) - 1))
    if previous is not None and n_iter == 0:
        return np.asarray(previous, dtype=np.float64).copy()
    reducer = umap.UMAP(
        n_neighbors=neighbors, n_components=2, init="spectral" if previous is None else previous,
        n_epochs=first_iter if previous is None else n_iter, random_state=seed,
        n_jobs=1 if seed is not None else n_jobs, verbose=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; spectral fallbacks
        return np.asarray(reducer.fit_transform(X), dtype=np.float64)


# ---------------------------------------------------------------------------------------
# The projector
# ---------------------------------------------------------------------------------------
def check_embedding(X: np.ndarray, where: str) -> None:
    """Raise :class:`FtvizError` (one line, naming ``where``) unless ``X`` (N, D) can be projected.

    NaN or infinity (a diverged training run) and a frame whose rows are all the same point
    (nothing to spread out: PCA and the neighbour methods divide by its zero spread) cannot.
    """
    if not np.isfinite(X).all():
        raise FtvizError(f"{where} holds NaN or infinite embeddings (training diverged); "
                         "rerun training with a lower train.lr")
    if len(X) > 1 and not (X != X[:1]).any():
        raise FtvizError(f"{where}: every probe sample has the same embedding, so there is nothing to "
                         "project; check the model's embedding output (a constant layer?) and rerun training")


class FrameProjector:
    """Project snapshots (T, N, D) to aligned 2-D frames (T, N, 2), sklearn style.

    Parameters
    ----------
    method : "pca" | "tsne" | "umap".
    basis : "per_frame" | "shared" (PCA only).
    reference : Procrustes reference passed to :func:`ftviz.align.align_sequence`.
    n_components : output dimension (2 for the scatter plot; PCA only).
    first_iter : t-SNE / UMAP iterations (epochs) of the first frame, from scratch.
    iter : iterations of every later frame, started from the previous frame's layout.
    last_iter : extra iterations for the last frame (the one a reader looks at longest).
    perplexity : t-SNE perplexity; neighbors : UMAP's n_neighbors.
    knn, knn_sample : the neighbourhood-preservation diagnostic (:func:`knn_overlap`),
        computed while each frame is in memory; 0 skips it.
    seed, n_jobs : randomness and threads of the neighbour embeddings; None (default) takes
        :func:`ftviz.numerics.cpu_threads` as each frame starts (the follower's share of the
        cores changes as training runs). openTSNE gives the same layout on any thread count
        (tested); UMAP with a seed runs on one.

    Attributes (after :meth:`fit_transform`)
    ----------------------------------------
    explained_variance_ : (T,) variance share of the 2-D frame (NaN for t-SNE / UMAP).
    knn_overlap_ : (T,) kept kNN share per frame (NaN when ``knn == 0``).
    seconds_ : (T,) seconds spent on each frame.
    """

    def __init__(self, *, method: str = "pca", basis: str = "per_frame", reference="previous",
                 n_components: int = 2, first_iter: int = 750, iter: int = 50, last_iter: int = 0,
                 perplexity: float = 30.0, neighbors: int = 15, knn: int = 0, knn_sample: int = 2000,
                 seed: int = 0, n_jobs: int | None = None):
        self.method = method
        self.basis = basis
        self.reference = reference
        self.n_components = n_components
        self.first_iter = first_iter
        self.iter = iter
        self.last_iter = last_iter
        self.perplexity = perplexity
        self.neighbors = neighbors
        self.knn = knn
        self.knn_sample = knn_sample
        self.seed = seed
        self.n_jobs = n_jobs

    def fit_transform(self, snapshots: Sequence[np.ndarray] | np.ndarray,
                      progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(T, N, 2) float32 aligned frames from ``snapshots``.

        ``snapshots`` is a (T, N, D) array or any sequence of (N, D) arrays with ``len`` and
        indexing (e.g. :class:`RunSnapshots`, which reads one frame from disk per index):
        only one frame is held at a time. ``progress(t)`` is called after each frame.
        """
        from ftviz.align import align_sequence

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.basis not in BASES:
            raise ValueError(f"basis must be 'per_frame' or 'shared', got {self.basis!r}")
        if isinstance(snapshots, np.ndarray) and snapshots.ndim != 3:
            raise ValueError(f"embeddings must be (T, N, D), got shape {snapshots.shape}")
        T = len(snapshots)
        if T == 0:
            raise ValueError("no snapshots to project")
        components = 2 if self.method != "pca" else self.n_components
        self.explained_variance_ = np.full(T, np.nan)
        self.knn_overlap_ = np.full(T, np.nan)
        self.seconds_ = np.zeros(T)
        shared = self._shared_basis(snapshots) if self.method == "pca" and self.basis == "shared" else None
        frames, layout = None, None
        for t in range(T):
            started = time.perf_counter()
            X = np.asarray(snapshots[t])
            if X.ndim != 2:
                raise ValueError(f"snapshot {t} must be (N, D), got shape {X.shape}")
            check_embedding(X, getattr(snapshots, "describe", lambda t: f"snapshot {t}")(t))
            if frames is None:
                frames = np.empty((T, len(X), components), dtype=np.float64)
            elif len(X) != frames.shape[1]:
                raise ValueError(f"snapshot {t} has {len(X)} rows, the first has {frames.shape[1]}")
            made = self.frame(X, layout, last=t == T - 1 and T > 1, shared=shared)
            frames[t], layout = made["frame"], made["layout"]
            self.explained_variance_[t], self.knn_overlap_[t] = made["explained_variance"], made["knn_overlap"]
            self.seconds_[t] = time.perf_counter() - started
            if progress is not None:
                progress(t)
        # Only rotations and reflections between frames: the sizes are set above (per frame)
        # or are the real ones (shared basis).
        aligned = align_sequence(frames, reference=_parse_reference(self.reference), scaling=False)
        return aligned.astype(np.float32)

    # -- one frame ---------------------------------------------------------------------------
    def _shared_basis(self, snapshots) -> tuple[np.ndarray, np.ndarray]:
        accumulator = _CovarianceAccumulator()
        for t in range(len(snapshots)):
            accumulator.add(snapshots[t])
        mean, covariance = accumulator.result()
        components, _ = _top_directions(covariance, self.n_components)
        self.components_ = components
        return mean, components

    def neighbour_queries(self, count: int) -> list[tuple]:
        """The neighbour sets one frame of ``count`` rows needs (:class:`ftviz.numerics.NeighbourSearch` queries)."""
        queries = []
        covered = 0
        if self.method == "tsne" and count <= EXACT_NEIGHBOURS_UP_TO:
            covered = _tsne_perplexity(self.perplexity, count)[1]
            queries.append(("euclidean", covered, None))
        k = min(self.knn, count - 1)
        if k >= 1 and k > covered:
            queries.append(("euclidean", k, _query_rows(count, self.knn_sample, self.seed)))
        return queries

    def frame(self, X: np.ndarray, previous_layout: np.ndarray | None = None, *, last: bool = False,
              shared=None, search: NeighbourSearch | None = None) -> dict:
        """One snapshot X (N, D) to its unaligned 2-D frame; what a frame needs is the one before.

        Returns a dict: "frame" (N, 2) float64 (unit RMS radius, or the shared basis's real
        size), "layout" (N, 2) the t-SNE/UMAP optimiser's own coordinates, the warm start of
        the next frame (None for PCA), "explained_variance" and "knn_overlap" (floats, NaN
        where they do not apply). ``last`` adds ``last_iter`` iterations. ``search``: the
        frame's shared neighbour search (:meth:`neighbour_queries`), if any.
        """
        found: dict = {}
        if self.method == "pca":
            projected, explained = self._pca_frame(X, shared)
            layout = None
        else:
            layout = self._neighbour_frame(X, previous_layout, last=last, found=found, search=search)
            projected, explained = _unit_rms(layout), float("nan")
        overlap = self._knn_overlap(X, projected, found.get("neighbours"), search) if self.knn else float("nan")
        return {"frame": projected, "layout": layout, "explained_variance": float(explained),
                "knn_overlap": float(overlap)}

    def _pca_frame(self, X: np.ndarray, shared) -> tuple[np.ndarray, float]:
        if shared is not None:
            mean, components = shared
            projected = (X.astype(np.float64) - mean) @ components
            return projected, _explained(X, projected)
        mean, components, ratio = pca_basis(X, self.n_components)
        # Each frame to unit RMS radius, as scipy's procrustes standardises (the article).
        # Fitting a scale instead would shrink every frame by its correlation with the
        # previous one, and chained over many frames the cloud collapses to a point.
        return _unit_rms((X.astype(np.float64) - mean) @ components), float(ratio.sum())

    def _knn_overlap(self, X: np.ndarray, low: np.ndarray, neighbours: np.ndarray | None,
                     search: NeighbourSearch | None = None) -> float:
        """:func:`knn_overlap` of this frame, reusing the embedding's neighbours when known."""
        k = min(self.knn, len(X) - 1)
        if k < 1:
            return float("nan")
        rows = _query_rows(len(X), self.knn_sample, self.seed)
        if neighbours is not None and neighbours.shape[1] >= k:
            high = neighbours[rows, :k]
        elif search is not None:
            high, _ = search.get("euclidean", k, rows)
        else:
            high, _ = exact_neighbours(X, k, metric="euclidean", rows=rows)
        return _overlap(high, _planar_neighbours(low, k, rows))

    def _neighbour_frame(self, X: np.ndarray, previous: np.ndarray | None, *, last: bool, found: dict,
                         search: NeighbourSearch | None) -> np.ndarray:
        n_iter = self.iter + (self.last_iter if last else 0)
        n_jobs = cpu_threads() if self.n_jobs is None else self.n_jobs
        options = dict(n_iter=n_iter, first_iter=self.first_iter, seed=self.seed, n_jobs=n_jobs, found=found)
        if self.method == "tsne":
            return _tsne_frame(X, previous, perplexity=self.perplexity, search=search, **options)
        return _umap_frame(X, previous, neighbors=self.neighbors, **options)


def _unit_rms(points: np.ndarray) -> np.ndarray:
    """Centred, scaled to unit root-mean-square radius (the size the frames are shown at)."""
    centred = points - points.mean(axis=0)
    rms = np.sqrt((centred**2).sum(axis=1).mean())
    return centred / max(rms, np.finfo(float).tiny)


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
    rows = _query_rows(n, sample, seed)
    high, _ = exact_neighbours(full, k, metric="euclidean", rows=rows)
    return _overlap(high, _planar_neighbours(low, k, rows))


# ---------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------
class RunSnapshots:
    """A run's snapshot embeddings as a sequence: ``snapshots[t]`` reads frame t from disk.

    Holds nothing between reads, so a projection over T frames needs one frame of memory.
    """

    def __init__(self, run, steps: list[int]):
        self.run, self.steps = run, list(steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, t: int) -> np.ndarray:
        embedding, _ = self.run.load_snapshot(self.steps[t])
        return embedding

    def describe(self, t: int) -> str:
        """Frame t as error messages name it: the run and the snapshot step."""
        return f"{self.run.path}: snapshot step {self.steps[t]}"


def project_run(run, section: ProjectConfig, *, progress: bool = True) -> None:
    """Write ``frames.npy`` (T, N, 2) float32 and ``projection.parquet`` for ``run``.

    projection.parquet columns: step, explained_variance (of the 2-D frame; NaN for t-SNE
    and UMAP), disparity_to_previous (Procrustes disparity, scipy's definition; NaN for the
    first frame), knn_overlap (neighbourhood preservation, see :func:`knn_overlap`),
    seconds (spent on the frame). run.json's project record holds the method and schedule.
    """
    check_config(section)
    run.require("train")
    options = {key: getattr(section, key) for key in
               ("method", "basis", "reference", "first_iter", "iter", "last_iter", "perplexity", "neighbors")}
    record_info = {"method": options["method"], "method_name": METHOD_NAMES[options["method"]],
                   "reference": str(options["reference"])}
    if options["method"] == "pca":
        record_info["basis"] = options["basis"]
    else:
        record_info.update({k: options[k] for k in ("first_iter", "iter", "last_iter")})
        record_info["perplexity" if options["method"] == "tsne" else "neighbors"] = \
            options["perplexity" if options["method"] == "tsne" else "neighbors"]
    with run.stage("project", **record_info) as record:
        record.update(_project(run, options, k=section.knn, sample=section.knn_sample, progress=progress))


def _project(run, options: dict, *, k: int, sample: int, progress: bool) -> dict:
    import pandas as pd

    from ftviz.align import disparity
    from ftviz.rundir import write_npy, write_parquet

    steps = run.snapshot_steps()
    if not steps:
        raise FtvizError(f"{run.path} has no snapshots; rerun training")
    bar = _progress_bar(len(steps), options["method"]) if progress else None
    tick = (lambda t: bar.update(1)) if bar else None
    try:
        entries = _followed_frames(run, options, k=k, sample=sample, steps=steps, final=True, progress=tick)
        if entries is not None:  # frame by frame, reading what the follower made
            frames = np.stack([entry["xy"] for entry in entries]).astype(np.float32)
            explained = [float(entry["explained_variance"]) for entry in entries]
            overlaps = [float(entry["knn_overlap"]) for entry in entries]
            seconds = [float(entry["seconds"]) for entry in entries]
        else:  # a shared basis or a reference that needs every frame: all frames at once
            projector = FrameProjector(**options, knn=k, knn_sample=sample)
            frames = projector.fit_transform(RunSnapshots(run, steps), progress=tick)
            explained, overlaps, seconds = projector.explained_variance_, projector.knn_overlap_, projector.seconds_
    finally:
        if bar is not None:
            bar.close()
    disparities = [float("nan")] + [disparity(frames[t - 1], frames[t]) for t in range(1, len(frames))]
    write_npy(run.file("frames.npy"), frames)
    write_parquet(run.file("projection.parquet"), pd.DataFrame({
        "step": steps,
        "explained_variance": explained,
        "disparity_to_previous": disparities,
        "knn_overlap": overlaps,
        "seconds": seconds,
    }))
    finite = [d for d in disparities[1:] if np.isfinite(d)]
    return {"last_knn_overlap": round(float(overlaps[-1]), 4),
            "mean_disparity": round(float(np.mean(finite)), 6) if finite else None}


# ---------------------------------------------------------------------------------------
# Frame by frame, as snapshots land (the follower) or after training (the stage)
# ---------------------------------------------------------------------------------------
PROJECT_OPTIONS = ("method", "basis", "reference", "first_iter", "iter", "last_iter", "perplexity", "neighbors")
LAST = ".last"  # the cache variant of the last frame, made with ``last_iter`` more iterations


def followable(options: dict) -> bool:
    """Whether each frame can be made from the one before alone (so as it lands).

    A shared PCA basis needs every snapshot, and a "last" or "consensus" reference the end
    of the run: those are projected after training.
    """
    per_frame = options["method"] != "pca" or options["basis"] == "per_frame"
    return per_frame and str(options["reference"]) in ("previous", "first")


def neighbour_queries(section, count: int) -> list[tuple]:
    """The neighbour sets a frame of ``count`` rows needs for its projection with ``section``."""
    options = {key: getattr(section, key) for key in PROJECT_OPTIONS}
    return FrameProjector(**options, knn=section.knn, knn_sample=section.knn_sample).neighbour_queries(count)


def project_frames(run, section, steps, *, final: bool, collect: bool = True, progress=None,
                   neighbours=None) -> list[dict] | None:
    """Make and record (``analysis/project/``) the frames of ``steps`` not made yet.

    ``final``: ``steps`` are all of the run's, so the last frame gets ``last_iter`` more
    iterations. Returns one dict per step (xy (N, 2) float64 aligned, layout, explained
    variance, kNN overlap, seconds) — an empty list without ``collect`` — or None where the
    settings are not :func:`followable`. ``neighbours(step, X)``, if given, returns the
    frame's shared :class:`ftviz.numerics.NeighbourSearch` (the follower's, made once for the
    score and the projection of a frame).
    """
    options = {key: getattr(section, key) for key in PROJECT_OPTIONS}
    return _followed_frames(run, options, k=section.knn, sample=section.knn_sample, steps=list(steps),
                            final=final, collect=collect, progress=progress, neighbours=neighbours)


def _followed_frames(run, options: dict, *, k: int, sample: int, steps: list[int], final: bool,
                     collect: bool = True, progress=None, neighbours=None) -> list[dict] | None:
    from ftviz.framecache import FrameCache

    if not followable(options):
        return None
    projector = FrameProjector(**options, knn=k, knn_sample=sample)
    cache = FrameCache(run, "project", {**options, "reference": str(options["reference"]),
                                        "knn": k, "knn_sample": sample}).open()
    settle = final and len(steps) > 1 and options["method"] != "pca"
    # Frames already recorded are kept up to the first one missing; from there each frame
    # is made from the one before it (recorded frames after a gap were made from another
    # chain, so they are made again).
    start = next((t for t, step in enumerate(steps) if not cache.has(step)), len(steps))
    entries: list[dict | None] = [None] * len(steps)

    def recorded(t: int, variant: str = "") -> dict:
        if entries[t] is None or variant:
            entry = cache.get(steps[t], variant)
            if entry is None:
                raise FtvizError(f"{cache.path(steps[t], variant)} is damaged; rerun ftviz project {run.path}")
            if variant:
                return entry
            entries[t] = entry
        return entries[t]

    def make(t: int, *, last: bool) -> dict:
        started = time.perf_counter()
        X = np.asarray(RunSnapshots(run, steps)[t])
        check_embedding(X, f"{run.path}: snapshot step {steps[t]}")
        previous = recorded(t - 1) if t > 0 else None
        search = neighbours(steps[t], X) if neighbours is not None else None
        made = projector.frame(X, None if previous is None else previous["layout"], last=last, search=search)
        xy = made["frame"]
        if previous is not None:
            onto = previous["xy"] if str(options["reference"]) == "previous" else recorded(0)["xy"]
            xy = _rotate_onto(xy, onto)
        return {"xy": xy, "layout": made["layout"] if made["layout"] is not None else np.zeros((0, 2)),
                "explained_variance": made["explained_variance"], "knn_overlap": made["knn_overlap"],
                "seconds": time.perf_counter() - started}

    for t in range(len(steps)):
        if t >= start:
            entries[t] = make(t, last=False)
            cache.put(steps[t], entries[t])
        if progress is not None and not (settle and t == len(steps) - 1):
            progress(t)
    if settle:
        last = cache.get(steps[-1], LAST) if start == len(steps) else None  # made from this chain
        if last is None:
            last = make(len(steps) - 1, last=True)
            cache.put(steps[-1], last, LAST)
        entries[-1] = last
        if progress is not None:
            progress(len(steps) - 1)
    if not collect:
        return []
    return [recorded(t) if entries[t] is None else entries[t] for t in range(len(steps))]


def _rotate_onto(frame: np.ndarray, onto: np.ndarray) -> np.ndarray:
    """``frame`` rotated (and reflected) onto ``onto``, no scaling: one link of the chain."""
    from ftviz.align import align_sequence

    return align_sequence(np.stack([onto, frame]), reference="first", scaling=False)[1]


def _progress_bar(total: int, method: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"project ({method})", unit="frame", leave=False, mininterval=0.5)
