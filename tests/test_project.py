import sys

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


# ---- methods, stability, streaming, config -------------------------------------------------
def _clusters(rng, n_per=60, n_classes=5, dim=20, spread=1.0):
    """Clusters that are curved 2-D sheets in ``dim`` dimensions: neighbourhoods a 2-D map
    can keep (an isotropic blob's would be random), which two linear axes cannot show all at once."""
    centres = rng.normal(size=(n_classes, dim)) * 6
    labels = np.repeat(np.arange(n_classes), n_per)
    latent = rng.uniform(-1, 1, size=(len(labels), 2)) * spread
    bend = np.stack([latent[:, 0], latent[:, 1], latent[:, 0] ** 2 - latent[:, 1] ** 2], axis=1)
    directions = rng.normal(size=(n_classes, 3, dim))
    sheets = np.einsum("nk,nkd->nd", bend, directions[labels])
    return centres[labels] + sheets + rng.normal(size=(len(labels), dim)) * 0.02, labels


def _drifting(rng, T=6, drift=0.3):
    """A clustered cloud whose every point drifts a little from frame to frame."""
    base, labels = _clusters(rng)
    frames = [base]
    for _ in range(T - 1):
        frames.append(frames[-1] + rng.normal(size=base.shape) * drift)
    return np.stack(frames).astype(np.float32), labels


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_neighbour_methods_keep_neighbourhoods_and_move_little(method):
    """A slowly drifting embedding: warm-started frames barely move (less than PCA's), and
    they keep far more neighbourhoods than two PCA axes."""
    if method == "tsne":
        pytest.importorskip("openTSNE")
    else:
        pytest.importorskip("umap")
    from ftviz.align import disparity

    snapshots, _ = _drifting(np.random.default_rng(5))
    options = dict(first_iter=300, iter=30) if method == "tsne" else dict(first_iter=200, iter=30)
    projector = FrameProjector(method=method, knn=10, **options)
    frames = projector.fit_transform(snapshots)
    pca = FrameProjector(knn=10)
    pca_frames = pca.fit_transform(snapshots)
    assert frames.shape == (6, 300, 2) and frames.dtype == np.float32
    moved = np.mean([disparity(frames[t - 1], frames[t]) for t in range(1, 6)])
    pca_moved = np.mean([disparity(pca_frames[t - 1], pca_frames[t]) for t in range(1, 6)])
    assert moved < {"tsne": 0.02, "umap": 0.1}[method]
    if method == "tsne":  # measured here: 0.0002 against PCA's 0.0005; UMAP's warm start moves more (0.06)
        assert moved <= pca_moved
    assert (projector.knn_overlap_ > pca.knn_overlap_ + 0.1).all()
    assert np.isnan(projector.explained_variance_).all()
    # Every frame at unit RMS radius around the origin (the plot's fixed axes fit them all).
    radius = np.sqrt((frames.astype(np.float64) ** 2).sum(axis=2).mean(axis=1))
    np.testing.assert_allclose(radius, 1.0, rtol=1e-4)


def test_tsne_warm_start_continues_from_the_previous_layout():
    """With zero iterations a later frame is the previous layout itself."""
    pytest.importorskip("openTSNE")
    snapshots, _ = _drifting(np.random.default_rng(6), T=3)
    frames = FrameProjector(method="tsne", first_iter=200, iter=0).fit_transform(snapshots)
    np.testing.assert_allclose(frames[1], frames[0], atol=1e-5)
    np.testing.assert_allclose(frames[2], frames[0], atol=1e-5)


def test_tsne_first_frame_is_the_same_on_one_and_two_blas_threads(monkeypatch):
    """A followed frame runs on the threads idle at that moment, the stage after training on
    all of them: the same snapshot must give the same layout either way. (scikit-learn's PCA,
    openTSNE's default start, differs in the last bits with the BLAS threads at this size, and
    300 iterations grew that into another layout.)"""
    pytest.importorskip("openTSNE")
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(10, 32))[rng.integers(0, 10, 600)] * 3 + rng.normal(size=(600, 32))).astype(np.float32)
    frames = []
    for threads in (1, 2):
        monkeypatch.setenv("FTVIZ_THREADS", str(threads))
        with threadpool_limits(limits=threads):
            frames.append(FrameProjector(method="tsne", first_iter=300, iter=30).fit_transform(X[None])[0])
    np.testing.assert_array_equal(frames[0], frames[1])


