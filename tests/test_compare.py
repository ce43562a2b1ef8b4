"""``ftviz compare``: metrics with known answers, the page, the table, and bad input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftviz import compare
from ftviz.cli import main as ftviz_main
from ftviz.errors import FtvizError, MissingStageError
from ftviz.rundir import RunDir

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture
def twin_runs(tiny_run, tmp_path):
    """Two identical copies of the session's tiny run, as runs/vit-a and runs/vit-b."""
    paths = []
    for name in ("vit-a", "vit-b"):
        shutil.copytree(tiny_run.path, tmp_path / "runs" / name)
        paths.append(tmp_path / "runs" / name)
    return paths


@pytest.fixture
def compared(twin_runs, tmp_path):
    page = compare.compare_runs(twin_runs, out=tmp_path / "out", log=lambda *_: None)
    return page, pd.read_parquet(tmp_path / "out" / "compare.parquet")


# ---- metrics on cases with known answers -------------------------------------------------
def test_knn_accuracy_matches_sklearn_leave_one_out():
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=150)
    features = rng.normal(size=(150, 8)) + 1.5 * np.eye(8)[labels]  # overlapping clusters
    predicted = cross_val_predict(
        KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute"), features, labels, cv=LeaveOneOut()
    )
    expected = float((predicted == labels).mean())
    assert 0.3 < expected < 0.95  # a case where the neighbours matter
    assert compare.knn_accuracy(features, labels, k=10) == pytest.approx(expected, abs=1e-12)
    # Chunking changes nothing.
    assert compare.knn_accuracy(features, labels, k=10, chunk=7) == pytest.approx(expected, abs=1e-12)


def test_linear_cka_known_answers():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 6))
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert compare.linear_cka(a, a) == pytest.approx(1.0, abs=1e-12)
    # Invariant to rotation, reflection, isotropic scale and shift.
    assert compare.linear_cka(a, -3.0 * a @ rotation + 7.0) == pytest.approx(1.0, abs=1e-12)
    # The kernel form (Kornblith et al. 2019, eq. 2 with linear kernels) on another pair.
    b = np.hstack([a[:, :2] + 0.5 * rng.normal(size=(100, 2)), rng.normal(size=(100, 9))])
    centring = np.eye(100) - 1.0 / 100

    def hsic(k, l):
        return np.trace(k @ centring @ l @ centring)

    k, l = a @ a.T, b @ b.T
    expected = hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))
    assert compare.linear_cka(a, b) == pytest.approx(expected, rel=1e-10)
    assert 0.0 < expected < 0.9
    assert np.isnan(compare.linear_cka(a, np.ones((100, 3))))


def test_label_issue_auroc_and_its_nan_without_noise():
    quality = np.array([0.9, 0.8, 0.2, 0.7, 0.1])
    noisy = np.array([False, False, True, False, True])
    assert compare.label_issue_auroc(quality, noisy) == 1.0
    assert compare.label_issue_auroc(quality, ~noisy) == 0.0
    assert np.isnan(compare.label_issue_auroc(quality, np.zeros(5, dtype=bool)))


def test_progress_grid_lines_up_runs_of_different_lengths():
    short = np.array([0, 2, 4, 6, 8, 10, 12]) / 12
    long = np.array([0, 5, 10, 15, 20, 25, 28]) / 28
    longest = np.arange(0, 21) / 20
    grid, indices = compare.progress_grid([short, long, longest])
    np.testing.assert_array_equal(grid, longest)  # the run with the most snapshots sets the grid
    assert indices.shape == (3, 21)
    np.testing.assert_array_equal(indices[2], np.arange(21))
    assert indices[0, 0] == 0 and indices[0, -1] == 6 and indices[1, -1] == 6
    assert indices[0, 10] == 3  # 50 % -> step 6 of 12
    # Every chosen snapshot is the nearest one in progress.
    for r, progress in enumerate([short, long]):
        chosen = progress[indices[r]]
        best = np.abs(progress[None, :] - grid[:, None]).min(axis=1)
        np.testing.assert_allclose(np.abs(chosen - grid), best)


