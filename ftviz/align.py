"""Procrustes alignment of point clouds and of sequences of point clouds.

Embeddings taken at different steps of fine-tuning live in coordinate systems that differ
by an arbitrary rotation, reflection, scale and shift (a PCA axis may flip sign from one
step to the next). This module removes that difference so that what moves in an
animation is the change that fine-tuning made, not the change of coordinates.

Functions
---------
fit
    The similarity transform that maps one point cloud onto another.
align
    ``fit(source, target).apply(source)``: the source moved onto the target.
align_sequence
    A whole sequence of frames, aligned pairwise, onto one frame or onto a consensus.
disparity
    The standardised Procrustes disparity of two point clouds, as
    :func:`scipy.spatial.procrustes` computes it.

Conventions
-----------
A point cloud is an array of shape ``(N, k)``: ``N`` samples (rows) in ``k`` dimensions.
A transform acts on rows, ``apply(X) = scale * X @ rotation + translation``, where
``rotation`` is a ``(k, k)`` orthogonal matrix (a reflection too unless
``reflection=False``). A row that is NaN in every coordinate is a sample missing from
that cloud: it is left out of the fit and stays NaN in the output. Computation is in
float64 whatever the input; outputs keep the input's float dtype (integers give float64).
Only numpy is imported.

Examples
--------
>>> import numpy as np
>>> from ftviz.align import align_sequence
>>> rng = np.random.default_rng(0)
>>> points = rng.normal(size=(50, 2))
>>> flipped = points * [1.0, -1.0]            # PCA flipped the sign of axis 2
>>> frames = align_sequence([points, flipped], reference="first")
>>> frames.shape
(2, 50, 2)
>>> bool(np.allclose(frames[1], points))
True
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["Procrustes", "fit", "align", "align_sequence", "disparity"]

_REFERENCES = ("previous", "first", "last", "consensus")

# A centred sum of squares this small relative to the uncentred one is rounding noise:
# every point of the cloud is the same point (to float64 precision).
_ZERO_VARIANCE_RATIO = (1e3 * np.finfo(np.float64).eps) ** 2


@dataclass(frozen=True, eq=False)
class Procrustes:
    """A fitted similarity transform ``X -> scale * X @ rotation + translation``.

    Returned by :func:`fit`. The arrays are read-only float64 copies.

    Attributes
    ----------
    rotation : ndarray, shape (k, k)
        Orthogonal matrix, ``rotation.T @ rotation == I``. Its determinant is +1 when the
        fit was made with ``reflection=False``, and may be -1 otherwise.
    scale : float
        Isotropic scale factor, ``>= 0``; exactly 1.0 when fitted with ``scaling=False``.
    translation : ndarray, shape (k,)
        Added after rotating and scaling.
    disparity : float
        Residual of the fit relative to the spread of the target, over the fitted rows
        ``i`` (rows inside ``anchors`` that are finite in both clouds) with weights
        ``w_i`` (1 when no ``weights`` were given)::

            sum_i w_i * ||apply(source_i) - target_i||**2
            ---------------------------------------------
                 sum_i w_i * ||target_i - t_bar||**2

        where ``t_bar`` is the weighted mean of the fitted target rows. 0 is a perfect fit;
        with ``scaling=True`` it lies in [0, 1]. For an unweighted fit with
        ``scaling=True, reflection=True`` it equals ``1 - (sum of singular values)**2``
        of the standardised clouds, which is the disparity of
        :func:`scipy.spatial.procrustes` (and of :func:`disparity`), and is then
        symmetric in source and target.

    Examples
    --------
    >>> import numpy as np
    >>> from ftviz.align import Procrustes
    >>> quarter_turn = np.array([[0.0, 1.0], [-1.0, 0.0]])
    >>> transform = Procrustes(quarter_turn, 2.0, np.array([1.0, 0.0]), 0.0)
    >>> transform.apply(np.array([[1.0, 0.0]]))
    array([[1., 2.]])
    >>> transform.inverse(np.array([[1.0, 2.0]]))
    array([[1., 0.]])
    """

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    disparity: float

    def __post_init__(self):
        rotation = np.array(self.rotation, dtype=np.float64)
        translation = np.array(self.translation, dtype=np.float64)
        if rotation.ndim != 2 or rotation.shape[0] != rotation.shape[1]:
            raise ValueError(f"rotation must be a square (k, k) matrix, got shape {rotation.shape}")
        if translation.shape != rotation.shape[:1]:
            raise ValueError(
                f"translation must have shape ({rotation.shape[0]},) to match rotation "
                f"{rotation.shape}, got shape {translation.shape}"
            )
        rotation.setflags(write=False)
        translation.setflags(write=False)
        # frozen=True forbids plain assignment, also here.
        object.__setattr__(self, "rotation", rotation)
        object.__setattr__(self, "translation", translation)
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "disparity", float(self.disparity))

    def apply(self, X):
        """Map points with the transform: ``scale * X @ rotation + translation``.

        Parameters
        ----------
        X : array_like, shape (..., k)
            Points as rows; any leading shape. NaN rows give NaN rows.

        Returns
        -------
        ndarray, shape (..., k)
            ``X`` transformed, in ``X``'s float dtype (float64 for integer input).
        """
        points, out_dtype = _as_float(X, "X")
        self._check_width(points, "X")
        moved = self.scale * (points @ self.rotation) + self.translation
        return moved.astype(out_dtype, copy=False)

    def inverse(self, Y):
        """Map points back: ``(Y - translation) @ rotation.T / scale``.

        ``inverse(apply(X))`` equals ``X`` up to rounding.

        Parameters
        ----------
        Y : array_like, shape (..., k)
            Points in the target's coordinates.

        Returns
        -------
        ndarray, shape (..., k)
            ``Y`` mapped to the source's coordinates, in ``Y``'s float dtype.

        Raises
        ------
        ValueError
            If ``scale`` is 0 (the transform collapsed every point onto one).
        """
        points, out_dtype = _as_float(Y, "Y")
        self._check_width(points, "Y")
        if self.scale == 0.0:
            raise ValueError("the transform has scale 0 (it maps every point to one), so it has no inverse")
        moved = ((points - self.translation) @ self.rotation.T) / self.scale
        return moved.astype(out_dtype, copy=False)

    def _check_width(self, points, name):
        k = self.rotation.shape[0]
        if points.ndim == 0 or points.shape[-1] != k:
            raise ValueError(
                f"{name} must have shape (..., {k}) for a transform in {k} dimensions, got shape {points.shape}"
            )


def fit(source, target, *, scaling=True, reflection=True, weights=None, anchors=None):
    """Fit the similarity transform that best maps ``source`` onto ``target``.

    Finds ``rotation`` (orthogonal), ``scale`` and ``translation`` minimising::

        sum_i w_i * ||scale * source_i @ rotation + translation - target_i||**2

    over the fitted rows ``i``, in closed form (one SVD of a ``k x k`` matrix).

    Parameters
    ----------
    source : array_like, shape (N, k)
        Points to move. Rows entirely NaN are missing samples and are not fitted.
    target : array_like, shape (N, k)
        Points to move onto; row ``i`` corresponds to ``source`` row ``i``. Rows entirely
        NaN are not fitted.
    scaling : bool, default True
        Fit an isotropic scale; if False, ``scale`` is 1.
    reflection : bool, default True
        Allow ``rotation`` to be a reflection (determinant -1); if False, only proper
        rotations (determinant +1) are considered.
    weights : array_like, shape (N,), optional
        Non-negative weight of each row in the least-squares objective.
    anchors : array_like of int, or of bool with shape (N,), optional
        Rows to fit on, as indices (negative ones count from the end; a repeated index
        counts once) or as a boolean mask. The other rows do not influence the fit.

    Returns
    -------
    Procrustes
        The transform, with ``rotation`` (k, k), ``scale``, ``translation`` (k,) and
        ``disparity`` (see :class:`Procrustes`).

    Raises
    ------
    ValueError
        If the shapes differ or are not 2-D; if a row is partly NaN or any value is
        infinite; if fewer than ``k + 1`` rows are usable (finite in both, inside
        ``anchors``, with positive weight); if ``source`` has zero variance with
        ``scaling=True``, or ``target`` has zero variance; if ``weights`` or ``anchors``
        are malformed.

    See Also
    --------
    align : Apply the fitted transform to ``source`` directly.
    scipy.linalg.orthogonal_procrustes : The rotation alone, without centring.

    Examples
    --------
    >>> import numpy as np
    >>> from ftviz.align import fit
    >>> source = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> quarter_turn = np.array([[0.0, 1.0], [-1.0, 0.0]])
    >>> target = 3.0 * source @ quarter_turn + [10.0, -5.0]
    >>> transform = fit(source, target)
    >>> round(transform.scale, 9), transform.translation.round(9).tolist()
    (3.0, [10.0, -5.0])
    >>> bool(np.allclose(transform.rotation, quarter_turn))
    True
    >>> round(transform.disparity, 12)
    0.0

    Fit on a subset of rows and move all of them:

    >>> noisy = target.copy()
    >>> noisy[3] = [1e6, 1e6]                   # a row that must not count
    >>> transform = fit(source, noisy, anchors=[0, 1, 2])
    >>> bool(np.allclose(transform.apply(source), target))
    True
    """
    return _fit(source, target, scaling=scaling, reflection=reflection, weights=weights, anchors=anchors, min_rows=None)


def align(source, target, *, scaling=True, reflection=True, weights=None, anchors=None):
    """Move ``source`` onto ``target``: ``fit(source, target, ...).apply(source)``.

    Unlike :func:`scipy.spatial.procrustes`, ``target`` is left as it is (not centred or
    rescaled), and every row of ``source`` is moved, including rows outside ``anchors``.

    Parameters
    ----------
    source : array_like, shape (N, k)
        Points to move.
    target : array_like, shape (N, k)
        Points to move onto.
    scaling, reflection, weights, anchors
        As in :func:`fit`.

    Returns
    -------
    ndarray, shape (N, k)
        ``source`` after the transform, in ``source``'s float dtype (float64 for
        integers). Rows NaN in ``source`` stay NaN.

    Raises
    ------
    ValueError
        As :func:`fit`.

    Examples
    --------
    >>> import numpy as np
    >>> from ftviz.align import align
    >>> target = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    >>> source = -target + 5.0                  # rotated by 180 degrees and shifted
    >>> align(source, target).round(12) + 0.0
    array([[0., 0.],
           [2., 0.],
           [0., 1.]])
    """
    transform = fit(source, target, scaling=scaling, reflection=reflection, weights=weights, anchors=anchors)
    return transform.apply(source)


def disparity(a, b):
    """Standardised Procrustes disparity of two point clouds.

    Equal to the disparity returned by :func:`scipy.spatial.procrustes`: both clouds are
    centred and scaled to unit Frobenius norm, the best rotation (reflections allowed)
    and scale are fitted, and the disparity is the sum of squared residuals. In closed
    form it is ``1 - (sum of singular values of A.T @ B)**2`` for the standardised ``A``,
    ``B``, so it is symmetric, lies in [0, 1], and is 0 for clouds that differ by a
    similarity transform. It equals ``fit(a, b).disparity``.

    Parameters
    ----------
    a, b : array_like, shape (N, k)
        Corresponding points. Rows entirely NaN in either are left out (scipy rejects
        them).

    Returns
    -------
    float
        The disparity.

    Raises
    ------
    ValueError
        If the shapes differ or are not 2-D, a row is partly NaN or a value infinite,
        fewer than 2 rows are usable, or either cloud has zero variance.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.spatial import procrustes
    >>> from ftviz.align import disparity
    >>> a = np.array([[1.0, 3.0], [1.0, 2.0], [1.0, 1.0], [2.0, 1.0]])
    >>> b = np.array([[4.0, -2.0], [4.0, -4.0], [4.0, -6.0], [2.0, -6.0]])
    >>> round(disparity(a, b), 12)
    0.0
    >>> c = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    >>> bool(abs(disparity(a, c) - procrustes(a, c)[2]) < 1e-12)
    True
    """
    return _fit(a, b, scaling=True, reflection=True, weights=None, anchors=None, min_rows=2).disparity


def align_sequence(
    frames,
    *,
    reference="previous",
    scaling=True,
    reflection=True,
    weights=None,
    anchors=None,
    tol=1e-10,
    max_iter=100,
):
    """Align every frame of a sequence of point clouds, for a stable animation.

    Parameters
    ----------
    frames : sequence of array_like of shape (N, k), or array_like of shape (T, N, k)
        ``T`` clouds of the same ``N`` samples (row ``i`` is the same sample in every
        frame). A row entirely NaN is a sample missing from that frame: it is left out of
        the fits that involve that frame, and stays NaN in the output.
    reference : {"previous", "first", "last", "consensus"} or int, default "previous"
        What each frame is aligned onto:

        - ``"previous"``: the aligned frame before it (frame 0 is left unchanged). This
          follows motion smoothly; the fit of frame ``t`` uses the rows present in frames
          ``t`` and ``t - 1``.
        - ``"first"``, ``"last"`` or an index (negative counts from the end): that frame,
          which is left unchanged.
        - ``"consensus"``: generalised Procrustes analysis. Every frame is fitted onto the
          mean of the aligned frames (per row, over the frames where the row is present),
          the mean is recomputed, and so on until the root-mean-square change of the mean,
          relative to its root-mean-square spread, is at most ``tol``. The result does not
          depend on the order of the frames (see Notes).
    scaling, reflection : bool, default True
        As in :func:`fit`; with ``"previous"`` and ``"consensus"`` the composed
        transforms obey the same restriction.
    weights : array_like, shape (N,), optional
        Non-negative weight of each sample, the same in every frame.
    anchors : array_like of int, or of bool with shape (N,), optional
        Samples to fit on, as in :func:`fit`; all samples are moved.
    tol : float, default 1e-10
        Convergence tolerance of ``"consensus"``.
    max_iter : int, default 100
        Most rounds of fits for ``"consensus"``; if ``tol`` is not met by then, a
        ``RuntimeWarning`` is issued and the last round is returned. (The first round
        fits onto a single frame and cannot meet ``tol``: ``max_iter=1`` always warns.)

    Returns
    -------
    ndarray, shape (T, N, k)
        The aligned frames, in the input's float dtype (float64 for integers). A new
        array; the reference frame (if any) is an exact copy of its input.

    Raises
    ------
    ValueError
        If ``frames`` is empty, frames differ in shape or are not 2-D; a row is partly
        NaN or a value infinite; a frame has zero variance; two frames to be fitted share
        fewer than ``k + 1`` usable rows; the best fit of a frame has scale 0 (frames
        uncorrelated, or mirror images in 1-D with ``reflection=False``); ``reference``,
        ``weights``, ``anchors``, ``tol`` or ``max_iter`` is invalid.

    Notes
    -----
    ``"previous"`` is computed without running the chain: frame ``t`` is fitted onto the
    *unaligned* frame ``t - 1`` and the transforms are composed. This is the same result
    (the best transform onto ``g(Y)`` is ``g`` composed with the best transform onto
    ``Y`` for any similarity ``g`` of the allowed kind), and it lets all ``T - 1`` fits
    run as batched matrix products. Cost is a few passes over the ``T * N * k`` values;
    the SVDs are ``k x k``.

    ``"consensus"`` leaves the pose (rotation, scale, position) of the mean free; it is
    fixed so that, over the frames, the transforms from input to output average to the
    identity: their rotations have the identity as chordal mean (the orthogonal polar
    factor of their sum), their scales have geometric mean 1, and the centroids of the
    output frames average to those of the input frames (each over its fitted rows). With
    ``scaling=True`` the mean is held at a fixed size while iterating, which prevents
    shrinking. The frames are processed in an order fixed by their contents (their
    bytes), so permuting the input permutes the output exactly, bit for bit. Applying
    one similarity transform to every input frame applies it to the output, up to
    ``tol``, except where the pose is a tie: when the rotations sum to a singular matrix
    (in 2-D, one rotation plus one reflection always does, as for two frames that are
    mirror images) the tie is broken by that content order.

    Examples
    --------
    >>> import numpy as np
    >>> from ftviz.align import align_sequence
    >>> rng = np.random.default_rng(1)
    >>> cloud = rng.normal(size=(100, 3))
    >>> turn = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    >>> frames = np.stack([cloud, 2.0 * cloud @ turn + 1.0, cloud @ turn.T @ turn.T])
    >>> aligned = align_sequence(frames)                  # chained: t onto t - 1
    >>> bool(np.allclose(aligned, cloud))
    True
    >>> aligned = align_sequence(frames, reference="consensus")
    >>> bool(np.allclose(aligned[0], aligned[1]) and np.allclose(aligned[1], aligned[2]))
    True

    A sample missing from a frame stays missing:

    >>> frames[1, 7] = np.nan
    >>> bool(np.isnan(align_sequence(frames, reference="last")[1, 7]).all())
    True
    """
    stack, out_dtype = _as_frames(frames)
    n_frames, n_rows, k = stack.shape
    mode, reference_index = _parse_reference(reference, n_frames)
    row_weights = _row_weights(weights, anchors, n_rows)
    if mode == "consensus":
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
            raise ValueError(f"tol must be a non-negative number, got {tol!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    valid = _present_rows(stack, "frames")
    if n_frames == 1:
        return stack.astype(out_dtype, copy=True)

    clouds, shifts = _centre_frames(stack, valid)
    if mode == "previous":
        linear, offset = _chain_transforms(clouds, shifts, valid, row_weights, scaling, reflection)
    elif mode == "consensus":
        # Work in an order fixed by the frames' contents, so that the result, tie-breaks
        # and rounding included, depends only on the set of frames, not on their order.
        order = _canonical_order(stack)
        linear, offset = _consensus_transforms(
            clouds[order], shifts[order], None if valid is None else valid[order],
            row_weights, scaling, reflection, float(tol), int(max_iter), order,
        )
        restore = np.argsort(order)
        linear, offset = linear[restore], offset[restore]
    else:
        linear, offset = _reference_transforms(clouds, shifts, valid, row_weights, reference_index, scaling, reflection)
    del clouds

    aligned = np.matmul(stack, linear)
    aligned += offset[:, None, :]
    if mode != "consensus":
        # The reference is not merely close to itself: it is its input, bit for bit.
        unchanged = 0 if mode == "previous" else reference_index
        aligned[unchanged] = stack[unchanged]
    return aligned.astype(out_dtype, copy=False)


# -- input checks ------------------------------------------------------------------------


def _as_float(values, name):
    """``values`` as a float64 array, and the dtype to return results in."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    out_dtype = array.dtype if array.dtype.kind == "f" else np.dtype(np.float64)
    return array.astype(np.float64, copy=False), out_dtype


