"""Tests for ftviz.align: exact recovery, agreement with scipy, sequences, and errors."""

from __future__ import annotations

import dataclasses
import doctest
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import procrustes

import ftviz.align
from ftviz.align import Procrustes, align, align_sequence, disparity, fit

PROPERTY = settings(max_examples=30, deadline=None)
SLOW_PROPERTY = settings(max_examples=12, deadline=None)

seeds = st.integers(0, 2**32 - 1)
dims = st.integers(1, 5)


def orthogonal(rng, k, proper=None):
    """A random k x k orthogonal matrix; ``proper`` forces det +1 (True) or -1 (False)."""
    q, r = np.linalg.qr(rng.normal(size=(k, k)))
    q = q * np.sign(np.diag(r))
    if proper is not None and (np.linalg.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return q


def similarity(rng, k, *, proper=None, scaling=True):
    """A random transform as (rotation, scale, translation)."""
    scale = float(np.exp(rng.uniform(-2.0, 2.0))) if scaling else 1.0
    return orthogonal(rng, k, proper), scale, rng.normal(scale=10.0, size=k)


def moved(points, rotation, scale, translation):
    return scale * points @ rotation + translation


def objective(source, target, rotation, scale, translation, weights=None):
    squares = ((moved(source, rotation, scale, translation) - target) ** 2).sum(axis=1)
    return squares.sum() if weights is None else squares @ weights


def assert_same_transform(got, want, atol=1e-9):
    np.testing.assert_allclose(got.rotation, want.rotation, atol=atol, rtol=0)
    np.testing.assert_allclose(got.scale, want.scale, atol=atol, rtol=atol)
    np.testing.assert_allclose(got.translation, want.translation, atol=atol * 100, rtol=atol)
    np.testing.assert_allclose(got.disparity, want.disparity, atol=atol, rtol=0)


# -- documentation and import cost ---------------------------------------------------------


def test_docstring_examples_run():
    result = doctest.testmod(ftviz.align, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 20
    assert result.failed == 0


def test_import_does_not_pull_heavy_dependencies():
    heavy = ["torch", "transformers", "plotly", "pandas"]
    code = f"import sys, ftviz.align; print(sorted(set({heavy!r}) & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- fit -----------------------------------------------------------------------------------


@PROPERTY
@given(seed=seeds, k=dims, extra=st.integers(1, 30), proper=st.booleans())
def test_fit_recovers_a_known_similarity(seed, k, extra, proper):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(k + extra, k))
    rotation, scale, translation = similarity(rng, k, proper=proper)
    transform = fit(source, moved(source, rotation, scale, translation))
    np.testing.assert_allclose(transform.rotation, rotation, atol=1e-9, rtol=0)
    np.testing.assert_allclose(transform.scale, scale, rtol=1e-9)
    np.testing.assert_allclose(transform.translation, translation, atol=1e-9 * (1 + scale), rtol=1e-9)
    assert transform.disparity < 1e-18


@PROPERTY
@given(seed=seeds, k=dims, extra=st.integers(1, 30))
def test_fit_without_scaling_recovers_a_rigid_motion(seed, k, extra):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(k + extra, k))
    rotation, _, translation = similarity(rng, k, scaling=False)
    transform = fit(source, moved(source, rotation, 1.0, translation), scaling=False)
    assert transform.scale == 1.0
    np.testing.assert_allclose(transform.rotation, rotation, atol=1e-9, rtol=0)
    np.testing.assert_allclose(transform.translation, translation, atol=1e-9, rtol=1e-9)


@PROPERTY
@given(seed=seeds, k=dims, extra=st.integers(1, 30), noise=st.sampled_from([0.0, 1e-6, 0.1, 1.0, None]))
def test_disparity_matches_scipy(seed, k, extra, noise):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k + extra, k)) * rng.uniform(0.1, 10, size=k) + rng.normal(scale=100, size=k)
    if noise is None:  # unrelated clouds
        b = rng.normal(size=a.shape)
    else:
        b = moved(a, *similarity(rng, k)) + noise * rng.normal(size=a.shape)
    expected = procrustes(a, b)[2]
    assert abs(disparity(a, b) - expected) <= 1e-12
    assert abs(disparity(b, a) - expected) <= 1e-12
    assert abs(fit(a, b).disparity - expected) <= 1e-12