# ---- the comparison of two runs ----------------------------------------------------------
def test_identical_runs_compare_as_identical(compared, twin_runs, tiny_run):
    page, table = compared
    steps = tiny_run.snapshot_steps()
    assert len(table) == 2 * len(steps)
    assert list(table.columns) == [
        "frame", "progress", "run", "model", "step", "run_progress", "knn_accuracy", "silhouette",
        "label_issue_auroc", "cka_vit-a", "cka_vit-b",
    ]
    np.testing.assert_allclose(table["cka_vit-a"], 1.0, atol=1e-9)
    np.testing.assert_allclose(table["cka_vit-b"], 1.0, atol=1e-9)
    a, b = table[table["run"] == "vit-a"], table[table["run"] == "vit-b"]
    np.testing.assert_array_equal(a["knn_accuracy"].to_numpy(), b["knn_accuracy"].to_numpy())
    assert list(a["step"]) == steps
    np.testing.assert_allclose(a["progress"], np.array(steps) / steps[-1])
    # The CSV holds the same table.
    csv = pd.read_csv(page.parent / "compare.csv")
    np.testing.assert_allclose(csv["knn_accuracy"], table["knn_accuracy"])


def test_metrics_match_direct_computations(compared, tiny_run):
    from sklearn.metrics import roc_auc_score, silhouette_score
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    _, table = compared
    samples = tiny_run.samples()
    true, noisy = samples["true_label"].to_numpy(), samples["is_noisy"].to_numpy()
    scores = tiny_run.scores()
    rows = table[table["run"] == "vit-a"]
    for step in (tiny_run.snapshot_steps()[0], tiny_run.snapshot_steps()[-1]):
        row = rows[rows["step"] == step].iloc[0]
        embedding = tiny_run.load_snapshot(step)[0].astype(np.float32)
        predicted = cross_val_predict(
            KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute"), embedding, true, cv=LeaveOneOut()
        )
        assert row["knn_accuracy"] == pytest.approx((predicted == true).mean(), abs=1e-12)
        assert row["silhouette"] == pytest.approx(silhouette_score(embedding, true, metric="cosine"), abs=1e-5)
        quality = scores[scores["step"] == step].sort_values("id")["label_quality"].to_numpy()
        assert row["label_issue_auroc"] == pytest.approx(roc_auc_score(noisy, 1 - quality), abs=1e-12)
    # Training separates the classes: the last frame's neighbours agree with the truth.
    assert rows["knn_accuracy"].iloc[-1] > 0.8


def test_the_page_is_self_contained_and_animates_every_frame(compared, tiny_run):
    page, _ = compared
    html = page.read_text()
    assert page.stat().st_size > 3_000_000  # plotly.js is inside
    script_tags = re.findall(r"<script[^>]*>", html)
    assert script_tags and all("src=" not in tag for tag in script_tags)  # nothing loaded from the web
    frames = len(tiny_run.snapshot_steps())
    assert html.count('"name":"') >= frames
    assert "vit-a" in html and "vit-b" in html and "label-issue AUROC" in html


def test_align_to_moves_every_run_onto_the_reference(twin_runs, tiny_run):
    runs = [compare.load_run(path, label) for path, label in zip(twin_runs, ["a", "b"])]
    _, indices = compare.progress_grid([run.progress for run in runs])
    # Turn the second run's frames by 90 degrees, scale and shift them: alignment undoes it.
    runs[1].frames = 2.5 * runs[1].frames @ np.array([[0.0, 1.0], [-1.0, 0.0]]) + 4.0
    own = compare.aligned_frames(runs, indices, reference=None)
    assert not np.allclose(own[1], own[0], atol=1e-3)
    aligned = compare.aligned_frames(runs, indices, reference=0)
    np.testing.assert_allclose(aligned[1], tiny_run.frames(), atol=1e-4)
    np.testing.assert_allclose(aligned[0], tiny_run.frames())


