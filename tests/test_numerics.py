"""ftviz.numerics: the one softmax, neighbour search, label vote and AUROC, against the
libraries that define them (scipy, scikit-learn) on real data (the digits set)."""

import doctest
import subprocess
import sys

import numpy as np
import pytest

import ftviz.numerics as numerics
from ftviz.numerics import NeighbourSearch, auroc_against_noise, exact_neighbours, knn_label_shares, log_softmax, softmax


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def test_docstring_examples():
    result = doctest.testmod(numerics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0


def test_import_stays_light():
    code = "import sys, ftviz.numerics; print(sorted({'torch', 'sklearn', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- probabilities -------------------------------------------------------------------------
def test_softmax_and_log_softmax_match_scipy_on_a_history_and_extreme_logits():
    from scipy.special import log_softmax as scipy_log_softmax
    from scipy.special import softmax as scipy_softmax

    logits = np.random.default_rng(0).normal(scale=30, size=(3, 50, 7))
    logits[0, 0] = [1e4, 0, 0, 0, 0, 0, -1e4]  # overflows a naive exp
    np.testing.assert_allclose(softmax(logits), scipy_softmax(logits, axis=-1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(log_softmax(logits), scipy_log_softmax(logits, axis=-1), rtol=1e-12)
    assert softmax(logits).dtype == np.float64 and np.isfinite(log_softmax(logits)).all()
    half = logits[1].astype(np.float16)  # snapshots store float16 logits
    np.testing.assert_allclose(softmax(half).sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(softmax(logits, axis=0).sum(axis=0), 1.0, rtol=1e-12)


# ---- neighbours ----------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_neighbours_match_sklearn_brute_force(digits, metric):
    from sklearn.neighbors import NearestNeighbors

    X, _ = digits
    k = 7
    found, distances = exact_neighbours(X, k, metric=metric, block=300)
    # sklearn returns each point as its own first neighbour: ask for k + 1 and drop it.
    reference = NearestNeighbors(n_neighbors=k + 1, metric=metric, algorithm="brute").fit(X.astype(np.float64))
    ref_distances, ref_found = reference.kneighbors(X.astype(np.float64))
    assert found.shape == distances.shape == (len(X), k) and found.dtype == np.int64
    assert (found != np.arange(len(X))[:, None]).all()  # never the query itself
    np.testing.assert_allclose(distances, ref_distances[:, 1:], atol=2e-3 if metric == "euclidean" else 2e-6)
    assert (np.diff(distances, axis=1) >= 0).all()  # nearest first
    # Same neighbour sets except where float32 rounding reorders (near-)ties at the k-th place.
    same = [set(a) == set(b[1:]) for a, b in zip(found, ref_found)]
    assert np.mean(same) > 0.98


def test_query_rows_and_blocks_do_not_change_the_answer(digits):
    X, _ = digits
    rows = np.array([5, 0, 1700, 42])
    whole_found, whole_distances = exact_neighbours(X, 5, metric="euclidean", block=4096)
    found, distances = exact_neighbours(X, 5, metric="euclidean", rows=rows, block=3)
    np.testing.assert_array_equal(found, whole_found[rows])
    np.testing.assert_array_equal(distances, whole_distances[rows])


def test_threads_find_the_same_neighbours_ties_included(digits):
    """The follower searches on the cores training leaves it, the stages after training on
    others: any thread count gives the same sets, bit for bit, on pixels that tie exactly."""
    X, _ = digits
    rows = np.arange(0, len(X), 3)
    queries = [("cosine", 10, None), ("euclidean", 40, None), ("euclidean", 7, rows)]
    one = NeighbourSearch(X, queries, block=512)
    for threads in (2, 3):
        several = NeighbourSearch(X, queries, block=512, threads=threads)
        for metric, k, asked in queries:
            np.testing.assert_array_equal(several.get(metric, k, asked)[0], one.get(metric, k, asked)[0])
            np.testing.assert_array_equal(several.get(metric, k, asked)[1], one.get(metric, k, asked)[1])
    # A few rows alone (the row-subset path) are shared among threads too.
    np.testing.assert_array_equal(exact_neighbours(X, 5, rows=rows[:300], threads=2)[0],
                                  exact_neighbours(X, 5, rows=rows[:300])[0])


def test_one_search_serves_every_set_of_a_frame_as_separate_searches_would(digits):
    """The follower's shared search (cosine for the outlier score, Euclidean for t-SNE and the
    overlap's sampled rows) gives each set what the stages' own searches give."""
    X, _ = digits
    rows = np.sort(np.random.default_rng(0).choice(len(X), 300, replace=False))
    search = NeighbourSearch(X, [("cosine", 10, None), ("euclidean", 40, None), ("euclidean", 10, rows)], block=256)
    for metric, k in (("cosine", 10), ("euclidean", 40)):  # the same products, partitioned the same way
        alone = exact_neighbours(X, k, metric=metric, block=256)
        np.testing.assert_array_equal(search.get(metric, k)[0], alone[0])
        np.testing.assert_array_equal(search.get(metric, k)[1], alone[1])
    # Searched alone, few rows are one row block at a time against all of X, and other blocks
    # partition the products otherwise: the digits' integer pixels tie exactly, and which of
    # equally near neighbours is kept at the k-th place may differ. The distances do not.
    for asked, alone in ((rows, exact_neighbours(X, 10, metric="euclidean", rows=rows, block=256)),
                         (None, exact_neighbours(X, 40, metric="euclidean", block=512))):
        shared = search.get("euclidean", alone[0].shape[1], asked)
        np.testing.assert_array_equal(shared[1], alone[1])
        assert (shared[0] == alone[0]).mean() > 0.99
    # A set inside a planned one is its slice; one no query planned is searched when asked.
    np.testing.assert_array_equal(search.get("cosine", 3, rows[:5])[1], search.get("cosine", 10)[1][rows[:5], :3])
    np.testing.assert_array_equal(search.get("cosine", 12)[1], exact_neighbours(X, 12, block=256)[1])


def test_a_duplicate_is_the_nearest_neighbour_and_a_point_never_its_own():
    X = np.array([[1.0, 2.0], [1.0, 2.0], [5.0, -1.0], [0.0, 0.0]], dtype=np.float32)
    for metric in ("cosine", "euclidean"):
        found, distances = exact_neighbours(X, 1, metric=metric, rows=[0, 1])
        assert found.ravel().tolist() == [1, 0] and np.allclose(distances, 0.0, atol=1e-6)
    # A zero row has cosine 0 to everything: distance 1, not NaN.
    assert exact_neighbours(X, 2, metric="cosine", rows=[3])[1].tolist() == [[1.0, 1.0]]


def test_bf16_candidates_reranked_in_fp32_give_the_fp32_neighbours():
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 48))
    X = (centres[rng.integers(0, 6, 1500)] + rng.normal(scale=1.0, size=(1500, 48))).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        exact = exact_neighbours(X, 10, metric=metric)
        coarse = exact_neighbours(X, 10, metric=metric, search="bf16", block=256)
        np.testing.assert_array_equal(coarse[0], exact[0])
        np.testing.assert_allclose(coarse[1], exact[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (dict(k=0), "k must lie in 1..N-1"), (dict(k=4), "k must lie in 1..N-1"),
    (dict(metric="manhattan"), "metric must be one of cosine, euclidean"),
    (dict(search="fp16"), "search must be"),
])
def test_bad_arguments_say_what_is_allowed(bad, message):
    X = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        exact_neighbours(X, **{"k": 1, **bad})


# ---- the label vote ------------------------------------------------------------------------
def test_label_shares_are_sklearns_leave_one_out_knn_vote(digits):
    from sklearn.neighbors import KNeighborsClassifier

    X, y = digits
    X, y = X[:600], y[:600]
    shares = knn_label_shares(embedding=X, labels=y, num_classes=10, k=10, block=128)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    neighbours, _ = exact_neighbours(X, 10)
    # sklearn's classifier on the same neighbours: the leave-one-out class probabilities.
    model = KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute").fit(X, y)
    with_self = model.kneighbors(X, n_neighbors=11, return_distance=False)
    agree = [set(a) == set(b[b != i][:10]) for i, (a, b) in enumerate(zip(neighbours, with_self))]
    for i in np.flatnonzero(agree)[:50]:
        expected = np.bincount(y[with_self[i][with_self[i] != i][:10]], minlength=10) / 10
        np.testing.assert_allclose(shares[i], expected)
    assert np.mean(agree) > 0.98
    # The vote of one sample with nothing to ask is its own label.
    np.testing.assert_array_equal(knn_label_shares(embedding=X[:1], labels=y[:1], num_classes=10), np.eye(10)[y[:1]])


# ---- AUROC against the injected noise -------------------------------------------------------
def test_auroc_matches_sklearn_with_ties_and_is_nan_without_noise():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    noisy = rng.random(500) < 0.1
    score = rng.integers(0, 5, 500) + 2.0 * noisy  # many ties; noisy samples score higher
    assert auroc_against_noise(score, noisy) == pytest.approx(roc_auc_score(noisy, score), abs=1e-12)
    assert auroc_against_noise(score, noisy) > 0.8
    # Higher = more suspicious: a score where low is suspicious reads below chance as is.
    assert auroc_against_noise(-score, noisy) == pytest.approx(1 - roc_auc_score(noisy, score), abs=1e-12)
    assert np.isnan(auroc_against_noise(score, np.zeros(500, dtype=bool)))
    assert np.isnan(auroc_against_noise(score, np.ones(500, dtype=bool)))
    with pytest.raises(ValueError, match="NaN"):
        auroc_against_noise(np.where(noisy, np.nan, 1.0), noisy)


def test_auto_search_is_bf16_on_a_gpu_only(monkeypatch):
    """On a CPU with AMX the torch bf16 search took 4.5-5.0 s for a 10,000 x 768 frame's two
    sets against 1.1 s for the shared fp32 search: "auto" must not pick it on any CPU."""
    from ftviz import numerics

    monkeypatch.setattr(numerics, "cpu_has_fast_bf16", lambda: True)  # as on an AMX Xeon
    assert numerics._resolve("cpu", "auto", 10_000) == ("cpu", "fp32")
    assert numerics._resolve("cuda", "auto", 10_000) == ("cuda", "bf16")
    assert numerics._resolve("cuda", "auto", 1_000) == ("cuda", "fp32")  # small: the product is cheap either way
    assert numerics._resolve("cpu", "bf16", 10_000) == ("cpu", "bf16")  # asked for: still there