def test_tsne_past_5000_points_uses_the_coarser_fft_grid_and_separates_clusters(monkeypatch):
    """Past 5,000 points t-SNE takes openTSNE's FFT gradient, on a grid of at least
    FFT_MIN_INTERVALS intervals a side (not openTSNE's 50): the first frame and a continued one
    still separate well-separated clusters, and the grid asked is the one openTSNE got."""
    pytest.importorskip("openTSNE")
    import openTSNE

    from ftviz import project

    made = []
    original = openTSNE.TSNEEmbedding

    def recorded(*args, **kwargs):
        made.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(openTSNE, "TSNEEmbedding", recorded)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, 5200)
    X = (rng.normal(size=(6, 16))[labels] * 6 + rng.normal(size=(5200, 16))).astype(np.float32)
    frames = FrameProjector(method="tsne", first_iter=90, iter=15).fit_transform(np.stack([X, X * 1.01]))
    assert [kwargs["negative_gradient_method"] for kwargs in made] == ["fft", "fft"]
    assert all(kwargs["min_num_intervals"] == project.FFT_MIN_INTERVALS < 50 for kwargs in made)
    for frame in frames:  # each point's 10 nearest in the plane share its cluster
        neighbours = project._planar_neighbours(frame, 10, np.arange(0, 5200, 13))
        assert (labels[neighbours] == labels[np.arange(0, 5200, 13)][:, None]).mean() > 0.98


def test_frames_are_read_one_at_a_time():
    """A sequence that hands out one frame per index is enough, even for the shared basis."""
    rng = np.random.default_rng(2)
    snapshots = rng.normal(size=(5, 120, 8)) * np.arange(1, 9)

    class OneAtATime:
        def __init__(self):
            self.reads = []

        def __len__(self):
            return len(snapshots)

        def __getitem__(self, t):
            self.reads.append(t)
            return snapshots[t].copy()

    for basis in ("per_frame", "shared"):
        sequence = OneAtATime()
        frames = FrameProjector(basis=basis).fit_transform(sequence)
        np.testing.assert_allclose(frames, FrameProjector(basis=basis).fit_transform(snapshots), atol=1e-6)
        assert sequence.reads == (list(range(5)) * (2 if basis == "shared" else 1))


def test_shared_basis_accumulated_frame_by_frame_matches_the_stacked_pca():
    rng = np.random.default_rng(3)
    snapshots = rng.normal(size=(4, 200, 6)) * np.array([5, 3, 1, 1, 1, 1]) + 100.0  # a large offset
    projector = FrameProjector(basis="shared")
    projector.fit_transform(snapshots)
    _, components, _ = pca_basis(snapshots.reshape(-1, 6), 2)
    np.testing.assert_allclose(np.abs(projector.components_), np.abs(components), atol=1e-8)


def test_check_config_rejects_bad_values_in_one_line():
    from ftviz.config import ProjectConfig
    from ftviz.errors import FtvizError
    from ftviz.project import check_config

    check_config(ProjectConfig())
    for key, value, words in (("reference", "bogus", "project.reference"), ("method", "isomap", "project.method"),
                              ("basis", "global", "project.basis"), ("knn", 0, "project.knn"),
                              ("iter", -1, "project.iter"), ("perplexity", 0.0, "project.perplexity")):
        with pytest.raises(FtvizError, match=words) as caught:
            check_config(ProjectConfig(**{key: value}))
        assert "\n" not in str(caught.value)


def test_project_stage_records_the_method_and_fails_cleanly(tiny_run, tmp_path):
    import shutil

    from ftviz.cli import main
    from ftviz.rundir import RunDir

    run = RunDir(shutil.copytree(tiny_run.path, tmp_path / "run"))
    assert run.manifest()["stages"]["project"]["method"] == "pca"
    assert main(["project", str(run.path), "--set", "project.reference=bogus"]) == 2
    assert run.stage_status("project") == "done"  # checked before any work: nothing was redone
    pytest.importorskip("openTSNE")
    assert main(["project", str(run.path), "-q", "--set", "project.method=tsne", "--set", "project.first_iter=100",
                 "--set", "project.iter=10"]) == 0
    record = run.manifest()["stages"]["project"]
    assert record["status"] == "done" and record["method"] == "tsne" and record["iter"] == 10
    projection = run.projection()
    assert projection["explained_variance"].isna().all() and projection["knn_overlap"].notna().all()
    assert run.frames().shape == tiny_run.frames().shape