def _as_frames(frames):
    """Stack ``frames`` into a (T, N, k) float64 array; also return the output dtype."""
    if isinstance(frames, np.ndarray) or not isinstance(frames, (list, tuple)):
        stack, out_dtype = _as_float(frames, "frames")
        if stack.ndim != 3:
            raise ValueError(
                f"frames must be a sequence of (N, k) arrays or one (T, N, k) array, got shape {stack.shape}"
            )
    else:
        if len(frames) == 0:
            raise ValueError("frames is empty; give at least one (N, k) frame")
        converted = [_as_float(frame, f"frames[{t}]") for t, frame in enumerate(frames)]
        first_shape = converted[0][0].shape
        for t, (frame, _) in enumerate(converted):
            if frame.ndim != 2:
                raise ValueError(f"frames[{t}] must be 2-D with shape (N, k), got shape {frame.shape}")
            if frame.shape != first_shape:
                raise ValueError(f"frames[{t}] has shape {frame.shape}, but frames[0] has shape {first_shape}")
        out_dtype = np.result_type(*[dtype for _, dtype in converted])
        stack = np.stack([frame for frame, _ in converted])
    n_frames, n_rows, k = stack.shape
    if n_frames == 0:
        raise ValueError(f"frames is empty (shape {stack.shape}); give at least one (N, k) frame")
    if k < 1 or n_rows < 1:
        raise ValueError(f"frames must have at least one row and one column, got frames of shape {(n_rows, k)}")
    return stack, out_dtype