@PROPERTY
@given(seed=seeds, k=dims, extra=st.integers(1, 10), scaling=st.booleans(), reflection=st.booleans())
def test_fit_disparity_is_the_documented_ratio(seed, k, extra, scaling, reflection):
    rng = np.random.default_rng(seed)
    source, target = rng.normal(size=(2, k + extra, k))
    weights = rng.uniform(0, 2, size=k + extra)
    transform = fit(source, target, scaling=scaling, reflection=reflection, weights=weights)
    target_mean = weights @ target / weights.sum()
    spread = ((target - target_mean) ** 2).sum(axis=1) @ weights
    residual = objective(source, target, transform.rotation, transform.scale, transform.translation, weights)
    np.testing.assert_allclose(transform.disparity, residual / spread, rtol=1e-9, atol=1e-15)


@PROPERTY
@given(seed=seeds, k=dims, extra=st.integers(1, 10), points=st.integers(1, 20))
def test_inverse_undoes_apply(seed, k, extra, points):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(k + extra, k))
    transform = fit(source, moved(source, *similarity(rng, k)) + 0.1 * rng.normal(size=source.shape))
    X = rng.normal(scale=5.0, size=(points, k))
    np.testing.assert_allclose(transform.inverse(transform.apply(X)), X, atol=1e-10, rtol=1e-12)
    np.testing.assert_allclose(transform.apply(transform.inverse(X)), X, atol=1e-10, rtol=1e-12)


@PROPERTY
@given(seed=seeds, k=dims, extra=st.integers(1, 20), garbage=st.integers(1, 10), as_mask=st.booleans())
def test_anchors_fit_on_a_subset_only(seed, k, extra, garbage, as_mask):
    rng = np.random.default_rng(seed)
    n = k + extra + garbage
    source = rng.normal(size=(n, k))
    truth = similarity(rng, k)
    target = moved(source, *truth)
    outside = rng.choice(n, size=garbage, replace=False)
    corrupted = target.copy()
    corrupted[outside] = rng.normal(scale=1e6, size=(garbage, k))
    inside = np.setdiff1d(np.arange(n), outside)
    if as_mask:
        anchors = np.zeros(n, dtype=bool)
        anchors[inside] = True
    else:  # negative and repeated indices are fine
        anchors = np.concatenate([inside - n, inside[:1]]).tolist()
    transform = fit(source, corrupted, anchors=anchors)
    np.testing.assert_allclose(transform.rotation, truth[0], atol=1e-9, rtol=0)
    np.testing.assert_allclose(transform.scale, truth[1], rtol=1e-9)
    assert transform.disparity < 1e-18
    # every row moves, the garbage rows onto where they belong
    np.testing.assert_allclose(align(source, corrupted, anchors=anchors), target, atol=1e-8)


@PROPERTY
@given(seed=seeds, k=dims, counts=st.lists(st.integers(0, 3), min_size=8, max_size=30))
def test_integer_weights_equal_repeated_rows(seed, k, counts):
    counts = np.array(counts)
    if np.count_nonzero(counts) < k + 1:
        counts[: k + 1] = 1
    rng = np.random.default_rng(seed)
    source, target = rng.normal(size=(2, counts.size, k))
    weighted = fit(source, target, weights=counts)
    repeated = fit(np.repeat(source, counts, axis=0), np.repeat(target, counts, axis=0))
    assert_same_transform(weighted, repeated)


