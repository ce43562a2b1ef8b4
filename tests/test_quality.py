import numpy as np

from ftviz.quality import label_scores, outlier_scores, softmax


def test_outlier_score_finds_the_planted_outlier():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 16)) + np.array([5.0] + [0.0] * 15)
    features[17] = -features[17]  # the one point pointing the other way (cosine distance)
    scores = outlier_scores(features, k=10)
    assert scores.shape == (300,)
    assert scores.argmax() == 17
    assert 0.0 <= scores.min() and scores.max() <= 1.0


def test_outlier_scores_equal_cleanlab_flipped():
    from cleanlab.outlier import OutOfDistribution

    features = np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32)
    expected = OutOfDistribution(params={"k": 10}).fit_score(features=features, verbose=False)
    np.testing.assert_allclose(outlier_scores(features, k=10), 1.0 - expected, rtol=1e-6)


def test_label_scores_flag_flipped_labels():
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(5), 60)
    logits = np.eye(5)[true] * 6.0 + rng.normal(scale=0.5, size=(300, 5))
    given = true.copy()
    flipped = rng.choice(300, size=15, replace=False)
    given[flipped] = (given[flipped] + 1) % 5
    quality, issues = label_scores(logits=logits, labels=given)
    found = set(np.flatnonzero(issues))
    assert found <= set(flipped)  # no false alarms on this clean a case
    assert len(found) >= 10  # and most of the 15 flips
    assert quality[flipped].max() < np.delete(quality, flipped).min()


def test_label_scores_survive_a_degenerate_step():
    logits = np.zeros((50, 3))  # a network that has learnt nothing
    labels = np.arange(50) % 3
    quality, issues = label_scores(logits=logits, labels=labels)
    assert quality.shape == (50,) and not issues.any()


def test_softmax_rows_sum_to_one():
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs[0, 0] == 1.0


def test_knn_method_gives_cleanlabs_values():
    """The blocked-matmul path must reproduce Cleanlab's scores, duplicates included."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 32))
    features = (centres[rng.integers(0, 5, 600)] + rng.normal(scale=0.8, size=(600, 32))).astype(np.float32)
    features[10] = features[11]  # an exact duplicate pair
    cleanlab = outlier_scores(features, k=10, method="cleanlab")
    fast = outlier_scores(features, k=10, method="knn")
    np.testing.assert_allclose(fast, cleanlab, atol=1e-5)
    assert set(np.argsort(-fast)[:8]) == set(np.argsort(-cleanlab)[:8])


def test_knn_blocks_do_not_change_the_answer():
    from ftviz.quality import cosine_knn_distances

    features = np.random.default_rng(3).normal(size=(300, 16)).astype(np.float32)
    np.testing.assert_allclose(
        cosine_knn_distances(features, k=7, block=64), cosine_knn_distances(features, k=7, block=4096), atol=1e-6
    )


def test_bf16_candidate_search_returns_exact_distances():
    from ftviz.quality import cosine_knn_distances

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(8, 64))
    features = (centres[rng.integers(0, 8, 3000)] + rng.normal(scale=1.0, size=(3000, 64))).astype(np.float32)
    exact = cosine_knn_distances(features, k=10, search="fp32")
    coarse_then_exact = cosine_knn_distances(features, k=10, search="bf16", block=512)
    np.testing.assert_allclose(coarse_then_exact, exact, atol=1e-6)