def _canonical_order(stack):
    """An order of the frames (T, N, k) that depends only on their contents (their bytes)."""
    flat = stack.reshape(stack.shape[0], -1)
    prefixes = [frame[:64].tobytes() for frame in flat]
    if len(set(prefixes)) == len(prefixes):
        return np.array(sorted(range(len(flat)), key=prefixes.__getitem__))
    return np.array(sorted(range(len(flat)), key=lambda t: flat[t].tobytes()))


def _check_pair(source, target):
    if source.ndim != 2 or target.ndim != 2:
        raise ValueError(
            f"source and target must be 2-D arrays of shape (N, k), got shapes {source.shape} and {target.shape}"
        )
    if source.shape != target.shape:
        raise ValueError(f"the shapes of source and target differ ({source.shape} vs {target.shape})")
    if source.shape[0] < 1 or source.shape[1] < 1:
        raise ValueError(f"source and target must have at least one row and one column, got shape {source.shape}")


def _present_rows(points, name):
    """Rows present (finite) in ``points`` (..., N, k): None when all are, else a bool (..., N).

    Raises if a row is partly non-finite or holds an infinity: only a whole-NaN row is a
    missing sample.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(points.sum()):  # one pass, no temporary; an overflow falls through
            return None
        # Row sums by a matrix product (fast, unlike reductions over a short last axis):
        # finite exactly for the finite rows, bar overflow, which the exact check below catches.
        suspect = ~np.isfinite(points @ np.ones(points.shape[-1]))
    where = np.nonzero(suspect)
    rows = points[where]
    finite = np.isfinite(rows).all(axis=-1)
    bad = ~(finite | np.isnan(rows).all(axis=-1))
    if bad.any():
        at = tuple(int(axis[np.argmax(bad)]) for axis in where)
        label = f"{name}[{', '.join(map(str, at))}]"
        raise ValueError(
            f"{label} is {points[at]}: a row must be all finite, or all NaN to mark a missing "
            "sample (infinite values and partly-NaN rows are not allowed)"
        )
    present = ~suspect
    present[where] = finite
    return present


def _row_weights(weights, anchors, n_rows):
    """Per-row fitting weights (N,) from ``weights`` and ``anchors``; None means all ones."""
    row_weights = None
    if weights is not None:
        row_weights = np.array(weights, dtype=np.float64)  # copy: never alias the caller's
        if row_weights.shape != (n_rows,):
            raise ValueError(f"weights must have shape ({n_rows},), one per row, got shape {row_weights.shape}")
        if not np.isfinite(row_weights).all() or (row_weights < 0).any():
            bad = int(np.flatnonzero(~(np.isfinite(row_weights) & (row_weights >= 0)))[0])
            raise ValueError(f"weights must be finite and non-negative, got weights[{bad}] = {row_weights[bad]}")
    if anchors is not None:
        mask = _anchor_mask(anchors, n_rows)
        row_weights = mask.astype(np.float64) if row_weights is None else row_weights * mask
    return row_weights


def _anchor_mask(anchors, n_rows):
    indices = np.asarray(anchors)
    if indices.dtype == np.bool_:
        if indices.shape != (n_rows,):
            raise ValueError(f"a boolean anchors mask must have shape ({n_rows},), got shape {indices.shape}")
        return indices
    if indices.size == 0:
        return np.zeros(n_rows, dtype=bool)
    if indices.dtype.kind not in "iu":
        raise ValueError(f"anchors must be integer row indices or a boolean mask, got dtype {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"anchors indices must be 1-D, got shape {indices.shape}")
    out_of_range = (indices < -n_rows) | (indices >= n_rows)
    if out_of_range.any():
        bad = int(indices[out_of_range][0])
        raise ValueError(f"anchors index {bad} is out of range for {n_rows} rows (valid: {-n_rows} to {n_rows - 1})")
    mask = np.zeros(n_rows, dtype=bool)
    mask[indices] = True
    return mask


def _parse_reference(reference, n_frames):
    if isinstance(reference, str):
        if reference not in _REFERENCES:
            raise ValueError(
                f"unknown reference {reference!r}; use 'previous', 'first', 'last', 'consensus' or a frame index"
            )
        if reference == "first":
            return "index", 0
        if reference == "last":
            return "index", n_frames - 1
        return reference, None
    if isinstance(reference, numbers.Integral) and not isinstance(reference, (bool, np.bool_)):
        if not -n_frames <= reference < n_frames:
            raise ValueError(f"reference frame {reference} is out of range for {n_frames} frames")
        return "index", int(reference) % n_frames
    raise ValueError(
        f"unknown reference {reference!r}; use 'previous', 'first', 'last', 'consensus' or a frame index"
    )


def _pair_weights(row_weights, present_a, present_b, n_frames=None):
    """Weights of the rows fitted between clouds with the given present rows.

    Shape (n_frames, N), or (N,) when ``n_frames`` is None; None means every row has
    weight 1.
    """
    if present_a is None or present_b is None:
        both = present_a if present_b is None else present_b
    else:
        both = present_a & present_b
    if both is None:
        if row_weights is None or n_frames is None:
            return row_weights
        return np.tile(row_weights, (n_frames, 1))
    weights = both.astype(np.float64)
    if row_weights is not None:
        weights *= row_weights
    return weights


def _check_shared_rows(pair_weights, n_rows, k, describe):
    """Raise unless every pair has at least k + 1 rows of positive weight."""
    if pair_weights is None:
        counts = np.full(1, n_rows)
    else:
        counts = np.count_nonzero(pair_weights > 0, axis=-1).reshape(-1)
    short = np.flatnonzero(counts < k + 1)
    if short.size:
        pair = int(short[0])
        raise ValueError(
            f"{describe(pair)} share only {int(counts[pair])} usable rows (present in both, inside anchors, "
            f"with positive weight); a fit in k = {k} dimensions needs at least k + 1 = {k + 1}"
        )


# -- the maths ---------------------------------------------------------------------------
#
# Clouds are kept transposed, as (k, N) or (T, k, N) arrays: then every cross product is
# one BLAS matrix product and every sum over rows is a contiguous reduction.


@dataclass
class _Sources:
    """Per-frame statistics of T source clouds, computed once for fits onto any target."""

    centre: np.ndarray  # (T, k) weighted mean, up to rounding (0 when unweighted: pre-centred)
    weighted: np.ndarray  # (T, k, N) w * (x - centre), exactly 0 on rows of weight 0
    rounding: np.ndarray  # (T, k) sum_i w_i (x_i - centre), the centring's rounding error
    total_weight: np.ndarray  # (T,)
    sum_squares: np.ndarray  # (T,) sum_i w_i ||x_i - mean||^2

    @property
    def mean(self):
        return self.centre + self.rounding / self.total_weight[:, None]


def _prepare_sources(clouds, weights):
    """Statistics of ``clouds`` (T, k, N), finite, under row weights (T, N) or None (all 1).

    With ``weights=None`` the clouds must already be centred (up to rounding); they are
    used without a copy.
    """
    n_frames, k, n_rows = clouds.shape
    if weights is None:
        total_weight = np.full(n_frames, float(n_rows))
        centre = np.zeros((n_frames, k))
        weighted = clouds
        sum_squares = np.einsum("tkn,tkn->t", clouds, clouds)
    else:
        total_weight = weights.sum(axis=1)
        centre = np.matmul(clouds, weights[:, :, None])[:, :, 0] / total_weight[:, None]
        weighted = clouds - centre[:, :, None]
        sum_squares = np.einsum("tn,tkn,tkn->t", weights, weighted, weighted)
        weighted *= weights[:, None, :]
    rounding = weighted.sum(axis=2)
    sum_squares = sum_squares - (rounding**2).sum(axis=1) / total_weight
    return _Sources(centre, weighted, rounding, total_weight, np.maximum(sum_squares, 0.0))


def _flat_frames(sources, offsets):
    """Which frames' fitted rows coincide, bool (T,): no spread beyond rounding."""
    mean = sources.mean + offsets
    uncentred = sources.sum_squares + sources.total_weight * (mean**2).sum(axis=1)
    return sources.sum_squares <= _ZERO_VARIANCE_RATIO * uncentred


