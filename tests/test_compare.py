"""``ftviz compare``: metrics with known answers, the page, the table, and bad input."""

from __future__ import annotations

import base64
import json
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
from tests.conftest import tiny_config

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


# A one-block, two-stage Swin of width 16 at 16 px (window 2): trains in a few seconds.
TINY_SWIN = {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 2}


@pytest.fixture(scope="module")
def vit_and_swin(tiny_run, tmp_path_factory):
    """The session's tiny ViT run (copied to runs/vit) and a tiny Swin run (runs/swin) trained
    on the same data with the same seed and schedule: two models that really differ."""
    from ftviz.pipeline import run_experiment

    runs = tmp_path_factory.mktemp("two-models") / "runs"
    shutil.copytree(tiny_run.path, runs / "vit")
    config = tiny_config(runs, name="swin", model={"name": "swin_tiny_digits", "options": dict(TINY_SWIN)})
    run_experiment(config, progress=False, log=lambda *_: None)
    return runs / "vit", runs / "swin"


@pytest.fixture(scope="module")
def compared(vit_and_swin, tmp_path_factory):
    out = tmp_path_factory.mktemp("compared")
    page = compare.compare_runs(vit_and_swin, out=out, log=lambda *_: None)
    return page, pd.read_parquet(out / "compare.parquet")


def _decode(value):
    """plotly's JSON with its typed arrays ({"dtype", "bdata", "shape"}) turned into numpy."""
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
            if value.get("shape"):
                array = array.reshape([int(side) for side in str(value["shape"]).split(",")])
            return array
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def page_figure(page: Path) -> dict:
    """The data, layout and animation frames a compare page hands to plotly.js, decoded."""
    html = page.read_text()
    decoder = json.JSONDecoder()

    def arguments(call: str) -> list:
        text = html[html.rindex(call) + len(call):]
        text = text[text.index(",") + 1:]  # past the div id
        values = []
        while True:
            text = text.lstrip()
            value, end = decoder.raw_decode(text)
            values.append(_decode(value))
            text = text[end:].lstrip()
            if not text.startswith(","):
                return values
            text = text[1:]

    data, layout, _ = arguments("Plotly.newPlot(")
    (frames,) = arguments("Plotly.addFrames(")
    return {"data": data, "layout": layout, "frames": frames}


def panel_points(figure: dict, frame: dict, panel: int) -> np.ndarray:
    """(N, 2) coordinates of scatter panel ``panel`` in an animation frame, by sample id."""
    points = {}
    for index, trace in zip(frame["traces"], frame["data"]):
        base = figure["data"][index]
        if base["type"] != "scattergl" or base["xaxis"] != ("x" if panel == 0 else f"x{panel + 1}"):
            continue
        for sample, x, y in zip(np.asarray(base["customdata"])[:, 0], trace["x"], trace["y"]):
            points[int(sample)] = (x, y)
    return np.array([points[i] for i in sorted(points)])


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
def test_two_models_compare_frame_by_frame(compared, vit_and_swin, tiny_run):
    page, table = compared
    steps = tiny_run.snapshot_steps()
    assert len(table) == 2 * len(steps)
    assert list(table.columns) == [
        "frame", "progress", "run", "model", "step", "run_progress", "knn_accuracy", "silhouette",
        "label_issue_auroc", "sample_accuracy", "sample_classifier", "test_accuracy_true", "cka_vit", "cka_swin",
    ]
    vit, swin = table[table["run"] == "vit"], table[table["run"] == "swin"]
    assert set(vit["model"]) == {"vit_tiny"} and set(swin["model"]) == {"swin_tiny_digits"}
    # The same schedule: both runs show their own snapshot at every progress point.
    assert list(vit["step"]) == steps and list(swin["step"]) == steps
    np.testing.assert_allclose(vit["progress"], np.array(steps) / steps[-1])
    # CKA: 1 against itself, symmetric, and below 1 between the two models.
    np.testing.assert_allclose(vit["cka_vit"], 1.0)
    np.testing.assert_allclose(swin["cka_swin"], 1.0)
    np.testing.assert_allclose(vit["cka_swin"].to_numpy(), swin["cka_vit"].to_numpy())
    assert (vit["cka_swin"] < 0.99).all() and (vit["cka_swin"] > 0.0).all()
    assert vit["cka_swin"].iloc[-1] == pytest.approx(compare.linear_cka(
        tiny_run.load_snapshot(steps[-1])[0].astype(np.float32),
        RunDir(vit_and_swin[1]).load_snapshot(steps[-1])[0].astype(np.float32)), abs=1e-9)
    # Different models give different metrics; both learn the classes.
    assert not np.allclose(vit["knn_accuracy"], swin["knn_accuracy"])
    assert not np.allclose(vit["silhouette"], swin["silhouette"])
    assert swin["knn_accuracy"].iloc[-1] > swin["knn_accuracy"].iloc[0]
    # No diffusion run: nothing to judge. Probes drawn from the training split: no test accuracy.
    assert table["sample_accuracy"].isna().all() and (table["sample_classifier"] == "").all()
    assert table["test_accuracy_true"].isna().all()
    # The CSV holds the same table.
    csv = pd.read_csv(page.parent / "compare.csv")
    np.testing.assert_allclose(csv["knn_accuracy"], table["knn_accuracy"])
    np.testing.assert_allclose(csv["cka_swin"], table["cka_swin"])


