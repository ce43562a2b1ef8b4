"""The animation page in a real browser: Debian's Chromium, headless, driven by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium. WebGL (plotly's
scattergl) runs on SwiftShader, Chromium's CPU renderer, since the machine has no GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--enable-unsafe-swiftshader",  # WebGL without a GPU
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("playwright", reason="pip install playwright (the Python package; no browser download)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser, tiny_run):
    """The tiny run's animation.html, loaded and ready; console errors collected in page.errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 800})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    requests: list[str] = []
    opened.on("request", lambda request: requests.append(request.url))
    opened.goto(tiny_run.file("animation.html").as_uri())
    opened.wait_for_function("window.ftviz && (window.ftviz.ready || !document.getElementById('error').hidden)",
                             timeout=120_000)
    opened.errors = errors
    opened.requests = requests
    yield opened
    context.close()


def settle(page, frame: int) -> None:
    page.wait_for_function(f"window.ftviz.frame === {frame} && window.ftviz.settled", timeout=20_000)


def painted(page) -> None:
    """Wait until the scatter has been redrawn and the browser has painted it (two animation frames)."""
    page.wait_for_function("window.ftviz.settled && (window.ftviz.draws || 0) > 0")
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => done(true))))")


def displayed(page) -> np.ndarray:
    shown = page.evaluate("window.ftviz.displayed()")
    return np.stack([shown["x"], shown["y"]], axis=1)


def tolerance(frames: np.ndarray) -> float:
    """The page's coordinates are codes on a grid over a frame's box (or all frames' box): one step of the widest."""
    from ftviz.render.codec import COORDINATE_BITS

    return float((frames.max(axis=(0, 1)) - frames.min(axis=(0, 1))).max() / (2**COORDINATE_BITS - 1) * 1.01 + 1e-6)


def suspicion_by_rank(run) -> pd.DataFrame:
    """suspicion.parquet, most suspicious first (equal suspicion: smaller id first)."""
    table = pd.read_parquet(run.file("suspicion.parquet"))
    return table.sort_values(["suspicion", "id"], ascending=[False, True]).reset_index(drop=True)


def ids_of_shown_points(xs, ys, frame: np.ndarray, tol: float) -> np.ndarray:
    """The sample id of each point a trace shows, found by its position in ``frame`` (N, 2)."""
    from scipy.spatial import cKDTree

    distance, ids = cKDTree(frame).query(np.stack([xs, ys], axis=1))
    assert distance.max() <= tol and len(set(ids.tolist())) == len(ids), "points are not one per sample"
    return ids


def test_page_opens_without_errors_and_shows_the_run(page, tiny_run):
    assert page.evaluate("window.ftviz.ready"), page.inner_text("#error")
    assert page.errors == []
    # Offline: nothing is fetched but the file itself and its inline data.
    assert [url for url in page.requests if not url.startswith(("file:", "data:", "blob:"))] == []
    manifest = tiny_run.manifest()
    title = page.inner_text("#title")
    assert manifest["name"] in title and manifest["model"]["name"] in title and manifest["dataset"]["name"] in title
    frames = tiny_run.frames()
    for t in (0, len(frames) - 1):
        points = page.evaluate(f"window.ftviz.pointsOf({t})")
        assert np.abs(np.stack([points["x"], points["y"]], 1) - frames[t]).max() <= tolerance(frames)
    assert np.abs(displayed(page) - frames[0]).max() <= tolerance(frames)
    legend = page.locator("#scatter .legendtext").all_text_contents()
    assert tiny_run.stage_status("detect") == "done"  # the shared run has suspicion.parquet
    assert set(manifest["dataset"]["class_names"]) <= set(legend) and "most suspicious" in legend
    # Every probe point is drawn once, in the class traces.
    drawn = page.evaluate("document.getElementById('scatter').data.slice(0, -2).reduce((n, t) => n + t.x.length, 0)")
    assert drawn == frames.shape[1]
    # The most suspicious labels of suspicion.parquet are listed by rank, with their
    # thumbnails, rank, suspicion and detector.
    page.wait_for_function("window.ftviz.thumbnailsLoaded === true")
    cards = page.locator("#outliers .outlier:not([hidden])")
    assert cards.count() == manifest["config"]["score"]["top"]
    expected = suspicion_by_rank(tiny_run).head(cards.count())
    first_step = int(tiny_run.projection()["step"].iloc[0])
    assert [int(cards.nth(j).get_attribute("data-id")) for j in range(cards.count())] == expected["id"].tolist()
    N = frames.shape[1]
    for j, row in enumerate(expected.itertuples()):
        card = cards.nth(j)
        assert card.locator(".rank").inner_text() == f"#{j + 1} of {N}"
        assert float(card.locator(".score").inner_text()) == pytest.approx(row.suspicion, abs=5e-4 + 1e-9)
        assert card.locator(".detector").first.inner_text() != ""
        # Red from the step on which the detector flags it for good.
        flagged_now = bool(row.is_label_issue) and (pd.isna(row.issue_step) or row.issue_step <= first_step)
        assert ("issue" in card.get_attribute("class").split()) == flagged_now