def _fit_sources(sources, targets, weights, scaling, reflection):
    """Best similarity from each source cloud onto its target, all T at once.

    Parameters
    ----------
    sources : _Sources
        T source clouds.
    targets : ndarray, shape (k, N) or (T, k, N)
        One target for all, or one per source; finite (values on weight-0 rows ignored).
    weights : ndarray, shape (T, N), or None
        The weights ``sources`` was prepared with.

    Returns
    -------
    rotation : ndarray, shape (T, k, k)
    scale : ndarray, shape (T,)
    translation : ndarray, shape (T, k)
        ``target_i ~ scale * source_i @ rotation + translation`` (points as rows).
    """
    n_frames, k, n_rows = sources.weighted.shape
    if targets.ndim == 2:
        cross = (sources.weighted.reshape(n_frames * k, n_rows) @ targets.T).reshape(n_frames, k, k)
        target_sum = targets.sum(axis=1)[None, :] if weights is None else weights @ targets.T
    else:
        cross = np.matmul(sources.weighted, targets.transpose(0, 2, 1))
        target_sum = targets.sum(axis=2) if weights is None else np.matmul(targets, weights[:, :, None])[:, :, 0]
    target_mean = target_sum / sources.total_weight[:, None]
    # cross is sum_i w_i (x_i - centre) y_i^T; centring y too subtracts rounding y_mean^T.
    # (Centring x on its exact mean instead of `centre` changes nothing more.)
    cross -= sources.rounding[:, :, None] * target_mean[:, None, :]
    left, singular, right = np.linalg.svd(cross)
    if not reflection:
        flip = np.linalg.det(left) * np.linalg.det(right) < 0
        left[flip, :, -1] *= -1.0
        singular[flip, -1] *= -1.0
    rotation = left @ right
    if scaling:
        # The trace is >= 0 except for k = 1 without reflections, where a negative scale
        # would be the forbidden reflection: the best allowed scale is then 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.maximum(singular.sum(axis=1), 0.0) / sources.sum_squares
    else:
        scale = np.ones(n_frames)
    translation = target_mean - scale[:, None] * np.einsum("tk,tkj->tj", sources.mean, rotation)
    return rotation, scale, translation