def test_metrics_match_direct_computations(compared, tiny_run):
    from sklearn.metrics import roc_auc_score, silhouette_score
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    _, table = compared
    samples = tiny_run.samples()
    true, noisy = samples["true_label"].to_numpy(), samples["is_noisy"].to_numpy()
    scores = tiny_run.scores()
    rows = table[table["run"] == "vit"]
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


def test_the_page_is_self_contained_and_animates_every_frame(compared, vit_and_swin, tiny_run):
    page, table = compared
    html = page.read_text()
    assert page.stat().st_size > 3_000_000  # plotly.js is inside
    script_tags = re.findall(r"<script[^>]*>", html)
    assert script_tags and all("src=" not in tag for tag in script_tags)  # nothing loaded from the web
    figure = page_figure(page)
    steps = tiny_run.snapshot_steps()
    frames = figure["frames"]
    assert [frame["name"] for frame in frames] == [str(g) for g in range(len(steps))]
    assert len(figure["layout"]["sliders"][0]["steps"]) == len(steps)
    # Every frame shows each run's own frame of that step (centred, unit RMS radius: what
    # display_frames promises) for every sample, and the table of that step.
    shown = [compare.display_frames([RunDir(path).frames().astype(np.float64)])[0] for path in vit_and_swin]
    for g, frame in enumerate(frames):
        for panel in (0, 1):
            np.testing.assert_allclose(panel_points(figure, frame, panel), shown[panel][g], rtol=1e-6, atol=1e-9)
        (cells,) = [trace["cells"]["values"] for trace in frame["data"] if "cells" in trace]
        assert cells[0] == ["vit", "swin"] and cells[2] == [str(steps[g])] * 2
        assert cells[4] == [f"{v:.3f}" for v in table[table["frame"] == g]["knn_accuracy"]]
    # ... so the points really move between the first and the last frame.
    first, last = panel_points(figure, frames[0], 0), panel_points(figure, frames[-1], 0)
    assert np.abs(first - last).mean() > 0.1
    assert "vit" in html and "swin" in html and "label-issue AUROC" in html
    assert "sample acc." not in html  # no diffusion run
    assert "test accuracy (true labels)" not in html  # no held-out probe


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


