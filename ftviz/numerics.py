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

import threading

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
    search: str = "fp32", margin: int = 16, threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest *other* rows of ``X`` for each query row, exactly, nearest first.

    Brute force in float32, as blocked matrix products with a top-k per block (memory stays at
    block x N), like scikit-learn's ``NearestNeighbors(algorithm="brute")``; the k distances
    found are then recomputed in float64 (the same whatever the BLAS threads). Cosine serves the
    outlier score and the label vote (Cleanlab's metric for embeddings); Euclidean serves the
    t-SNE affinities and the overlap metric (openTSNE's metric). Several sets of one frame
    come from one search: :class:`NeighbourSearch`.

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
        takes "bf16" for N > 4096 on a GPU, else "fp32". Not on CPUs with AMX: there the bf16
        product is fast but each set is searched alone and torch's (B, N) blocks and top-k cost
        more than the product saves (a frame's two sets at 10,000 x 768 on a 2-core AMX Xeon:
        4.5-5.0 s against 1.1 s for the shared fp32 search on 2 threads, 5.0-5.8 against 1.9 on one).
    threads : CPU threads of the numpy search (the products, the selection and the distances);
        default :func:`cpu_threads`. The work is cut into the same tasks of ``ROWS_PER_TASK``
        rows whatever the count, so any number of threads finds the same neighbours, ties included.

    Returns
    -------
    indices : (M, k) int64 row indices of X.
    distances : (M, k) float64, ascending along each row (equal distances: smaller index first).

    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> exact_neighbours(X, 1)[0].ravel().tolist()
    [1, 0, 1]
    >>> exact_neighbours(X, 1, metric="euclidean", rows=[2])[1].round(4).tolist()
    [[1.2728]]
    """
    return NeighbourSearch(X, [(metric, k, rows)], block=block, device=device, search=search,
                           margin=margin, threads=threads).get(metric, k, rows)


class NeighbourSearch:
    """Several exact neighbour sets of one frame, found in one pass: each block of X Xᵀ is
    computed once and serves every set (cosine and Euclidean, any k, any query rows).

    One frame of a run needs the cosine neighbours of every sample (the outlier score), the
    Euclidean ones (t-SNE's affinities, 3 x perplexity of them) and the Euclidean neighbours of
    a sample of rows (the overlap diagnostic): on the CPU this pass computes the product once,
    and only its upper triangle (X Xᵀ is symmetric: each block serves its rows and, transposed,
    its columns' rows), so all of them cost about half of one search. On torch (a GPU, or a bf16
    candidate search) each set is searched on its own: there the product is cheap.

    Parameters
    ----------
    X : (N, D) features; queries : (metric, k, rows) triples as :func:`exact_neighbours` takes
        them (rows None = every row). The other arguments are :func:`exact_neighbours`'s.

    :meth:`get` answers any (metric, k, rows) covered by a planned set (same metric, k at least
    as large, rows among its rows) from it; anything else is searched then, with the same settings.
    """

    def __init__(self, X: np.ndarray, queries, *, block: int = 1024, device: str = "cpu", search: str = "fp32",
                 margin: int = 16, threads: int | None = None):
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"X must be (N, D), got shape {X.shape}")
        self.X = X
        self.options = dict(block=block, device=device, search=search, margin=margin, threads=threads)
        planned = [_Query.make(metric, k, rows, len(X)) for metric, k, rows in queries]
        device, search = _resolve(device, search, len(X))
        squared = np.einsum("ij,ij->i", X, X)  # |x|^2 per row, by numpy's own loop (float32)
        with _Workers(cpu_threads() if threads is None else threads) as workers:
            if not planned:
                found = []
            elif device == "cpu" and search == "fp32":
                found = _numpy_search(X, planned, block, squared, workers)
            else:
                found = [(_torch_search(X, query, device=device, search=search, margin=margin, block=block), None)
                         for query in planned]
            self._sets = [(query, *_exact_distances(X, query.rows, indices, query.metric, squared, workers, closeness))
                          for query, (indices, closeness) in zip(planned, found)]

    def get(self, metric: str, k: int, rows=None) -> tuple[np.ndarray, np.ndarray]:
        """(indices (M, k) int64, distances (M, k) float64) as :func:`exact_neighbours` returns them."""
        wanted = _Query.make(metric, k, rows, len(self.X))
        # The set planned as asked first; else the first that covers it (its k nearest: the
        # same distances, though of neighbours equally near the k-th, another may be kept).
        for query, indices, distances in sorted(self._sets, key=lambda entry: entry[0].k != k):
            if query.metric == metric and query.k >= k:
                position = query.positions(wanted.rows)
                if position is not None:
                    return indices[position, :k], distances[position, :k]
        return NeighbourSearch(self.X, [(metric, k, rows)], **self.options).get(metric, k, rows)


class _Query:
    """One planned neighbour set: metric, k, the query rows (sorted as asked) and where each row sits."""

    def __init__(self, metric: str, k: int, rows: np.ndarray, count: int):
        self.metric, self.k, self.rows = metric, k, rows
        self.where = np.full(count, -1, dtype=np.int64)
        self.where[rows] = np.arange(len(rows))

    @classmethod
    def make(cls, metric: str, k: int, rows, count: int) -> "_Query":
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if not 1 <= k <= count - 1:
            raise ValueError(f"k must lie in 1..N-1 = 1..{count - 1}, got {k}")
        rows = np.arange(count) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        return cls(metric, int(k), rows, count)

    def positions(self, rows: np.ndarray) -> np.ndarray | None:
        """Where ``rows`` sit among this set's rows, or None if any is not one of them."""
        position = self.where[rows]
        return None if (position < 0).any() else position


class _Best:
    """The k best (largest closeness) candidates so far of each query row, merged block by block."""

    def __init__(self, query: _Query):
        self.query = query
        self.values = np.full((len(query.rows), query.k), -np.inf, dtype=np.float32)
        self.indices = np.zeros((len(query.rows), query.k), dtype=np.int64)

    def offer(self, rows: np.ndarray, closeness: np.ndarray, first_column: int, passing: np.ndarray) -> None:
        """Candidates for query ``rows`` (global indices): closeness (len(rows), B) to columns from ``first_column``.

        Only values above a row's k-th best so far can enter its k best: after a row's first
        block few do (about k / j in its j-th block), so they are gathered sparsely instead of
        partitioning the whole block (measured at 10,000 x 768, k = 10: ~5x less time than a
        partition of every block). ``passing``: scratch (len(rows), B) bool, reused by the caller.
        """
        k = self.query.k
        at = self.query.where[rows]
        np.greater(closeness, self.values[at].min(axis=1)[:, None], out=passing)  # above the k-th best so far
        counts = passing.sum(axis=1)
        widest = int(counts.max()) if len(counts) else 0
        if widest == 0:
            return
        if widest * 8 > closeness.shape[1]:  # a row's first blocks: partition them whole
            picked = _largest(closeness, k) if closeness.shape[1] > k else \
                np.broadcast_to(np.arange(closeness.shape[1]), closeness.shape)
            candidates = np.take_along_axis(closeness, picked, axis=1)
        else:  # the passing values, each row's packed to the left and padded with -inf
            flat = np.flatnonzero(passing)  # one index array, row-major: rows in order
            row, column = np.divmod(flat, closeness.shape[1])
            slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
            candidates = np.full((len(rows), widest), -np.inf, dtype=np.float32)
            picked = np.zeros((len(rows), widest), dtype=np.int64)
            candidates[row, slot] = closeness.ravel()[flat]
            picked[row, slot] = column
        values = np.concatenate([self.values[at], candidates], axis=1)
        indices = np.concatenate([self.indices[at], picked + first_column], axis=1)
        keep = _largest(values, k)
        self.values[at] = np.take_along_axis(values, keep, axis=1)
        self.indices[at] = np.take_along_axis(indices, keep, axis=1)


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest values of each row, in no order (a partition, not a sort)."""
    return np.argpartition(values, values.shape[1] - k, axis=1)[:, -k:]


def _numpy_search(X: np.ndarray, queries: list[_Query], block: int, squared: np.ndarray,
                  workers: "_Workers") -> list[np.ndarray]:
    """Each query's neighbour indices (M, k), unsorted, and their closeness (M, k) float32,
    from float32 products on the CPU.

    Closeness is larger = nearer, ranked within a query row only, so the row's own term is
    left out: cosine x.y / |y| (the query's 1/|x| is the same for all), Euclidean x.y - |y|^2 / 2
    (minus half the squared distance, less the query's |x|^2 / 2). When the queries cover most
    rows the products are the upper triangle of X Xᵀ, each block serving its rows and,
    transposed, its columns' rows; otherwise the rows asked, a block at a time against all of X.

    The work is cut into tasks of ``ROWS_PER_TASK`` query rows, each computing its rows of the
    product (one BLAS thread: OpenBLAS's own threads would spin beside the workers) and offering
    them to every set. The tasks are the same whatever the threads, so are the neighbours: each
    row meets its candidates in the same groups (which, at an exact tie with the k-th best,
    decides which of the equally near stays).
    """
    count = len(X)
    norms = np.sqrt(squared)
    weight = {"cosine": (1.0 / np.where(norms > 0, norms, 1.0)).astype(np.float32), "euclidean": 0.5 * squared}
    best = [_Best(query) for query in queries]
    # Each worker's scratch, reused task after task: fresh arrays of a megabyte each cost more
    # in page faults than the arithmetic done in them.
    scratch = threading.local()

    def reused(name: str, shape: tuple, dtype) -> np.ndarray:
        size = shape[0] * shape[1]
        buffer = getattr(scratch, name, None)
        if buffer is None or buffer.size < size:
            buffer = np.empty(max(size, ROWS_PER_TASK * min(block, count)), dtype=dtype)
            setattr(scratch, name, buffer)
        return buffer[:size].reshape(shape)

    def offer(product: np.ndarray, rows: np.ndarray, col_start: int) -> None:
        """Candidates from ``product`` (len(rows), B): rows (global indices) against columns col_start..."""
        columns = slice(col_start, col_start + product.shape[1])
        for query, keep in zip(queries, best):
            asked = query.where[rows] >= 0
            if not asked.any():
                continue
            mine = product if asked.all() else product[asked]
            # Written row-major whatever the product's layout (the transposed blocks), so the
            # per-row partition reads contiguous memory.
            closeness = reused("closeness", mine.shape, np.float32)
            if query.metric == "cosine":
                np.multiply(mine, weight["cosine"][columns], out=closeness)
            else:
                np.subtract(mine, weight["euclidean"][columns], out=closeness)
            own = rows[asked] - col_start  # a point is not its own neighbour
            inside = (own >= 0) & (own < product.shape[1])
            closeness[np.flatnonzero(inside), own[inside]] = -np.inf
            keep.offer(rows[asked], closeness, col_start, reused("passing", mine.shape, bool))

    def tasks(first: int, last: int) -> list[slice]:
        return [slice(start, min(start + ROWS_PER_TASK, last)) for start in range(first, last, ROWS_PER_TASK)]

    union = np.unique(np.concatenate([query.rows for query in queries]))
    if len(union) > count // 2:
        starts = range(0, count, block)
        products = np.empty(min(block, count) ** 2, dtype=np.float32)
        for row_start in starts:
            row_end = min(row_start + block, count)
            for col_start in starts[row_start // block :]:
                columns = X[col_start : col_start + block]
                product = products[: (row_end - row_start) * len(columns)].reshape(row_end - row_start, len(columns))

                def rows_of_block(part: slice) -> None:  # this block's rows against the columns
                    mine = product[part.start - row_start : part.stop - row_start]
                    np.matmul(X[part], columns.T, out=mine)
                    offer(mine, np.arange(part.start, part.stop), col_start)

                def rows_of_columns(part: slice) -> None:  # the columns' rows, from the product transposed
                    offer(product[:, part.start - col_start : part.stop - col_start].T, np.arange(part.start, part.stop),
                          row_start)

                workers.map(rows_of_block, tasks(row_start, row_end))
                if col_start != row_start:
                    workers.map(rows_of_columns, tasks(col_start, col_start + len(columns)))
    else:
        def rows_asked(part: slice) -> None:
            chunk = union[part]
            offer(X[chunk] @ X.T, chunk, 0)

        workers.map(rows_asked, tasks(0, len(union)))
    return [(keep.indices, keep.values) for keep in best]


NEAR_SHARE = 0.01  # a Euclidean pair with d^2 below this share of |x|^2 + |y|^2 is computed again from its difference


def _exact_distances(X: np.ndarray, rows: np.ndarray, indices: np.ndarray, metric: str, squared: np.ndarray,
                     workers: "_Workers", closeness: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The found neighbours' distances, each row sorted (distance, then index).

    A distance from a float32 product, |x|^2 + |y|^2 - 2 x.y, loses to cancellation what the
    pair is nearer than its norms: cosine's near-duplicates (1 - cos of 1e-6) keep nothing.
    So cosine distances are computed again from the difference of the unit rows (1 - cos =
    |u - v|^2 / 2), by numpy's own loops: ~7 digits, near ones included. Euclidean ones (90 a
    row for t-SNE, where that recompute was a third of the search) come from the search's
    ``closeness`` (x.y - |y|^2 / 2, float32) where the pair is far relative to its norms (d^2 at
    least NEAR_SHARE of |x|^2 + |y|^2: 5 digits or more), and from the difference where it is
    near. Either way the numbers depend on the tasks only, never on the threads (the follower
    and the stages after training get the same). ``squared``: (N,) |x|^2 of every row;
    ``workers`` share the row tasks.
    """
    if metric == "euclidean" and closeness is not None:
        mine = squared[rows].astype(np.float64)[:, None]
        found = np.maximum(mine - 2.0 * closeness, 0.0)
        near_row, near_rank = np.nonzero(found < NEAR_SHARE * (mine + squared[indices]))
        found[near_row, near_rank] = _pair_distances(X, rows[near_row], indices[near_row, near_rank], workers)
        distances = np.sqrt(found)
    else:
        if metric == "cosine":
            norms = np.sqrt(squared)
            X = X / np.where(norms > 0, norms, 1.0)[:, None]
        found = np.empty(indices.shape, dtype=np.float32)  # squared distances

        def run(start: int) -> None:
            query = X[rows[start : start + ROWS_PER_TASK]]
            difference = np.empty_like(query)  # reused rank after rank (fresh ones cost page faults)
            for rank in range(indices.shape[1]):
                np.take(X, indices[start : start + ROWS_PER_TASK, rank], axis=0, out=difference)
                np.subtract(difference, query, out=difference)
                found[start : start + ROWS_PER_TASK, rank] = np.einsum("bd,bd->b", difference, difference)

        workers.map(run, range(0, len(rows), ROWS_PER_TASK))
        if metric == "cosine":
            distances = 0.5 * found.astype(np.float64)
            zero = norms == 0  # cosine 0 to anything: distance 1
            distances[zero[rows][:, None] | zero[indices]] = 1.0
        else:
            distances = np.sqrt(found.astype(np.float64))
    order = np.lexsort((indices, distances), axis=1)  # by distance; equal distances by index
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(distances, order, axis=1)


def _pair_distances(X: np.ndarray, first: np.ndarray, second: np.ndarray, workers: "_Workers") -> np.ndarray:
    """|X[first] - X[second]|^2 for each pair, float32 from the difference (M,)."""
    found = np.empty(len(first), dtype=np.float32)
    width = ROWS_PER_TASK * 16

    def run(start: int) -> None:
        difference = X[first[start : start + width]] - X[second[start : start + width]]
        found[start : start + width] = np.einsum("bd,bd->b", difference, difference)

    workers.map(run, range(0, len(first), width))
    return found


def cpu_threads() -> int:
    """Threads the CPU analysis of this process may use (neighbour searches, t-SNE's optimiser).

    ``FTVIZ_THREADS`` when set (the follower sets it frame by frame to the cores training leaves
    idle), else ``OMP_NUM_THREADS`` when set (the usual cap, which the test suite sets to 1),
    else the cores this process may run on.
    """
    import os

    for variable in ("FTVIZ_THREADS", "OMP_NUM_THREADS"):
        try:
            return max(1, int(os.environ[variable]))
        except (KeyError, ValueError):
            continue
    return available_cores()


def available_cores() -> int:
    """The cores this process may run on (its affinity; the machine's count where that is unknown)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


ROWS_PER_TASK = 256  # query rows of one selection or distance task (fixed: the results do not depend on the threads)


class _Workers:
    """``threads`` CPU threads for a search's row tasks (each one BLAS thread).

    numpy releases the interpreter in its products, loops, partitions and gathers, so row tasks
    run side by side; with one thread they run in turn on the caller's. The BLAS limit holds
    inside the ``with`` block only (threadpoolctl), so a process that shares its cores (the
    follower) can ask a different count each frame.
    """

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self._pool = self._limits = None

    def __enter__(self) -> "_Workers":
        if self.threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ftviz-neighbours")
        try:
            from threadpoolctl import threadpool_limits

            # One BLAS thread per worker: the tasks compute their own rows of each product, and
            # OpenBLAS's threads spin-wait after a product, taking the cores the tasks need.
            self._limits = threadpool_limits(limits=1, user_api="blas")
        except ImportError:  # scikit-learn brings it; without it the BLAS keeps its own count
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        if self._limits is not None:
            self._limits.restore_original_limits()

    def map(self, function, tasks) -> None:
        """Run ``function`` on every task; returns when all are done (exceptions raised here)."""
        if self._pool is None:
            for task in tasks:
                function(task)
        else:
            for _ in self._pool.map(function, tasks):
                pass


def cpu_has_fast_bf16() -> bool:
    """True where the CPU does bf16 matrix products natively (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _resolve(device: str, search: str, count: int) -> tuple[str, str]:
    """``device`` and ``search`` with "auto" replaced by what this machine does fast."""
    if search not in ("auto", "fp32", "bf16"):
        raise ValueError(f"search must be 'auto', 'fp32' or 'bf16', got {search!r}")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if search == "auto":
        search = "bf16" if device.startswith("cuda") and count > 4096 else "fp32"
    return device, search


def _torch_search(X: np.ndarray, query: _Query, *, device: str, search: str, margin: int, block: int) -> np.ndarray:
    """One query's neighbour indices (M, k) with torch: on a GPU, and/or bf16 candidates re-ranked in fp32."""
    ops = _TorchOps(X, query.metric, device, search)
    width = min(len(X) - 1, query.k + margin) if search == "bf16" else query.k
    indices = np.empty((len(query.rows), query.k), dtype=np.int64)
    for start in range(0, len(query.rows), block):
        chunk = query.rows[start : start + block]
        _, found = ops.top(ops.closeness(chunk), width)
        if width > query.k:  # re-rank the bf16 candidates by their exact fp32 closeness
            _, pick = ops.top(ops.exact_closeness(chunk, found), query.k)
            found = ops.take(found, pick)
        indices[start : start + len(chunk)] = ops.numpy(found)
    return indices


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


def knn_label_shares(*, embedding: np.ndarray | None, labels: np.ndarray, num_classes: int, k: int = 10,
                     block: int = 1024, device: str = "cpu", neighbours: np.ndarray | None = None) -> np.ndarray:
    """Share of each class among the labels of every sample's k nearest other samples (cosine,
    :func:`exact_neighbours`): the kNN classifier's vote on the embedding.

    Parameters
    ----------
    embedding : (N, D) features; labels : (N,) int in 0..num_classes-1.
    k : neighbours, capped at N - 1 (with one sample, the vote is its own label).
    neighbours : (N, >= k) the embedding's cosine neighbours, nearest first, when already found
        (the score stage's): the first k are used and the embedding is not searched.

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
    if neighbours is not None and neighbours.shape[1] >= k:
        neighbours = neighbours[:, :k]
    else:
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