def _orthogonal_mean(rotations, reflection):
    """The orthogonal Q maximising trace(Q @ sum(rotations)): their chordal mean, (k, k)."""
    left, _, right = np.linalg.svd(rotations.sum(axis=0))
    if not reflection and np.linalg.det(left) * np.linalg.det(right) < 0:
        left[:, -1] *= -1.0
    return (left @ right).T


def _fit(source, target, *, scaling, reflection, weights, anchors, min_rows):
    source, _ = _as_float(source, "source")
    target, _ = _as_float(target, "target")
    _check_pair(source, target)
    n_rows, k = source.shape
    row_weights = _row_weights(weights, anchors, n_rows)
    pair_weights = _pair_weights(row_weights, _present_rows(source, "source"), _present_rows(target, "target"))
    need = k + 1 if min_rows is None else min_rows
    rows = None if pair_weights is None else np.flatnonzero(pair_weights > 0)
    usable = n_rows if rows is None else rows.size
    if usable < need:
        raise ValueError(
            f"source and target share only {usable} usable rows (finite in both, inside anchors, with "
            f"positive weight) of {n_rows}; a fit in k = {k} dimensions needs at least {need}"
        )
    if rows is not None:
        source, target, pair_weights = source[rows], target[rows], pair_weights[rows]
    # Centre first: cross products of points far from the origin would lose digits.
    source_offset = source.mean(axis=0)
    target_offset = target.mean(axis=0)
    source_cloud = (source - source_offset).T[None]
    target_cloud = (target - target_offset).T[None]
    frame_weights = None if pair_weights is None else pair_weights[None, :]
    sources = _prepare_sources(source_cloud, frame_weights)
    target_stats = _prepare_sources(target_cloud, frame_weights)
    if scaling and _flat_frames(sources, source_offset)[0]:
        raise ValueError(
            f"source has zero variance (all {usable} fitted rows are the same point), so no scale can be fitted; "
            "pass scaling=False or give distinct points"
        )
    if _flat_frames(target_stats, target_offset)[0]:
        raise ValueError(
            f"target has zero variance (all {usable} fitted rows are the same point), so the fit and its "
            "disparity are undefined"
        )
    rotation, scale, translation = _fit_sources(sources, target_cloud[0], frame_weights, scaling, reflection)
    rotation, scale, translation = rotation[0], float(scale[0]), translation[0]
    # Residuals about the weighted means: exact even when the fit is almost perfect.
    source_centred = source_cloud[0] - sources.mean[0][:, None]
    target_centred = target_cloud[0] - target_stats.mean[0][:, None]
    residual = scale * (rotation.T @ source_centred) - target_centred
    squares = (residual**2).sum(axis=0)
    residual_sum = squares.sum() if pair_weights is None else squares @ pair_weights
    translation = translation + target_offset - scale * (source_offset @ rotation)
    return Procrustes(rotation, scale, translation, residual_sum / target_stats.sum_squares[0])