def test_cli_compare_with_align_to(vit_and_swin, compared, tmp_path, capsys):
    from ftviz.align import align

    out = tmp_path / "cli-out"
    vit, swin = vit_and_swin
    code = ftviz_main(["compare", str(vit), str(swin), "--out", str(out), "--align-to", "vit"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"compare.html", "compare.parquet", "compare.csv"}
    assert "compare.html" in capsys.readouterr().out
    own, aligned = page_figure(compared[0]), page_figure(out / "compare.html")
    assert "panels aligned onto <b>vit</b>" in aligned["layout"]["title"]["text"]
    reference, moved = RunDir(vit).frames(), RunDir(swin).frames()
    for g in (0, len(reference) - 1):
        # The reference keeps its frames; the Swin panel is its own frame moved onto the ViT's
        # (Procrustes), shown centred at unit RMS radius.
        np.testing.assert_allclose(panel_points(aligned, aligned["frames"][g], 0),
                                   panel_points(own, own["frames"][g], 0), rtol=1e-6, atol=1e-9)
        expected = align(moved[g].astype(np.float64), reference[g].astype(np.float64))
        expected -= expected.mean(axis=0)
        expected /= np.sqrt((expected**2).sum(axis=1).mean())
        swin_aligned = panel_points(aligned, aligned["frames"][g], 1)
        np.testing.assert_allclose(swin_aligned, expected, rtol=1e-5, atol=1e-7)
        swin_own = panel_points(own, own["frames"][g], 1)
        assert not np.allclose(swin_aligned, swin_own, atol=1e-3)  # --align-to changed the frames
        # ... towards the reference.
        vit_shown = panel_points(own, own["frames"][g], 0)
        assert ((swin_aligned - vit_shown) ** 2).sum() < ((swin_own - vit_shown) ** 2).sum()


def test_default_output_folder_is_beside_the_first_run(twin_runs):
    page = compare.compare_runs(twin_runs[:1], log=lambda *_: None)
    assert page == twin_runs[0].parent / "compare" / "compare.html"


# ---- test accuracy against the true labels ----------------------------------------------------
def _held_out(path: Path, accuracies: list[float], *, split: str = "eval") -> None:
    """Make the run at ``path`` one whose probe is the held-out test split (run.json's config
    ``data.probe = "test"``), its probe rows' true accuracy over the snapshots ``accuracies``
    and its probe rows of split ``split`` (ingested runs write "probe")."""
    run = RunDir(path)
    manifest = run.manifest()
    manifest["config"]["data"]["probe"] = "test"
    run.manifest_path.write_text(json.dumps(manifest))
    metrics = pd.read_parquet(run.file("metrics.parquet"))
    rows = metrics["split"] == "eval"
    assert rows.sum() == len(accuracies)
    order = metrics[rows].sort_values("step").index
    metrics.loc[order, "true_accuracy"] = accuracies
    metrics.loc[rows, "split"] = split
    metrics.sample(frac=1.0, random_state=0).to_parquet(run.file("metrics.parquet"), index=False)  # any row order


def test_compare_shows_each_runs_test_accuracy_against_the_true_labels(twin_runs, tmp_path, capsys):
    steps = len(RunDir(twin_runs[0]).snapshot_steps())
    _held_out(twin_runs[0], [0.1] * (steps - 1) + [0.8125])
    _held_out(twin_runs[1], [0.2] * (steps - 1) + [0.6875], split="probe")  # as `ftviz embed` writes them
    third = tmp_path / "runs" / "trained-on-probe"
    shutil.copytree(twin_runs[0].parent / "vit-a", third)
    manifest = json.loads((third / "run.json").read_text())
    manifest["config"]["data"]["probe"] = "train"
    (third / "run.json").write_text(json.dumps(manifest))
    assert compare.held_out_true_accuracy(RunDir(third)) != compare.held_out_true_accuracy(RunDir(twin_runs[0]))

    out = tmp_path / "out"
    assert ftviz_main(["compare", *map(str, twin_runs), str(third), "--out", str(out)]) == 0
    logged = capsys.readouterr().out
    assert "test accuracy (true labels) of vit-a: 0.812" in logged and "of vit-b: 0.688" in logged
    table = pd.read_parquet(out / "compare.parquet")
    by_run = table.groupby("run")["test_accuracy_true"]
    assert (by_run.nunique(dropna=False) == 1).all()  # one value per run, on each of its rows
    assert by_run.first()[["vit-a", "vit-b"]].tolist() == [0.8125, 0.6875]
    assert np.isnan(by_run.first()["trained-on-probe"])
    np.testing.assert_array_equal(pd.read_csv(out / "compare.csv")["test_accuracy_true"], table["test_accuracy_true"])
    # Side by side in the page's table, at every frame: "–" for the run without a held-out probe.
    figure = page_figure(out / "compare.html")
    (header,) = [trace["header"]["values"] for trace in figure["data"] if trace["type"] == "table"]
    column = header.index("<b>test accuracy (true labels)</b>")
    assert header[-3:] == ["<b>CKA vs vit-a</b>", "<b>CKA vs vit-b</b>", "<b>CKA vs trained-on-probe</b>"]
    for frame in (figure["frames"][0], figure["frames"][-1]):
        (cells,) = [trace["cells"]["values"] for trace in frame["data"] if "cells" in trace]
        assert cells[0] == ["vit-a", "vit-b", "trained-on-probe"]
        assert cells[column] == ["0.812", "0.688", "–"]


def test_held_out_accuracy_is_nan_without_a_value(twin_runs):
    _held_out(twin_runs[0], [0.5] * len(RunDir(twin_runs[0]).snapshot_steps()))
    assert compare.held_out_true_accuracy(RunDir(twin_runs[0])) == 0.5
    metrics = pd.read_parquet(twin_runs[0] / "metrics.parquet")
    metrics["true_accuracy"] = np.nan  # a run that did not know its true labels
    metrics.to_parquet(twin_runs[0] / "metrics.parquet", index=False)
    assert np.isnan(compare.held_out_true_accuracy(RunDir(twin_runs[0])))
    assert np.isnan(compare.held_out_true_accuracy(RunDir(twin_runs[1])))  # probe from the training split


# ---- sample accuracy of diffusion runs -----------------------------------------------------
def _posing_as_diffusion(tiny_run, runs: Path, per_frame_right) -> dict[int, float]:
    """Copy the tiny run to runs/gen and give it generated samples whose answer is known.

    The samples are probe images on which the tiny run's final model is clearly decided (its
    last snapshot's logits come from the final weights); at frame i, the first
    ``per_frame_right[i]`` of 20 are labelled with the model's class, the rest with another.
    Returns {step: the expected sample accuracy}.
    """
    shutil.copytree(tiny_run.path, runs / "gen")  # weights/final.pt included: still not a classifier
    steps = tiny_run.snapshot_steps()
    logits = tiny_run.load_snapshot(steps[-1])[1].astype(np.float32)
    top_two = np.sort(logits, axis=1)[:, -2:]
    clear = np.argsort(top_two[:, 0] - top_two[:, 1])[:20]  # the 20 widest margins
    assert (top_two[clear, 1] - top_two[clear, 0]).min() > 0.1  # far above fp16/bf16 rounding
    predicted = logits[clear].argmax(axis=1)
    images = tiny_run.probe_images()[clear]
    expected = {}
    for step, right in zip(steps, per_frame_right):
        labels = np.where(np.arange(20) < right, predicted, (predicted + 1) % logits.shape[1])
        (runs / "gen" / "generated").mkdir(exist_ok=True)
        np.savez(runs / "gen" / "generated" / f"step-{step:07d}.npz", images=images, labels=labels)
        expected[step] = right / 20
    return expected


def test_sample_accuracy_is_the_share_the_classifier_puts_in_the_conditioning_class(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run.path, runs / "vit")
    steps = tiny_run.snapshot_steps()
    right = [round(20 * i / (len(steps) - 1)) for i in range(len(steps))]  # 0 of 20 ... 20 of 20
    expected = _posing_as_diffusion(tiny_run, runs, right)
    logs = []
    # The diffusion run first: the default classifier is the first run *without* samples.
    page = compare.compare_runs([runs / "gen", runs / "vit"], out=tmp_path / "out", log=logs.append)
    table = pd.read_parquet(tmp_path / "out" / "compare.parquet")
    gen, vit = table[table["run"] == "gen"], table[table["run"] == "vit"]
    np.testing.assert_allclose(gen["sample_accuracy"], [expected[step] for step in gen["step"]], atol=1e-12)
    assert gen["sample_accuracy"].iloc[0] == 0.0 and gen["sample_accuracy"].iloc[-1] == 1.0
    assert (gen["sample_classifier"] == "vit").all()
    assert vit["sample_accuracy"].isna().all() and (vit["sample_classifier"] == "").all()
    assert f"sample accuracy of gen at step {steps[-1]}: 1.000" in "\n".join(logs)
    # On the page: a table column and a chart, with the judge named.
    figure = page_figure(page)
    (cells,) = [trace["cells"]["values"] for trace in figure["frames"][-1]["data"] if "cells" in trace]
    (header,) = [trace["header"]["values"] for trace in figure["data"] if trace["type"] == "table"]
    column = header.index("<b>sample acc.</b>")
    assert cells[column] == ["1.000", "–"]
    assert "sample accuracy (generated, judged by vit)" in page.read_text()
    csv = pd.read_csv(tmp_path / "out" / "compare.csv")
    np.testing.assert_allclose(csv["sample_accuracy"], table["sample_accuracy"])


def test_the_sample_classifier_can_be_chosen_and_must_classify(tiny_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run.path, runs / "vit")
    _posing_as_diffusion(tiny_run, runs, [20] * len(tiny_run.snapshot_steps()))
    paths = [runs / "gen", runs / "vit"]
    with pytest.raises(FtvizError, match="--classifier gen is a diffusion run"):
        compare.compare_runs(paths, out=tmp_path / "out", classifier="gen", log=lambda *_: None)
    with pytest.raises(FtvizError, match="--classifier 'swin' is not one of the compared runs"):
        compare.compare_runs(paths, out=tmp_path / "out", classifier="swin", log=lambda *_: None)
    assert ftviz_main(["compare", *map(str, paths), "--out", str(tmp_path / "o"), "--classifier", str(paths[1])]) == 0
    assert "sample accuracy of gen" in capsys.readouterr().out
    # Without final weights there is no classifier: the column stays empty, and the log says why.
    (runs / "vit" / "weights" / "final.pt").unlink()
    with pytest.raises(FtvizError, match="has no weights/final.pt"):
        compare.compare_runs(paths, out=tmp_path / "out", classifier="vit", log=lambda *_: None)
    logs = []
    compare.compare_runs(paths, out=tmp_path / "out", log=logs.append)
    assert pd.read_parquet(tmp_path / "out" / "compare.parquet")["sample_accuracy"].isna().all()
    assert any("no classifier run" in line for line in logs)


@pytest.mark.slow
def test_sample_accuracy_of_a_real_diffusion_run(tiny_run, tmp_path):
    """A tiny DDPM trained end to end on the tiny run's data, judged by the tiny ViT."""
    from ftviz.pipeline import run_experiment

    runs = tmp_path / "runs"
    shutil.copytree(tiny_run.path, runs / "vit")
    config = tiny_config(runs, name="ddpm", model={"name": "ddpm_tiny", "options": {
        "block_out_channels": [16, 32], "guidance_scale": 2.0, "samples_per_class": 1, "sample_steps": 4}})
    run_experiment(config, progress=False, log=lambda *_: None)
    compare.compare_runs([runs / "vit", runs / "ddpm"], out=tmp_path / "out", log=lambda *_: None)
    table = pd.read_parquet(tmp_path / "out" / "compare.parquet")
    ddpm = table[table["run"] == "ddpm"]
    assert len(ddpm) == len(tiny_run.snapshot_steps())
    accuracy = ddpm["sample_accuracy"].to_numpy()
    assert np.isfinite(accuracy).all() and ((accuracy >= 0) & (accuracy <= 1)).all()
    # Ten samples (one per class) per snapshot: accuracy in steps of 0.1.
    np.testing.assert_allclose(accuracy * 10, np.round(accuracy * 10), atol=1e-9)
    assert (ddpm["sample_classifier"] == "vit").all()


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


# ---- names people chose: text, never markup ----------------------------------------------------------
HOSTILE_FOLDERS = ("<a href=javascript:alert(1)>one", "two &amp; <i>")
MARKUP = ("<a ", "<a>", "<img", "<i>", "<!--", "</script")


@pytest.fixture
def hostile_compared(tiny_run, tmp_path):
    """Two copies of the tiny run in folders named like markup, with markup class names, compared."""
    from tests.test_render import make_hostile_run

    paths = [make_hostile_run(tiny_run, tmp_path / "runs" / name, render=False).path for name in HOSTILE_FOLDERS]
    return compare.compare_runs(paths, out=tmp_path / "out", log=lambda *_: None), paths


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_hostile_names_reach_plotly_escaped(hostile_compared):
    from ftviz.render.page import plotly_text
    from tests.test_render import HOSTILE_NAMES

    page, _ = hostile_compared
    figure = page_figure(page)
    every = list(_strings(figure))
    assert not [text for text in every if any(tag in text for tag in MARKUP)]
    labels = [plotly_text(name) for name in HOSTILE_FOLDERS]
    names = {trace.get("name") for trace in figure["data"]}
    shown_classes = {HOSTILE_NAMES[c] for c in RunDir(hostile_compared[1][0]).samples()["true_label"].unique()}
    assert {plotly_text(name) for name in shown_classes} | set(labels) <= names
    table = next(trace for trace in figure["data"] if trace["type"] == "table")
    assert table["cells"]["values"][0] == labels
    assert [f"<b>CKA vs {label}</b>" for label in labels] == table["header"]["values"][-2:]
    titles = [annotation["text"] for annotation in figure["layout"]["annotations"]]
    assert [title.split(" · ")[0] for title in titles[:2]] == [f"<b>{label}</b>" for label in labels]
    # The table file keeps the names as they are: it is data, not markup.
    assert pd.read_parquet(page.parent / "compare.parquet")["run"].unique().tolist() == list(HOSTILE_FOLDERS)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt install chromium)")