@PROPERTY
@given(seed=seeds, k=dims, extra=st.integers(3, 20))
def test_nan_rows_are_left_out_and_stay_nan(seed, k, extra):
    rng = np.random.default_rng(seed)
    n = k + extra + 2
    source = rng.normal(size=(n, k))
    target = moved(source, *similarity(rng, k)) + 0.05 * rng.normal(size=(n, k))
    source[0] = np.nan
    target[1] = np.nan
    transform = fit(source, target)
    assert_same_transform(transform, fit(source[2:], target[2:]))
    moved_source = align(source, target)
    assert np.isnan(moved_source[0]).all()
    assert np.isfinite(moved_source[1:]).all()


@PROPERTY
@given(seed=seeds, k=st.integers(2, 5), extra=st.integers(1, 20), noise=st.sampled_from([0.0, 0.01, 0.5]))
def test_reflection_false_gives_the_best_proper_rotation(seed, k, extra, noise):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(k + extra, k))
    target = moved(source, *similarity(rng, k, proper=False)) + noise * rng.normal(size=source.shape)
    transform = fit(source, target, reflection=False)
    assert np.linalg.det(transform.rotation) == pytest.approx(1.0, abs=1e-12)
    best = objective(source, target, transform.rotation, transform.scale, transform.translation)
    # no nearby proper similarity does better
    for _ in range(10):
        skew = rng.normal(size=(k, k))
        turn = np.linalg.qr(np.eye(k) + 1e-3 * (skew - skew.T))[0]
        turn = turn * np.sign(np.diag(turn))
        nudged = transform.rotation @ turn
        scale = transform.scale * (1 + 1e-3 * rng.normal())
        shift = transform.translation + 1e-3 * rng.normal(size=k)
        assert objective(source, target, nudged, scale, shift) >= best * (1 - 1e-12)


@PROPERTY
@given(seed=seeds, k=dims, extra=st.integers(1, 20))
def test_reflection_false_recovers_a_proper_motion(seed, k, extra):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(k + extra, k))
    truth = similarity(rng, k, proper=True)
    transform = fit(source, moved(source, *truth), reflection=False)
    np.testing.assert_allclose(transform.rotation, truth[0], atol=1e-9, rtol=0)


def test_one_dimension_without_reflection_never_flips():
    line = np.arange(6.0)[:, None]
    transform = fit(line, -2.0 * line, reflection=False)
    assert transform.rotation.tolist() == [[1.0]]
    assert transform.scale == 0.0  # a negative scale would be the forbidden flip
    np.testing.assert_allclose(transform.apply(line), np.full_like(line, -5.0))
    assert transform.disparity == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"best fit of frames\[1\] onto frames\[0\] has scale 0"):
        align_sequence([line, -2.0 * line], reflection=False)


def test_align_moves_source_and_leaves_target_alone():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(2, 20, 3))
    kept = target.copy()
    np.testing.assert_array_equal(align(source, target), fit(source, target).apply(source))
    np.testing.assert_array_equal(target, kept)