def _centre_frames(stack, present):
    """Frames centred on the mean of their present rows, transposed, and the means.

    Returns ``clouds`` (T, k, N), with missing rows set to 0, and ``shifts`` (T, k), so
    that ``stack[t, i] == clouds[t, :, i] + shifts[t]`` on present rows. Raises for a
    frame whose present rows are all one point.
    """
    n_frames, n_rows, k = stack.shape
    clouds = np.empty((n_frames, k, n_rows))
    if present is None:
        counts = np.full(n_frames, float(n_rows))
        # A matrix product sums over the middle axis many times faster than .mean(axis=1).
        shifts = np.matmul(np.ones((1, n_rows)), stack)[:, 0, :] / n_rows
        np.subtract(stack.transpose(0, 2, 1), shifts[:, :, None], out=clouds)
    else:
        counts = present.sum(axis=1).astype(np.float64)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(f"frames[{int(empty[0])}] has no finite rows (every sample is missing)")
        missing = ~present[:, None, :]
        np.copyto(clouds, stack.transpose(0, 2, 1))
        np.copyto(clouds, 0.0, where=missing)
        shifts = clouds.sum(axis=2) / counts[:, None]
        clouds -= shifts[:, :, None]
        np.copyto(clouds, 0.0, where=missing)
    spread = np.einsum("tkn,tkn->t", clouds, clouds)
    flat = np.flatnonzero(spread <= _ZERO_VARIANCE_RATIO * (spread + counts * (shifts**2).sum(axis=1)))
    if flat.size:
        raise ValueError(
            f"frames[{int(flat[0])}] has zero variance (all its points are the same point), so it cannot be aligned"
        )
    return clouds, shifts