def test_hostile_names_show_as_text_in_chromium(hostile_compared):
    from playwright.sync_api import sync_playwright

    from tests.test_render import HOSTILE_NAMES

    page_path, paths = hostile_compared
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri())
            page.wait_for_function("document.querySelector('.js-plotly-plot') && "
                                   "document.querySelector('.js-plotly-plot')._fullLayout", timeout=60_000)
            state = page.evaluate("""() => {
                const gd = document.querySelector('.js-plotly-plot');
                return {legend: Array.from(gd.querySelectorAll('.legendtext'), (e) => e.textContent),
                        titles: Array.from(gd.querySelectorAll('.annotation-text'), (e) => e.textContent),
                        cells: Array.from(gd.querySelectorAll('.table .cell-text'), (e) => e.textContent),
                        links: document.querySelectorAll('a').length,
                        images: gd.querySelectorAll('img, image').length,
                        pwned: window.pwned === undefined ? null : window.pwned};
            }""")
        finally:
            browser.close()
    assert not errors
    shown_classes = {HOSTILE_NAMES[c] for c in RunDir(paths[0]).samples()["true_label"].unique()}
    assert shown_classes | set(HOSTILE_FOLDERS) <= set(state["legend"])
    assert [title.split(" · ")[0] for title in state["titles"][:2]] == list(HOSTILE_FOLDERS)
    # A long name wraps over lines (tspans) of its cell, which textContent joins without the space.
    cells = [re.sub(r"\s", "", text) for text in state["cells"]]
    assert [re.sub(r"\s", "", name) for name in HOSTILE_FOLDERS] == cells[:2]
    assert state["links"] == 0 and state["images"] == 0 and state["pwned"] is None