# ---- input the projection cannot use: one line, nothing written ---------------------------------
@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    import shutil

    from ftviz.rundir import RunDir

    return RunDir(shutil.copytree(tiny_run.path, tmp_path / "run"))


def _rewrite_embeddings(run, change) -> None:
    """Every snapshot's embedding replaced by ``change(step, embedding)``; logits kept.

    As if training had written them so: the frames recorded from the old snapshots go too.
    """
    import shutil

    for step in run.snapshot_steps():
        embedding, logits = run.load_snapshot(step)
        run.write_snapshot(step, change(step, embedding.copy()), logits)
    shutil.rmtree(run.path / "analysis", ignore_errors=True)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ftviz: error:") and err.count("\n") == 0 and "Traceback" not in err
    return err


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_constant_embeddings_are_refused_in_one_line(run_copy, capsys, method):
    from ftviz.cli import main

    if method == "tsne":
        pytest.importorskip("openTSNE")
    _rewrite_embeddings(run_copy, lambda step, embedding: np.ones_like(embedding))  # a dead network
    before = run_copy.file("frames.npy").read_bytes()
    assert main(["project", str(run_copy.path), "-q", "--set", f"project.method={method}",
                 "--set", "project.first_iter=50", "--set", "project.iter=5"]) == 2
    err = _one_line_error(capsys)
    first = run_copy.snapshot_steps()[0]
    assert f"snapshot step {first}" in err and "same embedding" in err
    assert run_copy.file("frames.npy").read_bytes() == before


def test_nan_embeddings_are_refused_in_one_line(run_copy, capsys):
    from ftviz.cli import main

    bad = run_copy.snapshot_steps()[3]

    def poison(step, embedding):
        if step == bad:
            embedding[7, 2] = np.nan
        return embedding

    _rewrite_embeddings(run_copy, poison)
    assert main(["project", str(run_copy.path), "-q"]) == 2
    err = _one_line_error(capsys)
    assert f"snapshot step {bad}" in err and "NaN" in err and "rerun training" in err


def test_projector_names_the_frame_it_cannot_project():
    from ftviz.errors import FtvizError

    snapshots = np.random.default_rng(0).normal(size=(3, 50, 4))
    snapshots[1] = 2.5  # every row the same point
    with pytest.raises(FtvizError, match="snapshot 1: every probe sample has the same embedding"):
        FrameProjector().fit_transform(snapshots)
    snapshots[1] = np.random.default_rng(1).normal(size=(50, 4))
    snapshots[2, 0, 0] = np.inf
    with pytest.raises(FtvizError, match="snapshot 2 holds NaN or infinite"):
        FrameProjector().fit_transform(snapshots)


@pytest.mark.parametrize(("method", "module", "package"), [("tsne", "openTSNE", "openTSNE"),
                                                            ("umap", "umap", "umap-learn")])
def test_a_missing_projection_library_is_one_line(run_copy, capsys, monkeypatch, method, module, package):
    from ftviz.cli import main
    from ftviz.errors import FtvizError

    monkeypatch.setitem(sys.modules, module, None)  # import now fails, as when it is not installed
    before = run_copy.file("frames.npy").read_bytes()
    assert main(["project", str(run_copy.path), "-q", "--set", f"project.method={method}"]) == 2
    err = _one_line_error(capsys)
    assert package in err and "pip install 'ftviz[projection]'" in err and "project.method=pca" in err
    assert run_copy.file("frames.npy").read_bytes() == before
    assert run_copy.stage_status("project") == "done"  # refused before any work
    with pytest.raises(FtvizError, match=package):  # the library route says the same
        FrameProjector(method=method).fit_transform(np.random.default_rng(0).normal(size=(2, 40, 5)))