def _check_scalable(sources, offsets, scaling, frame_of, skip=None):
    if scaling:
        flat = np.flatnonzero(_flat_frames(sources, offsets))
        flat = flat[flat != skip]
        if flat.size:
            raise ValueError(
                f"frames[{frame_of(int(flat[0]))}] has zero variance over its fitted rows, so no scale can be "
                "fitted; pass scaling=False, or anchors with distinct points"
            )


def _raw_transforms(rotation, scale, translation, source_shifts, target_shifts):
    """Turn fits between centred frames into ``y = x @ linear + offset`` on raw frames."""
    linear = scale[:, None, None] * rotation
    offset = translation - np.einsum("tk,tkj->tj", source_shifts, linear) + target_shifts
    return linear, offset


def _reference_transforms(clouds, shifts, present, row_weights, index, scaling, reflection):
    n_frames, k, n_rows = clouds.shape
    weights = _pair_weights(row_weights, present, None if present is None else present[index], n_frames)
    movers = np.delete(np.arange(n_frames), index)  # every frame but the reference
    _check_shared_rows(
        None if weights is None else weights[movers],
        n_rows,
        k,
        lambda t: f"frames[{movers[t]}] and frames[{index}]",
    )
    sources = _prepare_sources(clouds, weights)
    _check_scalable(sources, shifts, scaling, lambda t: t, skip=index)
    rotation, scale, translation = _fit_sources(sources, clouds[index], weights, scaling, reflection)
    scale[index] = 1.0  # the reference is not moved
    _check_positive_scale(scale, lambda t: f"frames[{t}] onto frames[{index}]")
    linear, offset = _raw_transforms(rotation, scale, translation, shifts, shifts[index][None, :])
    linear[index] = np.eye(k)
    offset[index] = 0.0
    return linear, offset


def _chain_transforms(clouds, shifts, present, row_weights, scaling, reflection):
    n_frames, k, n_rows = clouds.shape
    weights = _pair_weights(
        row_weights, None if present is None else present[1:], None if present is None else present[:-1], n_frames - 1
    )
    _check_shared_rows(weights, n_rows, k, lambda t: f"frames[{t + 1}] and frames[{t}]")
    sources = _prepare_sources(clouds[1:], weights)
    _check_scalable(sources, shifts[1:], scaling, lambda t: t + 1)
    rotation, scale, translation = _fit_sources(sources, clouds[:-1], weights, scaling, reflection)
    _check_positive_scale(scale, lambda t: f"frames[{t + 1}] onto frames[{t}]")
    step_linear, step_offset = _raw_transforms(rotation, scale, translation, shifts[1:], shifts[:-1])
    # Frame t onto aligned frame t-1 is (frame t onto raw frame t-1) then (t-1's own move).
    linear = np.empty((n_frames, k, k))
    offset = np.empty((n_frames, k))
    linear[0] = np.eye(k)
    offset[0] = 0.0
    for t in range(1, n_frames):
        linear[t] = step_linear[t - 1] @ linear[t - 1]
        offset[t] = step_offset[t - 1] @ linear[t - 1] + offset[t - 1]
    return linear, offset