def test_slider_moves_the_frame(page, tiny_run):
    frames = tiny_run.frames()
    steps = tiny_run.projection()["step"].tolist()
    last = len(frames) - 1
    slider = page.locator("#frame-slider")
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)
    settle(page, last)
    assert np.abs(displayed(page) - frames[last]).max() <= tolerance(frames)
    assert np.abs(displayed(page) - frames[0]).max() > 100 * tolerance(frames)  # the points really moved
    assert f"step {steps[last]}" in page.inner_text("#frame-label")
    assert page.evaluate("document.getElementById('loss-cursor').dataset.step") == str(steps[last])
    assert f"step {steps[last]}" in page.inner_text("#scatter-step")
    knn = tiny_run.projection()["knn_overlap"].iloc[last]
    assert page.inner_text("#stat-knn") == f"{knn:.2f}"
    # The keyboard moves the slider too.
    slider.focus()
    page.keyboard.press("ArrowLeft")
    settle(page, last - 1)
    assert page.evaluate("document.body.dataset.frame") == str(last - 1)
    assert page.errors == []


def test_clicking_the_loss_curve_jumps_to_that_step(page, tiny_run):
    steps = tiny_run.projection()["step"].tolist()
    frames = tiny_run.frames()
    target = len(steps) // 2
    point = page.evaluate(
        """(step) => {
          const gd = document.getElementById('loss');
          const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
          return {x: box.left + xa._offset + xa.l2p(step), y: box.top + ya._offset + ya._length * 0.5};
        }""",
        steps[target],
    )
    page.mouse.move(point["x"], point["y"])
    page.mouse.click(point["x"], point["y"])
    settle(page, target)
    assert np.abs(displayed(page) - frames[target]).max() <= tolerance(frames)
    assert page.evaluate("document.getElementById('loss-cursor').dataset.step") == str(steps[target])
    assert page.evaluate("document.getElementById('diagnostics-cursor').dataset.step") == str(steps[target])
    assert page.errors == []


