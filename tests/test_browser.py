"""The animation page in a real browser: Debian's Chromium, headless, driven by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium. WebGL (plotly's
scattergl) runs on SwiftShader, Chromium's CPU renderer, since the machine has no GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


def displayed(page) -> np.ndarray:
    shown = page.evaluate("window.ftviz.displayed()")
    return np.stack([shown["x"], shown["y"]], axis=1)


def tolerance(frames: np.ndarray) -> float:
    """The page's coordinates are 14-bit codes on each frame's box: one code step of the widest frame."""
    return float((frames.max(axis=1) - frames.min(axis=1)).max() / (2**14 - 1) * 1.01 + 1e-6)


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
    assert set(manifest["dataset"]["class_names"]) <= set(legend) and "top outliers" in legend
    # Every probe point is drawn once, in the class traces.
    drawn = page.evaluate("document.getElementById('scatter').data.slice(0, -2).reduce((n, t) => n + t.x.length, 0)")
    assert drawn == frames.shape[1]
    # The first frame's top outliers are listed with their thumbnails.
    page.wait_for_function("window.ftviz.thumbnailsLoaded === true")
    cards = page.locator("#outliers .outlier")
    assert cards.count() == manifest["config"]["score"]["top"]
    top = page.evaluate("window.ftviz.meta.top[0]")
    assert [int(cards.nth(j).get_attribute("data-id")) for j in range(cards.count())] == top


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
    assert [m[0] for m in modes] == ["label", "prediction", "outlier_score", "label_issue", "noise"]
    for mode, label in modes:
        page.select_option("#color-by", mode)
        page.wait_for_function(
            f"document.getElementById('scatter').layout.legend.title.text === {label!r}"
            if mode != "outlier_score" else "document.getElementById('scatter').data[0].name === 'outlier score'"
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
    stopped = page.evaluate("window.ftviz.frame")
    page.wait_for_timeout(1500)
    assert page.evaluate("window.ftviz.frame") == stopped
    assert not page.evaluate("window.ftviz.isPlaying()")


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
    page.wait_for_timeout(500)
    out = Path(os.environ.get("FTVIZ_SCREENSHOT_DIR", tmp_path)) / "animation-tiny.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))
    box = page.locator("#scatter").bounding_box()
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    region = picture[int(box["y"]) : int(box["y"] + box["height"]), int(box["x"]) : int(box["x"] + box["width"])]
    colourful = (region.max(axis=2) - region.min(axis=2)) > 60  # class colours, not greys
    assert colourful.sum() > 200, "the WebGL scatter drew no points"
    assert page.errors == []