def _mean_shape(sources, weights, row_weight, linear, offset):
    """Per-row mean over frames of the moved rows ``x @ linear + offset``, as (k, N).

    ``row_weight`` (N,) is ``weights.sum(axis=0)``. Rows whose weight is 0 in every frame
    come out as 0 (nothing is fitted on them).
    """
    n_frames, k, n_rows = sources.weighted.shape
    # sum_t w_tn (x_tn @ A_t + b_t) = sum_t w_tn (x_tn - c_t) @ A_t + sum_t w_tn (c_t @ A_t + b_t);
    # the weights w_tn = w_n * present_tn, so w_n cancels against the denominator.
    total = linear.reshape(n_frames * k, k).T @ sources.weighted.reshape(n_frames * k, n_rows)
    moved_centres = np.einsum("tk,tkj->tj", sources.centre, linear) + offset
    if weights is None:
        total += moved_centres.sum(axis=0)[:, None]
        total /= n_frames
    else:
        total += moved_centres.T @ weights
        total /= np.where(row_weight > 0, row_weight, 1.0)
    return total


def _normalise(shape, row_weight, size):
    """Centre ``shape`` (k, N) on its weighted mean; rescale to ``size`` if given.

    Returns the shape and its size (weighted root-sum-of-squares about the mean).
    """
    if row_weight is None:
        shape = shape - shape.mean(axis=1)[:, None]
        sum_squares = np.einsum("kn,kn->", shape, shape)
    else:
        shape = shape - (shape @ row_weight)[:, None] / row_weight.sum()
        sum_squares = (shape**2).sum(axis=0) @ row_weight
    current = math.sqrt(sum_squares)
    if size is not None and current > 0:
        shape *= size / current
        current = size
    return shape, current


def _consensus_transforms(clouds, shifts, present, row_weights, scaling, reflection, tol, max_iter, names):
    """Generalised Procrustes analysis; ``names[t]`` is frame t's index for messages."""
    n_frames, k, n_rows = clouds.shape
    weights = _pair_weights(row_weights, present, None, n_frames)
    _check_shared_rows(weights, n_rows, k, lambda t: f"frames[{names[t]}] (fitted rows) and the consensus")
    sources = _prepare_sources(clouds, weights)
    _check_scalable(sources, shifts, scaling, lambda t: names[t])
    row_weight = None if weights is None else weights.sum(axis=0)

    # Start from the first frame (of the canonical order); up to tol, the converged
    # consensus does not depend on the start but for its pose, which is fixed below.
    if present is None or present[0].all():
        start_sources, start_weights = sources, weights
    else:
        start_weights = _pair_weights(row_weights, present, present[0], n_frames)
        _check_shared_rows(start_weights, n_rows, k, lambda t: f"frames[{names[t]}] and frames[{names[0]}]")
        start_sources = _prepare_sources(clouds, start_weights)
    rotation, scale, translation = _fit_sources(start_sources, clouds[0], start_weights, scaling, reflection)
    del start_sources
    _check_positive_scale(scale, lambda t: f"frames[{names[t]}] onto frames[{names[0]}]")
    consensus = _mean_shape(sources, weights, row_weight, scale[:, None, None] * rotation, translation)
    consensus, size = _normalise(consensus, row_weight, None)

    converged = False
    for _ in range(max_iter - 1):
        rotation, scale, translation = _fit_sources(sources, consensus, weights, scaling, reflection)
        _check_positive_scale(scale, lambda t: f"frames[{names[t]}] onto the consensus")
        updated = _mean_shape(sources, weights, row_weight, scale[:, None, None] * rotation, translation)
        updated, updated_size = _normalise(updated, row_weight, size if scaling else None)
        change = updated - consensus
        change_squares = (
            np.einsum("kn,kn->", change, change) if row_weight is None else (change**2).sum(axis=0) @ row_weight
        )
        consensus = updated
        if math.sqrt(change_squares) <= tol * updated_size:
            converged = True
            break
    if not converged:
        warnings.warn(
            f"consensus alignment did not converge to tol={tol} in max_iter={max_iter} rounds; "
            "raise max_iter or tol",
            RuntimeWarning,
            stacklevel=3,
        )

    # Fix the pose of the consensus so that input -> output transforms average to identity.
    linear = scale[:, None, None] * rotation
    input_centres = sources.mean  # (T, k), centred coordinates
    output_centres = np.einsum("tk,tkj->tj", input_centres, linear) + translation
    turn = _orthogonal_mean(rotation, reflection)
    grow = math.exp(-np.log(scale).mean()) if scaling else 1.0
    shift = (input_centres + shifts).mean(axis=0) - grow * (output_centres.mean(axis=0) @ turn)
    linear_out = grow * (linear @ turn)
    offset_out = grow * ((translation - np.einsum("tk,tkj->tj", shifts, linear)) @ turn) + shift
    return linear_out, offset_out


def _check_positive_scale(scale, describe):
    bad = np.flatnonzero(~(scale > 0))
    if bad.size:
        raise ValueError(
            f"the best fit of {describe(int(bad[0]))} has scale 0: the frames are uncorrelated (or, with "
            "reflection=False, mirror images), so the first would collapse to a point"
        )
