import numpy as np
import pytest

from ftviz.project import FrameProjector, knn_overlap, pca_basis


def test_pca_basis_matches_sklearn():
    from sklearn.decomposition import PCA

    X = np.random.default_rng(0).normal(size=(500, 12)) * np.arange(1, 13)
    mean, components, ratio = pca_basis(X, 2)
    reference = PCA(2).fit(X)
    np.testing.assert_allclose(np.abs(components.T), np.abs(reference.components_), atol=1e-8)
    np.testing.assert_allclose(ratio, reference.explained_variance_ratio_, rtol=1e-8)


def test_frames_do_not_flip_between_snapshots():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 10)) * np.array([5, 3] + [0.3] * 8)
    # The same cloud with a sign flip of the top axis in every other snapshot: PCA alone
    # would mirror the frame back and forth; the aligned frames must stay put.
    snapshots = np.stack([base * np.array([(-1) ** t] + [1] * 9) for t in range(6)])
    frames = FrameProjector().fit_transform(snapshots)
    assert frames.shape == (6, 300, 2) and frames.dtype == np.float32
    for t in range(1, 6):
        np.testing.assert_allclose(frames[t], frames[0], atol=1e-4)


def test_shared_basis_keeps_one_coordinate_system():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 6)) * np.array([4, 2, 1, 1, 1, 1])
    snapshots = np.stack([base, base * 2.0])  # the cloud grows: a shared basis shows it
    frames = FrameProjector(basis="shared").fit_transform(snapshots)
    spread = frames.reshape(2, -1).std(axis=1)
    assert spread[1] / spread[0] == pytest.approx(2.0, rel=1e-3)


def test_knn_overlap_is_one_for_planar_data_and_low_for_noise():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(400, 2))
    assert knn_overlap(np.hstack([plane, np.zeros((400, 5))]), plane, k=10) == pytest.approx(1.0)
    noise = rng.normal(size=(400, 50))
    assert knn_overlap(noise, noise[:, :2], k=10) < 0.3


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(T, N, D\)"):
        FrameProjector().fit_transform(np.zeros((5, 3)))


def test_weakly_related_frames_do_not_shrink_over_a_long_sequence():
    """Chained least-squares scaling would shrink each frame by its correlation with the last."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=(300, 8)) * np.array([4, 2, 1, 1, 1, 1, 1, 1])
    snapshots = np.stack([base + rng.normal(scale=3.0, size=base.shape) for _ in range(40)])
    frames = FrameProjector().fit_transform(snapshots)
    radius = np.sqrt((frames**2).sum(axis=2).mean(axis=1))
    np.testing.assert_allclose(radius, 1.0, rtol=1e-5)