def test_display_frames_are_centred_with_unit_rms_radius():
    rng = np.random.default_rng(2)
    frames = rng.normal(size=(3, 50, 2)) * [[[5.0, 1.0]]] + 3.0
    shown = compare.display_frames([frames])[0]
    np.testing.assert_allclose(shown.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose((shown**2).sum(axis=2).mean(axis=1), 1.0)
    # Only a shift and a scale per frame: the shape is kept.
    assert compare.linear_cka(shown[1], frames[1]) == pytest.approx(1.0)


def test_cli_compare_with_align_to(twin_runs, tmp_path, capsys):
    out = tmp_path / "cli-out"
    code = ftviz_main(["compare", str(twin_runs[0]), str(twin_runs[1]), "--out", str(out), "--align-to", "vit-b"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"compare.html", "compare.parquet", "compare.csv"}
    assert "compare.html" in capsys.readouterr().out


def test_default_output_folder_is_beside_the_first_run(twin_runs):
    page = compare.compare_runs(twin_runs[:1], log=lambda *_: None)
    assert page == twin_runs[0].parent / "compare" / "compare.html"


# ---- bad input ---------------------------------------------------------------------------
def test_runs_with_different_probe_sets_are_refused(twin_runs, tmp_path, capsys):
    samples_path = twin_runs[1] / "samples.parquet"
    samples = pd.read_parquet(samples_path)
    samples.loc[:4, "true_label"] = (samples.loc[:4, "true_label"] + 1) % 10
    samples.to_parquet(samples_path, index=False)
    with pytest.raises(FtvizError, match=r"vit-a and .*vit-b have different probe sets \(true labels differ at 5"):
        compare.compare_runs(twin_runs, out=tmp_path / "out", log=lambda *_: None)
    assert ftviz_main(["compare", str(twin_runs[0]), str(twin_runs[1]), "--out", str(tmp_path / "o")]) == 2
    assert "different probe sets" in capsys.readouterr().err
    samples.iloc[:150].to_parquet(samples_path, index=False)
    with pytest.raises(FtvizError, match="200 vs 150 samples"):
        compare.compare_runs(twin_runs, out=tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_align_to_must_name_a_compared_run(twin_runs, tmp_path):
    with pytest.raises(FtvizError, match="--align-to 'vit-c' is not one of the compared runs"):
        compare.compare_runs(twin_runs, out=tmp_path / "out", align_to="vit-c", log=lambda *_: None)


def test_a_run_without_frames_names_the_missing_stage(twin_runs, tmp_path):
    run = RunDir(twin_runs[1])
    run.mark_stage("project", "pending")
    with pytest.raises(MissingStageError, match="ftviz project"):
        compare.compare_runs(twin_runs, out=tmp_path / "out", log=lambda *_: None)
    with pytest.raises(FtvizError, match="no run directory"):
        compare.compare_runs([twin_runs[0], tmp_path / "nowhere"], log=lambda *_: None)


def test_run_labels_stay_unique():
    labels = compare.run_labels([Path("x/runs/vit"), Path("y/runs/vit"), Path("x/runs/swin"), Path("x/runs/swin")])
    assert labels == ["x/runs/vit", "y/runs/vit", "swin", "swin#2"]


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt install chromium)")
def test_the_page_plays_in_chromium(compared, tiny_run):
    """The slider moves every panel and the table to the chosen frame, without errors."""
    from playwright.sync_api import sync_playwright

    page_path, _ = compared
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri())
            page.wait_for_function("document.querySelector('.js-plotly-plot') && "
                                   "document.querySelector('.js-plotly-plot')._fullLayout", timeout=60_000)
            last = len(tiny_run.snapshot_steps()) - 1
            page.evaluate(f"""() => Plotly.animate(document.querySelector('.js-plotly-plot'), ['{last}'],
                               {{frame: {{duration: 0, redraw: true}}, transition: {{duration: 0}}, mode: 'immediate'}})""")
            page.wait_for_timeout(1500)
            state = page.evaluate("""() => {
                const gd = document.querySelector('.js-plotly-plot');
                const table = gd.data.find(t => t.type === 'table');
                const first = gd._fullData.find(t => t.type === 'scattergl');  // decoded arrays
                return {steps: table.cells.values[2], x0: Array.from(first.x).slice(0, 3),
                        frames: gd._transitionData._frames.length};
            }""")
        finally:
            browser.close()
    assert not errors
    assert state["frames"] == last + 1
    final_step = str(tiny_run.snapshot_steps()[-1])
    assert state["steps"] == [final_step, final_step]
    frames = compare.display_frames([tiny_run.frames()])[0]  # as shown: centred, unit RMS radius
    samples = tiny_run.samples()
    first_class = samples["true_label"].min()
    ids = np.flatnonzero((samples["true_label"].to_numpy() == first_class) & ~samples["is_noisy"].to_numpy())
    np.testing.assert_allclose(state["x0"], frames[last, ids[:3], 0], rtol=1e-5)
