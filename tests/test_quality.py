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