def test_points_far_from_the_origin_keep_their_digits():
    rng = np.random.default_rng(1)
    source = rng.normal(size=(50, 2)) + 1e6
    rotation, scale, translation = similarity(rng, 2)
    transform = fit(source, moved(source, rotation, scale, translation))
    np.testing.assert_allclose(transform.rotation, rotation, atol=1e-9, rtol=0)
    np.testing.assert_allclose(transform.scale, scale, rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_float_dtype_is_preserved(dtype):
    rng = np.random.default_rng(2)
    source = (rng.normal(size=(30, 2)) * 10).astype(dtype)
    target = (rng.normal(size=(30, 2)) * 10).astype(dtype)
    expected = np.dtype(np.float64) if np.dtype(dtype).kind == "i" else np.dtype(dtype)
    transform = fit(source, target)
    assert transform.rotation.dtype == np.float64
    assert align(source, target).dtype == expected
    assert transform.apply(source).dtype == expected
    assert transform.inverse(target).dtype == expected
    frames = [source, target, source]
    assert align_sequence(frames).dtype == expected
    assert align_sequence(np.stack(frames), reference="consensus").dtype == expected
    exact = fit(source.astype(np.float64), target.astype(np.float64)).apply(source.astype(np.float64))
    np.testing.assert_allclose(align(source, target), exact, rtol=1e-5, atol=1e-4)


def test_procrustes_is_frozen_and_read_only():
    transform = fit(np.eye(4, 3), np.eye(4, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        transform.scale = 2.0
    with pytest.raises(ValueError):
        transform.rotation[0, 0] = 5.0
    assert transform.apply([[1, 2, 3]]).shape == (1, 3)
    assert transform.apply(np.zeros(3)).shape == (3,)


# -- align_sequence ------------------------------------------------------------------------


def drifting_frames(rng, n_frames, n, k, noise=0.1, missing=0, proper=None):
    """Frames of one cloud under random similarities, with noise and whole-NaN rows."""
    base = rng.normal(size=(n, k))
    frames = np.stack(
        [moved(base + noise * rng.normal(size=(n, k)), *similarity(rng, k, proper=proper)) for _ in range(n_frames)]
    )
    for t in range(n_frames):
        frames[t, rng.choice(n, size=missing, replace=False)] = np.nan
    return frames


options = st.fixed_dictionaries(
    {"scaling": st.booleans(), "reflection": st.booleans(), "weighted": st.booleans(), "anchored": st.booleans()}
)


def fit_options(rng, n, choice):
    chosen = {"scaling": choice["scaling"], "reflection": choice["reflection"]}
    if choice["weighted"]:
        chosen["weights"] = rng.uniform(0.1, 2.0, size=n)
    if choice["anchored"]:
        chosen["anchors"] = np.arange(2, n)
    return chosen


@PROPERTY
@given(seed=seeds, k=dims, n_frames=st.integers(1, 6), missing=st.integers(0, 1), choice=options)
def test_previous_equals_the_chain_of_pairwise_fits(seed, k, n_frames, missing, choice):
    rng = np.random.default_rng(seed)
    n = k + 8
    frames = drifting_frames(rng, n_frames, n, k, missing=missing, proper=None if choice["reflection"] else True)
    chosen = fit_options(rng, n, choice)
    chain = [frames[0]]
    for frame in frames[1:]:
        chain.append(align(frame, chain[-1], **chosen))
    aligned = align_sequence(list(frames), **chosen)
    assert aligned.shape == frames.shape
    np.testing.assert_array_equal(aligned[0], frames[0])
    np.testing.assert_array_equal(np.isnan(aligned), np.isnan(frames))
    np.testing.assert_allclose(aligned, np.stack(chain), atol=1e-9, rtol=1e-9)


@PROPERTY
@given(seed=seeds, k=dims, n_frames=st.integers(2, 6), missing=st.integers(0, 1), choice=options, data=st.data())
def test_fixed_reference_equals_aligning_onto_it(seed, k, n_frames, missing, choice, data):
    reference = data.draw(st.sampled_from(["first", "last", *range(-n_frames, n_frames)]))
    index = {"first": 0, "last": n_frames - 1}.get(reference, reference)
    rng = np.random.default_rng(seed)
    n = k + 8
    frames = drifting_frames(rng, n_frames, n, k, missing=missing, proper=None if choice["reflection"] else True)
    chosen = fit_options(rng, n, choice)
    aligned = align_sequence(frames, reference=reference, **chosen)
    np.testing.assert_array_equal(aligned[index], frames[index])
    for t in range(n_frames):
        if t != index % n_frames:
            np.testing.assert_allclose(aligned[t], align(frames[t], frames[index], **chosen), atol=1e-9, rtol=1e-9)


@SLOW_PROPERTY
@given(seed=seeds, k=st.integers(1, 4), n_frames=st.integers(2, 6), scaling=st.booleans(), reflection=st.booleans())
def test_consensus_of_exact_copies_makes_them_coincide(seed, k, n_frames, scaling, reflection):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(k + 6, k))
    frames = np.stack([moved(base, *similarity(rng, k, proper=True, scaling=scaling)) for _ in range(n_frames)])
    aligned = align_sequence(frames, reference="consensus", scaling=scaling, reflection=reflection)
    np.testing.assert_allclose(aligned, np.broadcast_to(aligned[0], aligned.shape), atol=1e-8)


@SLOW_PROPERTY
@given(seed=seeds, k=st.integers(1, 4), n_frames=st.integers(2, 6), missing=st.integers(0, 1), choice=options)
def test_consensus_is_invariant_to_the_order_of_frames(seed, k, n_frames, missing, choice):
    rng = np.random.default_rng(seed)
    n = k + 10
    # Mirror images included: where their pose is ambiguous the tie must not follow the order.
    # (In 1-D without reflections, a mirror image cannot be aligned at all: it raises.)
    proper = None if choice["reflection"] or k > 1 else True
    frames = drifting_frames(rng, n_frames, n, k, noise=0.2, missing=missing, proper=proper)
    chosen = fit_options(rng, n, choice)
    order = rng.permutation(n_frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mirror images without reflections converge slowly
        aligned = align_sequence(frames, reference="consensus", **chosen)
        shuffled = align_sequence(list(frames[order]), reference="consensus", **chosen)
    np.testing.assert_array_equal(np.isnan(aligned), np.isnan(frames))
    np.testing.assert_array_equal(shuffled, aligned[order])


@SLOW_PROPERTY
@given(seed=seeds, k=st.integers(1, 4), n_frames=st.integers(2, 6), scaling=st.booleans(), reflection=st.booleans())
def test_consensus_is_a_fixed_point_and_follows_a_common_motion(seed, k, n_frames, scaling, reflection):
    rng = np.random.default_rng(seed)
    # Same-handed frames: for mirror images the pose is a tie (see the docstring).
    frames = drifting_frames(rng, n_frames, k + 10, k, noise=0.2, proper=True)
    chosen = {"scaling": scaling, "reflection": reflection}
    aligned = align_sequence(frames, reference="consensus", **chosen)
    # Converged: each aligned frame's best fit onto the mean is the identity up to one
    # common shrink (the mean of aligned frames is smaller than the frames).
    mean = aligned.mean(axis=0)
    fits = [fit(frame, mean, **chosen) for frame in aligned]
    for transform in fits:
        np.testing.assert_allclose(transform.rotation, np.eye(k), atol=1e-6)
        np.testing.assert_allclose(transform.scale, fits[0].scale, rtol=1e-6)
    # The pose is fixed by the frames themselves, so a common motion carries over.
    common = similarity(rng, k, proper=None if reflection else True, scaling=scaling)
    np.testing.assert_allclose(
        align_sequence(moved(frames, *common), reference="consensus", **chosen),
        moved(aligned, *common),
        atol=1e-6 * (1 + np.abs(common[2]).max()),
    )


def test_consensus_keeps_the_frames_where_they_were_on_average():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 2)) + [5.0, -3.0]
    frames = np.stack([base + 0.01 * rng.normal(size=base.shape) for _ in range(5)])
    aligned = align_sequence(frames, reference="consensus")
    np.testing.assert_allclose(aligned, frames, atol=0.05)
    np.testing.assert_allclose(aligned.mean(axis=(0, 1)), frames.mean(axis=(0, 1)), atol=1e-12)


def test_consensus_that_cannot_converge_warns():
    rng = np.random.default_rng(4)
    frames = rng.normal(size=(4, 20, 2))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        align_sequence(frames, reference="consensus", tol=0.0, max_iter=3)


@pytest.mark.parametrize("reference", ["previous", "first", -2, "consensus"])
def test_align_sequence_leaves_its_input_alone(reference):
    frames = drifting_frames(np.random.default_rng(8), 4, 12, 3, missing=1)
    kept = frames.copy()
    as_array = align_sequence(frames, reference=reference, weights=np.linspace(1, 2, 12))
    as_list = align_sequence([frame.astype(np.float32) for frame in frames], reference=reference,
                             weights=np.linspace(1, 2, 12))
    np.testing.assert_array_equal(frames, kept)
    assert as_list.dtype == np.float32
    np.testing.assert_allclose(as_list, as_array, rtol=1e-5, atol=1e-4)


def test_a_single_frame_comes_back_unchanged_as_a_copy():
    frame = np.random.default_rng(5).normal(size=(1, 10, 2))
    for reference in ["previous", "first", "last", 0, -1, "consensus"]:
        aligned = align_sequence(frame, reference=reference)
        np.testing.assert_array_equal(aligned, frame)
        assert aligned is not frame


# -- errors --------------------------------------------------------------------------------

good = np.random.default_rng(6).normal(size=(10, 2))


@pytest.mark.parametrize(
    ("source", "target", "kwargs", "message"),
    [
        (good, good[:, :1], {}, r"shapes of source and target differ \(\(10, 2\) vs \(10, 1\)\)"),
        (good, good[:9], {}, r"\(10, 2\) vs \(9, 2\)"),
        (good[:, 0], good[:, 0], {}, r"2-D arrays of shape \(N, k\), got shapes \(10,\)"),
        (good[:2], good[:2], {}, r"only 2 usable rows .* needs at least 3"),
        (good, good, {"anchors": [0, 1]}, r"only 2 usable rows"),
        (np.where(np.arange(10)[:, None] < 8, np.nan, good), good, {}, r"only 2 usable rows"),
        (np.array([[1.0, np.nan]] + [[i, -i] for i in range(9)]), good, {}, r"source\[0\] is \[ 1. nan\]"),
        (good, np.vstack([good[:9], [[np.inf, 0.0]]]), {}, r"target\[9\] .*infinite"),
        (np.ones((10, 2)), good, {}, r"source has zero variance"),
        (good, np.full((10, 2), 0.1), {}, r"target has zero variance"),
        (good, np.full((10, 2), 0.1), {"scaling": False}, r"target has zero variance"),
        (good, good, {"anchors": [0, 1, 10]}, r"anchors index 10 is out of range for 10 rows"),
        (good, good, {"anchors": [-11, 1, 2]}, r"anchors index -11 is out of range"),
        (good, good, {"anchors": [0.0, 1.0, 2.0]}, r"integer row indices or a boolean mask, got dtype float64"),
        (good, good, {"anchors": np.ones(9, dtype=bool)}, r"boolean anchors mask must have shape \(10,\)"),
        (good, good, {"anchors": [[0, 1, 2]]}, r"anchors indices must be 1-D"),
        (good, good, {"weights": np.ones(9)}, r"weights must have shape \(10,\).*got shape \(9,\)"),
        (good, good, {"weights": -np.ones(10)}, r"non-negative, got weights\[0\] = -1.0"),
        (good, good, {"weights": np.r_[np.ones(9), np.nan]}, r"got weights\[9\] = nan"),
        (good, good, {"weights": np.zeros(10)}, r"only 0 usable rows"),
        (good.astype(complex), good, {}, r"source must hold real numbers, got dtype complex128"),
    ],
)
def test_fit_rejects_bad_input(source, target, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(source, target, **kwargs)


def test_zero_variance_source_is_fine_without_scaling():
    transform = fit(np.ones((10, 2)), good, scaling=False)
    np.testing.assert_allclose(transform.apply(np.ones((10, 2))), np.broadcast_to(good.mean(axis=0), (10, 2)))


def test_disparity_rejects_what_scipy_rejects():
    with pytest.raises(ValueError, match=r"\(10, 2\) vs \(10, 1\)"):
        disparity(good, good[:, :1])
    with pytest.raises(ValueError, match="zero variance"):
        disparity(good, np.zeros((10, 2)))
    with pytest.raises(ValueError, match="only 1 usable rows"):
        disparity(good[:1], good[:1])


def test_transform_rejects_bad_points():
    transform = fit(good, good)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\) .* got shape \(4, 3\)"):
        transform.apply(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"got shape \(4, 3\)"):
        transform.inverse(np.ones((4, 3)))
    with pytest.raises(ValueError, match="no inverse"):
        Procrustes(np.eye(2), 0.0, np.zeros(2), 0.0).inverse(good)
    with pytest.raises(ValueError, match=r"translation must have shape \(2,\)"):
        Procrustes(np.eye(2), 1.0, np.zeros(3), 0.0)


frames_ok = np.random.default_rng(7).normal(size=(3, 10, 2))


def with_row(frames, t, i, row):
    frames = frames.copy()
    frames[t, i] = row
    return frames


@pytest.mark.parametrize(
    ("frames", "kwargs", "message"),
    [
        ([], {}, r"frames is empty"),
        (np.zeros((0, 10, 2)), {}, r"frames is empty \(shape \(0, 10, 2\)\)"),
        (frames_ok[0], {}, r"\(T, N, k\) array, got shape \(10, 2\)"),
        ([frames_ok[0], frames_ok[1, :9]], {}, r"frames\[1\] has shape \(9, 2\), but frames\[0\] has shape \(10, 2\)"),
        ([frames_ok[0], frames_ok[1, :, 0]], {}, r"frames\[1\] must be 2-D .* got shape \(10,\)"),
        (frames_ok, {"reference": "middle"}, r"unknown reference 'middle'"),
        (frames_ok, {"reference": 3}, r"reference frame 3 is out of range for 3 frames"),
        (frames_ok, {"reference": -4}, r"reference frame -4 is out of range"),
        (frames_ok, {"reference": True}, r"unknown reference True"),
        (frames_ok, {"reference": 1.0}, r"unknown reference 1.0"),
        (with_row(frames_ok, 1, 4, [np.nan, 0.0]), {}, r"frames\[1, 4\] is \[nan  0.\]: a row must be all finite"),
        (with_row(frames_ok, 2, 0, [np.inf, np.inf]), {}, r"frames\[2, 0\] .*infinite"),
        (with_row(frames_ok, 1, slice(0, 8), np.nan), {}, r"frames\[1\] and frames\[0\] share only 2 usable rows"),
        (
            with_row(frames_ok, 1, slice(0, 8), np.nan),
            {"reference": "last"},
            r"frames\[1\] and frames\[2\] share only 2",
        ),
        (
            with_row(frames_ok, 2, slice(0, 8), np.nan),
            {"reference": "consensus"},
            r"frames\[2\] \(fitted rows\) and the consensus share only 2",
        ),
        (with_row(frames_ok, 2, slice(None), np.nan), {}, r"frames\[2\] has no finite rows"),
        (with_row(frames_ok, 1, slice(None), 3.0), {}, r"frames\[1\] has zero variance"),
        (frames_ok, {"anchors": [0, 12]}, r"anchors index 12 is out of range for 10 rows"),
        (frames_ok, {"weights": np.ones(3)}, r"weights must have shape \(10,\)"),
        (frames_ok, {"weights": -np.ones(10)}, r"non-negative"),
        (frames_ok, {"reference": "consensus", "tol": -1.0}, r"tol must be a non-negative number, got -1.0"),
        (frames_ok, {"reference": "consensus", "max_iter": 0}, r"max_iter must be a positive integer, got 0"),
        (frames_ok.astype(complex), {}, r"frames must hold real numbers, got dtype complex128"),
    ],
)
def test_align_sequence_rejects_bad_input(frames, kwargs, message):
    with pytest.raises(ValueError, match=message):
        align_sequence(frames, **kwargs)


def test_align_sequence_zero_variance_over_anchors_needs_scaling_off():
    frames = frames_ok.copy()
    frames[1, :3] = 1.0  # the anchor rows of frame 1 coincide
    with pytest.raises(ValueError, match=r"frames\[1\] has zero variance over its fitted rows"):
        align_sequence(frames, anchors=[0, 1, 2])
    assert np.isfinite(align_sequence(frames, anchors=[0, 1, 2], scaling=False)).all()