def test_hover_shows_the_sample_with_its_thumbnail(page, tiny_run):
    frames = tiny_run.frames()
    samples = tiny_run.samples()
    # The most isolated point of frame 0, so the hover cannot pick a neighbour.
    first = frames[0]
    distances = np.linalg.norm(first[:, None] - first[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    sample = int(distances.min(axis=1).argmax())
    point = page.evaluate(
        """(xy) => {
          const gd = document.getElementById('scatter');
          const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
          return {x: box.left + xa._offset + xa.l2p(xy[0]), y: box.top + ya._offset + ya.l2p(xy[1])};
        }""",
        [float(first[sample, 0]), float(first[sample, 1])],
    )
    page.wait_for_function("window.ftviz.thumbnailsLoaded === true")
    page.mouse.move(point["x"] - 30, point["y"] - 30)
    page.mouse.move(point["x"], point["y"], steps=4)
    # Plotly throttles hover events: wait for the tooltip of this sample, not of one passed on the way.
    page.wait_for_function(
        f"!document.getElementById('tooltip').hidden && "
        f"document.getElementById('tooltip-text').textContent.includes('sample #{sample}given')",
        timeout=10_000,
    )
    text = page.inner_text("#tooltip")
    assert f"sample #{sample}\n" in text
    assert f"given label {samples['class_name'].iloc[sample]}" in text
    assert "outlier score" in text and "label quality" in text and "prediction" in text
    # The thumbnail canvas holds the image, not the grey placeholder.
    spread = page.evaluate(
        """() => { const c = document.getElementById('tooltip-thumb');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   const grey = [...d].filter((v, i) => i % 4 === 0);
                   return Math.max(...grey) - Math.min(...grey); }"""
    )
    assert spread > 30
    assert page.errors == []


def test_every_colour_mode_draws_every_point(page, tiny_run):
    n_points = tiny_run.frames().shape[1]
    last = tiny_run.frames().shape[0] - 1
    scores = tiny_run.scores()
    at_last = scores[scores["step"] == tiny_run.projection()["step"].iloc[last]].sort_values("id")
    n_classes = len(tiny_run.manifest()["dataset"]["class_names"])
    expected_counts = {
        "label": np.bincount(tiny_run.samples()["given_label"], minlength=n_classes).tolist(),
        "prediction": np.bincount(at_last["predicted_label"], minlength=n_classes).tolist(),
        "label_issue": [int((~at_last["is_label_issue"]).sum()), int(at_last["is_label_issue"].sum())],
        "noise": [int((~tiny_run.samples()["is_noisy"]).sum()), int(tiny_run.samples()["is_noisy"].sum())],
    }
    page.evaluate(f"window.ftviz.goTo({last}, 0)")
    modes = page.evaluate("window.ftviz.meta.colorModes")
    with_suspicion = tiny_run.file("suspicion.parquet").is_file()
    assert [m[0] for m in modes] == ["label", "prediction", "outlier_score", "label_issue", "noise"] + (
        ["suspicion"] if with_suspicion else [])
    for mode, label in modes:
        page.select_option("#color-by", mode)
        page.wait_for_function(
            f"document.getElementById('scatter').layout.legend.title.text === {label!r}"
            if mode not in ("outlier_score", "suspicion") else f"document.getElementById('scatter').data[0].name === {label!r}"
        )
        counts = page.evaluate("document.getElementById('scatter').data.slice(0, -2).map((t) => t.x.length)")
        assert sum(counts) == n_points, mode
        if mode in expected_counts:  # the page's decoded labels and flags match the run's files
            assert counts == expected_counts[mode], mode
    page.select_option("#color-by", "outlier_score")
    page.wait_for_function("document.getElementById('scatter').data[0].name === 'outlier score'")
    colours = page.evaluate("Array.from(document.getElementById('scatter').data[0].marker.color)")
    assert len(colours) == n_points and colours == sorted(colours)  # atypical points drawn last, on top
    assert page.errors == []


def test_play_advances_and_pause_stops(page):
    page.click("#play")
    page.wait_for_function("window.ftviz.frame >= 2", timeout=20_000)
    assert page.inner_text("#play").endswith("Pause")
    page.click("#play")
    page.wait_for_function("!window.ftviz.isPlaying() && window.ftviz.settled", timeout=20_000)
    stopped = page.evaluate("window.ftviz.frame")
    assert page.inner_text("#play").endswith("Play")
    # Playing would step on once a frame's hold is over: wait for that moment (the page's own
    # animation frames past the longest hold plus a transition), then check nothing moved.
    later = page.evaluate(
        """() => new Promise((done) => {
             const until = performance.now() + 2 * (window.ftviz.meta.frameMs + window.ftviz.meta.transitionMs);
             const check = (now) => (now >= until ? done(window.ftviz.frame) : requestAnimationFrame(check));
             requestAnimationFrame(check);
           })"""
    )
    assert later == stopped and page.evaluate("window.ftviz.settled")


def test_fit_each_frame_rescales_the_axes(page, tiny_run):
    page.check("#fit-frames")
    shown, fit_range = page.evaluate(
        """() => { const layout = document.getElementById('scatter')._fullLayout;
                   return [[layout.xaxis.range, layout.yaxis.range], window.ftviz.meta.fit.range]; }""")
    # Equal units on both axes widen one range to the plot's shape; the other is the fit's.
    for axis in range(2):
        assert shown[axis][0] <= fit_range[axis][0] + 1e-9 and shown[axis][1] >= fit_range[axis][1] - 1e-9
    assert any(np.allclose(shown[axis], fit_range[axis]) for axis in range(2))
    frames = tiny_run.frames()
    fit = page.evaluate("window.ftviz.meta.fit")
    shown = displayed(page)
    expected = (frames[0] - np.asarray(fit["centre"][0])) / fit["scale"][0]
    assert np.abs(shown - expected).max() < 1e-3


def test_screenshot_shows_the_points(page, tiny_run, tmp_path):
    from PIL import Image

    last = tiny_run.frames().shape[0] - 1
    page.evaluate(f"window.ftviz.goTo({last}, 0)")
    settle(page, last)
    painted(page)
    out = Path(os.environ.get("FTVIZ_SCREENSHOT_DIR", tmp_path)) / "animation-tiny.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))
    box = page.locator("#scatter").bounding_box()
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    region = picture[int(box["y"]) : int(box["y"] + box["height"]), int(box["x"]) : int(box["x"] + box["width"])]
    colourful = (region.max(axis=2) - region.min(axis=2)) > 60  # class colours, not greys
    assert colourful.sum() > 200, "the WebGL scatter drew no points"
    assert page.errors == []


def test_suspicion_colours_and_detector_table(page, tiny_run):
    """Colour by suspicion: each point's colour is its suspicion.parquet value (by id); the
    detector table shows detectors.parquet cell by cell and follows the frame."""
    suspicion = pd.read_parquet(tiny_run.file("suspicion.parquet")).set_index("id").sort_index()
    detectors = pd.read_parquet(tiny_run.file("detectors.parquet"))  # the shared run has noise: never absent
    frames = tiny_run.frames()
    page.evaluate("window.ftviz.setColorBy('suspicion')")
    page.wait_for_function("document.getElementById('scatter').data[0].name === 'label suspicion'")
    trace = page.evaluate("""() => {
        const t = document.getElementById('scatter').data[0];
        return {x: Array.from(t.x), y: Array.from(t.y), c: Array.from(t.marker.color)}; }""")
    ids = ids_of_shown_points(trace["x"], trace["y"], frames[page.evaluate("window.ftviz.frame")], tolerance(frames))
    assert sorted(ids.tolist()) == suspicion.index.tolist()  # every sample once
    values = suspicion["suspicion"].to_numpy()
    step = (values.max() - values.min()) / 254  # 255 levels
    np.testing.assert_allclose(trace["c"], values[ids], atol=step / 2 + 1e-6)
    assert (np.diff(trace["c"]) >= -1e-9).all()  # most suspicious drawn last, on top

    assert not page.locator("#detectors-card").is_hidden()
    digits = {"auroc": 3, "average_precision": 3, "precision": 2, "recall": 2, "f1": 2, "n_flagged": 0}
    steps = tiny_run.projection()["step"].tolist()
    for frame in (0, len(steps) - 1):
        page.evaluate(f"window.ftviz.goTo({frame}, 0)")
        settle(page, frame)
        expected = detectors[detectors["step"].isna() | (detectors["step"] == steps[frame])]
        shown = page.evaluate("""() => Array.from(document.querySelectorAll('#detectors tbody tr'),
                                     (tr) => Array.from(tr.cells, (td) => td.textContent))""")
        assert len(shown) == len(expected)
        for cells, record in zip(shown, expected.to_dict("records")):
            name = record["detector"] + ("" if pd.isna(record["step"]) else f" @ {int(record['step'])}")
            assert cells[0] == name
            for cell, (metric, places) in zip(cells[1:], digits.items()):
                if pd.isna(record[metric]):
                    assert cell == "–", (name, metric)
                else:  # as printed: within half a unit of the last place shown
                    half_unit = 0.5 * 10.0**-places + 1e-9
                    assert float(cell) == pytest.approx(float(record[metric]), abs=half_unit), (name, metric)
    # The card list can switch to the frame's top outliers and back.
    page.select_option("#cards-by", "outliers")
    top = page.evaluate(f"window.ftviz.meta.top[{len(steps) - 1}]")
    ids = [int(page.locator("#outliers .outlier").nth(j).get_attribute("data-id")) for j in range(len(top))]
    assert ids == top and "Top outliers" in page.inner_text("#cards-title")
    assert page.errors == []


def test_training_panel_shows_the_training_sets_most_suspicious_labels(page, tiny_run):
    """The static panel of train_suspicion.parquet: ids in order, labels as names, suspicion
    to 3 decimals, red where flagged, each card's thumbnail drawn from train_images.npy."""
    from tests.test_render import train_suspicion_by_rank

    assert not page.locator("#training-card").is_hidden()
    top = tiny_run.manifest()["config"]["score"]["top"]
    expected = train_suspicion_by_rank(tiny_run).head(top)
    samples = pd.read_parquet(tiny_run.file("train_samples.parquet")).set_index("id")
    names = tiny_run.manifest()["dataset"]["class_names"]
    cards = page.locator("#training .outlier")
    assert cards.count() == top
    assert [int(cards.nth(j).get_attribute("data-id")) for j in range(top)] == expected["id"].tolist()
    for j, row in enumerate(expected.itertuples()):
        card = cards.nth(j)
        assert card.locator(".sample-id").inner_text() == f"id {row.id}"
        assert card.locator(".given").inner_text() == f"given {names[samples.loc[row.id, 'given_label']]}"
        assert card.locator(".suggested").inner_text() == f"suggested {names[row.suggested_label]}"
        assert card.locator(".score").inner_text() == f"{row.suspicion:.3f}"
        assert ("issue" in card.get_attribute("class").split()) == bool(row.is_label_issue)
        assert (card.locator(".badge.issue").count() == 1) == bool(row.is_label_issue)
        # What a retrain does with the sample, as the export's fix column says.
        fix = card.locator(".badge.fix")
        assert fix.count() == (1 if row.fix else 0) and (not row.fix or fix.inner_text() == row.fix)
    # The panel is static: another frame lists the same samples.
    page.evaluate("window.ftviz.goTo(1, 0)")
    settle(page, 1)
    assert [int(cards.nth(j).get_attribute("data-id")) for j in range(top)] == expected["id"].tolist()
    # Each canvas holds its sample's image (not the grey placeholder): its centre pixel.
    page.wait_for_function("window.ftviz.trainThumbnailsLoaded === true")
    images = np.load(tiny_run.file("train_images.npy"))
    row_of = {int(sample): position for position, sample in enumerate(samples.index)}
    shown = page.evaluate("""() => Array.from(document.querySelectorAll('#training canvas'), (c) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const grey = [...d].filter((v, i) => i % 4 === 0);
        return Math.max(...grey) - Math.min(...grey); })""")
    spreads = [int(np.ptp(images[row_of[int(i)], ..., 0])) for i in expected["id"]]
    assert all(s > 30 for s, e in zip(shown, spreads) if e > 60) and max(shown) > 30
    assert page.errors == []


def test_hostile_names_show_as_text(browser, tiny_run, tmp_path):
    """Class and run names that are markup: the page loads, shows them literally, makes no links."""
    from tests.test_render import HOSTILE_NAMES, HOSTILE_RUN_NAME, make_hostile_run

    run = make_hostile_run(tiny_run, tmp_path / "run")
    context = browser.new_context(viewport={"width": 1400, "height": 800})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(run.file("animation.html").as_uri())
    opened.wait_for_function("window.ftviz && (window.ftviz.ready || !document.getElementById('error').hidden)",
                             timeout=120_000)
    assert opened.evaluate("window.ftviz.ready"), opened.inner_text("#error")
    assert errors == []
    assert opened.inner_text("#title").startswith(HOSTILE_RUN_NAME)
    titles = dict(opened.evaluate("window.ftviz.meta.colorModes"))
    # Plotly leaves empty traces out of the legend: the classes predicted at the last frame.
    last = len(run.snapshot_steps()) - 1
    scores = run.scores()
    predicted = scores[scores["step"] == run.snapshot_steps()[-1]]["predicted_label"].unique()
    expected = {"label": set(HOSTILE_NAMES), "prediction": {HOSTILE_NAMES[c] for c in predicted}}
    assert len(expected["prediction"]) > 1
    opened.evaluate(f"window.ftviz.goTo({last}, 0)")
    settle(opened, last)
    for mode in ("label", "prediction"):
        opened.evaluate(f"window.ftviz.setColorBy('{mode}')")
        opened.wait_for_function(f"document.getElementById('scatter').layout.legend.title.text === {titles[mode]!r}")
        legend = opened.locator("#scatter .legendtext").all_text_contents()
        assert expected[mode] <= set(legend), mode
        # No element made from a name: no link anywhere, no image or styled text in the plot.
        assert opened.evaluate("document.querySelectorAll('a, #scatter img, #scatter image, #scatter b, "
                               "#scatter i').length") == 0, mode
    # The training panel names the classes as text too.
    given = opened.locator("#training .given").all_text_contents()
    samples = pd.read_parquet(run.file("train_samples.parquet")).set_index("id")
    ids = [int(i) for i in opened.locator("#training .outlier").evaluate_all("(cards) => cards.map((c) => c.dataset.id)")]
    assert ids and given == [f"given {HOSTILE_NAMES[samples.loc[i, 'given_label']]}" for i in ids]
    assert opened.evaluate("document.querySelectorAll('#training a, #training img, #training b, #training i').length") == 0
    assert opened.evaluate("window.pwned === undefined")
    context.close()


def test_the_page_names_its_projection(page, browser, tiny_run, tmp_path):
    import shutil

    from ftviz.cli import main
    from ftviz.rundir import RunDir

    assert page.inner_text("#projection") == "PCA"
    assert page.evaluate("document.body.dataset.projection") == "pca"
    pytest.importorskip("openTSNE")
    run = RunDir(shutil.copytree(tiny_run.path, tmp_path / "run"))
    assert main(["project", str(run.path), "-q", "--set", "project.method=tsne",
                 "--set", "project.first_iter=100", "--set", "project.iter=10"]) == 0
    assert main(["render", str(run.path), "-q"]) == 0
    context = browser.new_context(viewport={"width": 1400, "height": 800})
    other = context.new_page()
    other.goto(run.file("animation.html").as_uri())
    other.wait_for_function("window.ftviz && window.ftviz.ready", timeout=120_000)
    assert other.inner_text("#projection").startswith("t-SNE (openTSNE)")
    assert other.evaluate("document.body.dataset.projection") == "tsne"
    assert "t-SNE (openTSNE) projection" in other.inner_text("#subtitle")
    assert other.inner_text("#stat-variance") == "–" and other.inner_text("#stat-variance-note") == "PCA only"
    frames = run.frames()
    shown = other.evaluate(f"window.ftviz.pointsOf({len(frames) - 1})")
    assert np.abs(np.stack([shown["x"], shown["y"]], 1) - frames[-1]).max() <= tolerance(frames)
    context.close()


def test_png_panel_opens_in_the_browser(browser, tiny_run, tmp_path):
    """The paper panel is a PNG a browser decodes, at the size the painter promises."""
    from ftviz.render import render_run

    path = render_run(tiny_run, output_format="png", out=tmp_path / "panel.png", steps="first,last")
    context = browser.new_context()
    viewer = context.new_page()
    viewer.set_content(f'<img id="panel" src="data:image/png;base64,{__import__("base64").b64encode(path.read_bytes()).decode()}">')
    viewer.wait_for_function("document.getElementById('panel').complete")
    width, height = viewer.evaluate("[document.getElementById('panel').naturalWidth, document.getElementById('panel').naturalHeight]")
    assert width == 24 * 2 + 2 * 520 + 20 and height > 520
    context.close()
