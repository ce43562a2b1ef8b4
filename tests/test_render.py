"""The animation page and the GIF/MP4 export, on a real tiny run (tests/conftest.py).

The page's binary format is decoded here the way its script decodes it, and compared with
the run's own files; tests/test_browser.py checks the same page in Chromium.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import sys
import zlib

import numpy as np
import pytest

from ftviz.config import RenderConfig
from ftviz.errors import FtvizError, MissingStageError
from ftviz.render import (
    build_page,
    encode_blob,
    frame_fits,
    load_animation_data,
    quantise_coordinates,
    quantise_unit,
    render_run,
    sprite_sheet,
    video_positions,
)
from ftviz.render.codec import COORDINATE_BITS
from ftviz.rundir import RunDir

SMALL_VIDEO = RenderConfig(video_width=400, video_height=240, video_tween=1, frame_ms=200)


def script_text(page: str, element_id: str) -> str:
    match = re.search(rf'<script type="[^"]+" id="{element_id}">(.*?)</script>', page, re.S)
    assert match, f"no #{element_id} in the page"
    return match.group(1)


def decode_page(page: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) exactly as animation.js reads them."""
    meta = json.loads(script_text(page, "ftviz-meta"))
    packed = base64.b64decode(script_text(page, "ftviz-points").strip())
    arrays = {}
    for d in meta["arrays"]:
        planes = np.frombuffer(zlib.decompress(packed[d["offset"] : d["offset"] + d["bytes"]]), dtype=np.uint8)
        assert len(planes) == d["raw_bytes"]
        dtype = np.dtype(d["dtype"]).newbyteorder("<")
        values = planes.reshape(dtype.itemsize, -1).T.copy().view(dtype)
        if d["layout"] == "points":
            values = values.reshape(d["shape"][::-1]).T
        else:
            values = values.reshape(d["shape"])
        if d["layout"] == "delta":
            zigzag = values[1:].astype(np.int64)
            steps = (zigzag >> 1) ^ -(zigzag & 1)
            values = np.concatenate([values[:1].astype(np.int64), steps]).cumsum(axis=0) % (1 << 8 * dtype.itemsize)
            values = values.astype(dtype)
        arrays[d["name"]] = values
    return meta, arrays


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    """A private copy of the shared tiny run, free to change."""
    return RunDir(shutil.copytree(tiny_run.path, tmp_path / "run"))


def test_pipeline_wrote_a_self_contained_page(tiny_run):
    page_path = tiny_run.file("animation.html")
    assert tiny_run.stage_status("render") == "done"
    page = page_path.read_text()
    assert "Plotly" in page and len(page) > 4_000_000  # plotly.js is inside, not linked
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', page), "external resource in the page"
    meta = json.loads(script_text(page, "ftviz-meta"))
    manifest = tiny_run.manifest()
    assert meta["title"] == f"{manifest['name']} — {manifest['model']['name']} on {manifest['dataset']['name']}"
    assert f"<title>{html.escape(meta['title'])}</title>" in page


def test_page_data_decodes_to_the_runs_files(tiny_run):
    page = tiny_run.file("animation.html").read_text()
    meta, arrays = decode_page(page)
    frames = tiny_run.frames()
    scores = tiny_run.scores().sort_values(["step", "id"])
    samples = tiny_run.samples()
    T, N = frames.shape[:2]
    assert (meta["T"], meta["N"]) == (T, N)
    assert meta["steps"] == tiny_run.projection()["step"].tolist()

    coords = arrays["coords"].astype(np.float64)
    origin, scale = np.asarray(meta["axes"]["origin"]), np.asarray(meta["axes"]["scale"])  # (T, 2)
    decoded = origin[:, None, :] + coords * scale[:, None, :]
    # Half a step of each frame's own grid (plus float32 rounding of frames.npy).
    assert (np.abs(decoded - frames) <= scale[:, None, :] * 0.5001 + 1e-6 * np.abs(frames)).all()
    # One grid step is the frame's extent (or, for frames of one size, all frames' extent) over 2**bits - 1.
    top = 2 ** meta["coordinateBits"] - 1
    extent, everywhere = frames.max(axis=1) - frames.min(axis=1), frames.max(axis=(0, 1)) - frames.min(axis=(0, 1))
    assert (np.isclose(scale, extent / top, rtol=1e-6) | np.isclose(scale, everywhere / top, rtol=1e-6)).all()

    outlier = scores["outlier_score"].to_numpy().reshape(T, N)
    low, high = meta["outlierRange"]
    top_code = meta["outlierLevels"] - 1  # fewer levels than 255: a colour scale's worth
    decoded = low + arrays["outlier"] * (high - low) / top_code
    assert np.abs(decoded - outlier).max() <= (high - low) / top_code / 2 + 1e-12
    low, high = meta["qualityRange"]
    quality = scores["label_quality"].to_numpy().reshape(T, N)
    top_code = meta["qualityLevels"] - 1
    assert np.abs(low + arrays["quality"] * (high - low) / top_code - quality).max() <= (high - low) / top_code / 2 + 1e-12
    np.testing.assert_array_equal(arrays["predicted"], scores["predicted_label"].to_numpy().reshape(T, N))
    np.testing.assert_array_equal(arrays["issue"], scores["is_label_issue"].to_numpy().reshape(T, N))
    np.testing.assert_array_equal(arrays["given"], samples["given_label"].to_numpy())
    np.testing.assert_array_equal(arrays["noisy"], samples["is_noisy"].to_numpy())

    # The top outliers of each frame are that frame's highest outlier scores.
    top = np.array(meta["top"])
    assert top.shape == (T, tiny_run.manifest()["config"]["score"]["top"])
    for t in range(T):
        threshold = np.sort(outlier[t])[-top.shape[1]]
        assert (outlier[t, top[t]] >= threshold).all()
        assert list(outlier[t, top[t]]) == sorted(outlier[t, top[t]], reverse=True)

    # Metrics and diagnostics travel as they are in the run.
    metrics = tiny_run.metrics()
    evaluation = metrics[metrics["split"] == "eval"].sort_values("step")
    assert meta["metrics"]["eval"]["step"] == evaluation["step"].tolist()
    np.testing.assert_allclose(meta["metrics"]["eval"]["loss"], evaluation["loss"], rtol=1e-4)  # 5 significant digits
    projection = tiny_run.projection()
    assert meta["diagnostics"]["disparity"][0] is None  # the first frame has no previous one
    np.testing.assert_allclose(meta["diagnostics"]["knn_overlap"], projection["knn_overlap"], atol=1e-6)


def test_size_budget_per_point_and_frame(tiny_run):
    """Bytes counted in the written file, not the renderer's own bookkeeping."""
    from plotly.offline import get_plotlyjs

    path = tiny_run.file("animation.html")
    raw = path.read_bytes()
    page = raw.decode("utf-8")
    T, N = tiny_run.frames().shape[:2]
    plotly_bytes = len(get_plotlyjs().encode("utf-8"))
    assert get_plotlyjs() in page
    points = len(script_text(page, "ftviz-points").encode("utf-8"))
    thumbnails = len(script_text(page, "ftviz-thumbnails").encode("utf-8"))
    assert thumbnails > 1000 and points > 0
    # Everything but plotly.js and the thumbnails: per point and frame, the page's own data
    # (blob + JSON) plus its script, CSS and markup (~70 kB, which a 200 x 7 run cannot spread).
    rest = len(raw) - plotly_bytes - thumbnails
    assert rest - points < 120_000
    # The per-point blob: 14-bit coordinates and the scores, deflated, in base64.
    assert points / (N * T) < 6.0  # the README: under 6 bytes per point and frame
    # The renderer's report agrees with the file.
    _, sizes = build_page(load_animation_data(tiny_run))
    assert sizes["total"] == len(raw) and sizes["points"] == points and sizes["thumbnails"] == thumbnails
    assert sizes["plotlyjs"] == plotly_bytes


def test_encode_blob_round_trips_every_layout():
    rng = np.random.default_rng(0)
    falling = np.array([[65535, 0], [0, 65535], [40000, 3], [39999, 4]], dtype=np.uint16)  # differences wrap
    scores = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    labels = rng.integers(0, 3, (5, 7), dtype=np.uint8)
    blob, descriptors = encode_blob([("falling", falling, "delta"), ("scores", scores, "delta"),
                                     ("labels", labels, "points"), ("one", scores[:1], "delta")])
    page = ('<script type="application/json" id="ftviz-meta">' + json.dumps({"arrays": descriptors})
            + '</script><script type="application/octet-stream" id="ftviz-points">'
            + base64.b64encode(blob).decode() + "</script>")
    _, arrays = decode_page(page)
    np.testing.assert_array_equal(arrays["falling"], falling)
    np.testing.assert_array_equal(arrays["scores"], scores)
    np.testing.assert_array_equal(arrays["labels"], labels)
    np.testing.assert_array_equal(arrays["one"], scores[:1])
    assert [d["layout"] for d in descriptors] == ["delta", "delta", "points", "plain"]
    with pytest.raises(ValueError, match="unsigned"):
        encode_blob([("x", np.zeros(3, np.float32), "plain")])


def test_quantisers_bound_their_error():
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(5, 300, 2)) * [3.0, 0.01]
    frames[3] *= 1e-4  # a frame far smaller than the others keeps its precision
    codes, axes = quantise_coordinates(frames)
    assert codes.dtype == np.uint16 and codes.min() == 0 and codes.max() == 2**COORDINATE_BITS - 1
    origin, scale = np.asarray(axes["origin"]), np.asarray(axes["scale"])
    back = origin[:, None, :] + codes * scale[:, None, :]
    assert (np.abs(back - frames) <= scale[:, None, :] / 2 + 1e-15).all()
    extent = frames[3].max(0) - frames[3].min(0)
    assert (np.abs(back[3] - frames[3]) <= extent / 2**COORDINATE_BITS).all()
    (x0, x1), (y0, y1) = axes["range"]
    assert x0 < frames[..., 0].min() and x1 > frames[..., 0].max() and y0 < frames[..., 1].min()
    codes16, _ = quantise_coordinates(frames, bits=16)
    assert codes16.max() == 65535

    values = np.array([[0.2, np.nan, 0.7], [0.45, 0.2, 0.7]])
    unit, (low, high) = quantise_unit(values)
    assert (low, high) == (0.2, 0.7)
    assert unit[0, 1] == 255 and unit[0, 0] == 0 and unit[0, 2] == 254 and unit[1, 0] == 127


def test_frames_of_one_size_share_a_grid_and_still_points_keep_their_codes():
    rng = np.random.default_rng(5)
    cloud = rng.normal(size=(300, 2))
    frames = np.stack([cloud, cloud * 1.1 + 0.05, cloud * 1.1 + 0.05])
    frames[2, :10] += 0.3  # ten points move in the last frame
    codes, axes = quantise_coordinates(frames)
    assert np.allclose(axes["scale"], axes["scale"][0]) and np.allclose(axes["origin"], axes["origin"][0])
    moved = (codes[2] != codes[1]).any(axis=1)
    assert moved[:10].all() and not moved[10:].any()
    origin, scale = np.asarray(axes["origin"]), np.asarray(axes["scale"])
    assert (np.abs(origin[:, None, :] + codes * scale[:, None, :] - frames) <= scale[:, None, :] / 2 + 1e-12).all()


def test_frame_fits_make_every_frame_fill_the_plot():
    rng = np.random.default_rng(2)
    cloud = rng.normal(size=(400, 2))
    frames = np.stack([cloud * 0.01 + 5, cloud * 10 - 3])  # a tiny and a huge copy
    fit = frame_fits(frames)
    fitted = [(frames[t] - fit["centre"][t]) / fit["scale"][t] for t in range(2)]
    np.testing.assert_allclose(fitted[0], fitted[1], atol=1e-9)
    assert np.mean(np.abs(fitted[0]).max(axis=1) <= 1) == pytest.approx(0.99, abs=0.01)


def test_sprite_sheet_holds_every_thumbnail_where_the_page_crops_it():
    from io import BytesIO

    from PIL import Image

    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, (7, 12, 20, 3), dtype=np.uint8)
    data, info = sprite_sheet(images, max_size=32, image_format="png")
    sheet = np.asarray(Image.open(BytesIO(data)).convert("RGB"))
    assert (info["width"], info["height"], info["count"]) == (20, 12, 7)
    for index, image in enumerate(images):
        row, column = divmod(index, info["columns"])
        tile = sheet[row * info["cell"] : row * info["cell"] + 12, column * info["cell"] : column * info["cell"] + 20]
        np.testing.assert_array_equal(tile, image)

    # Grey images (the digits) are stored as one channel, pixel for pixel the same.
    grey = np.repeat(images[..., :1], 3, axis=-1)
    data, info = sprite_sheet(grey, max_size=32, image_format="png")
    picture = Image.open(BytesIO(data))
    assert picture.mode == "L"
    tile = np.asarray(picture.convert("RGB"))[: info["height"], : info["width"]]
    np.testing.assert_array_equal(tile, grey[0])
    assert Image.open(BytesIO(sprite_sheet(images, image_format="png")[0])).mode == "RGB"

    # A big probe gets smaller thumbnails, within the pixel budget.
    many = rng.integers(0, 255, (400, 32, 32, 3), dtype=np.uint8)
    _, info = sprite_sheet(many, max_size=32, budget_pixels=400 * 16 * 16)
    assert info["width"] == 16 and info["height"] == 16
    with pytest.raises(FtvizError, match="thumbnail_format"):
        sprite_sheet(images, image_format="webp")


def test_generated_images_are_embedded_for_their_frames(run_copy):
    from PIL import Image

    steps = run_copy.projection()["step"].tolist()
    folder = run_copy.path / "generated"
    folder.mkdir()
    for step in steps[1::2]:
        Image.new("RGB", (40, 20), (step % 255, 10, 200)).save(folder / f"step-{step:07d}.png")
    path = render_run(run_copy)
    generated = json.loads(script_text(path.read_text(), "ftviz-generated"))
    assert sorted(int(k) for k in generated) == list(range(1, len(steps), 2))
    first = base64.b64decode(generated["1"].split(",", 1)[1])
    assert first == (folder / f"step-{steps[1]:07d}.png").read_bytes()


def test_render_needs_the_project_stage(run_copy):
    run_copy.mark_stage("project", "pending")
    with pytest.raises(MissingStageError, match="ftviz project"):
        render_run(run_copy)


def test_bad_settings_are_user_errors(run_copy, tmp_path):
    with pytest.raises(FtvizError, match="color_by"):
        render_run(run_copy, RenderConfig(color_by="rainbow"))
    with pytest.raises(FtvizError, match="axes"):
        render_run(run_copy, RenderConfig(axes="log"))
    with pytest.raises(FtvizError, match="--format"):
        render_run(run_copy, output_format="avi")
    with pytest.raises(FtvizError, match="is a folder"):
        render_run(run_copy, out=tmp_path)


def test_inconsistent_frames_are_reported(run_copy):
    from ftviz.rundir import write_npy

    frames = run_copy.frames()
    write_npy(run_copy.file("frames.npy"), frames[:, :-1])
    with pytest.raises(FtvizError, match="samples.parquet"):
        render_run(run_copy)


def test_out_elsewhere_leaves_the_stage_alone(run_copy, tmp_path):
    run_copy.mark_stage("render", "pending")
    path = render_run(run_copy, RenderConfig(color_by="outlier_score", axes="per_frame"), out=tmp_path / "x.html")
    assert path.is_file() and run_copy.stage_status("render") == "pending"
    meta = json.loads(script_text(path.read_text(), "ftviz-meta"))
    assert meta["colorBy"] == "outlier_score" and meta["axesMode"] == "per_frame"


def test_gif_has_every_frame_and_tween(run_copy, tmp_path):
    from PIL import Image

    path = render_run(run_copy, SMALL_VIDEO, output_format="gif", out=tmp_path / "a.gif")
    T = run_copy.frames().shape[0]
    images = len(video_positions(T, SMALL_VIDEO.video_tween))
    step_ms = SMALL_VIDEO.frame_ms / (SMALL_VIDEO.video_tween + 1)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.size == (400, 240)
        assert gif.info.get("loop") == 0
        first = np.asarray(gif.convert("RGB"))
        durations = []
        for index in range(gif.n_frames):  # Pillow merges identical neighbours, adding durations
            gif.seek(index)
            durations.append(gif.info["duration"])
        last = np.asarray(gif.convert("RGB"))
    assert T <= len(durations) <= images
    assert sum(durations) == pytest.approx(images * step_ms + 3 * SMALL_VIDEO.frame_ms, abs=10)
    assert (first != last).any(axis=2).mean() > 0.001  # the points moved
    assert first.std() > 10  # not a blank image


def test_video_positions_ease_between_frames():
    assert video_positions(3, 1) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert video_positions(1, 3) == [0.0]


def test_mp4_through_imageio_ffmpeg(run_copy, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="pip install imageio-ffmpeg for MP4 export")
    path = render_run(run_copy, SMALL_VIDEO, output_format="mp4", out=tmp_path / "a.mp4")
    assert path.read_bytes()[4:8] == b"ftyp"
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    T = run_copy.frames().shape[0]
    fps = 1000 / (SMALL_VIDEO.frame_ms / (SMALL_VIDEO.video_tween + 1))
    assert frames == len(video_positions(T, SMALL_VIDEO.video_tween)) + round(3 * SMALL_VIDEO.frame_ms / 1000 * fps)
    assert seconds == pytest.approx(frames / fps, abs=0.1)


def test_mp4_without_imageio_ffmpeg_says_what_to_install(run_copy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now fails
    with pytest.raises(FtvizError, match="pip install imageio-ffmpeg"):
        render_run(run_copy, output_format="mp4", out=tmp_path / "a.mp4")
    assert not (tmp_path / "a.mp4").exists()


def test_cli_render(run_copy, tmp_path, capsys):
    from PIL import Image

    from ftviz.cli import main

    out = tmp_path / "slides.gif"
    assert main(["render", str(run_copy.path), "--format", "gif", "--out", str(out),
                 "--set", "render.video_width=320", "--set", "render.video_height=240",
                 "--set", "render.video_tween=0", "--set", "render.frame_ms=100"]) == 0
    assert out.is_file() and "slides.gif" in capsys.readouterr().out
    T = run_copy.frames().shape[0]
    with Image.open(out) as gif:  # every override shows in the file
        assert gif.size == (320, 240)
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert sum(durations) == pytest.approx(T * 100 + 3 * 100, abs=10)  # no tween: one image a frame
    # The run's own config is not changed by --set.
    assert run_copy.manifest()["config"]["render"]["video_width"] == 1280
    assert main(["render", str(run_copy.path), "--set", "render.color_by=rainbow"]) == 2
    assert "color_by" in capsys.readouterr().err


def test_png_panel_shows_the_first_and_last_frames(run_copy, tmp_path):
    from PIL import Image

    from ftviz.render import paint_panel, panel_frames

    data = load_animation_data(run_copy)
    assert panel_frames(data) == [0, data.n_frames - 1]
    steps = data.steps.tolist()
    assert panel_frames(data, f"{steps[1]},{steps[1] + 1},last") == [1, data.n_frames - 1]
    with pytest.raises(FtvizError, match="--steps"):
        panel_frames(data, "0,soon")
    path = render_run(run_copy, output_format="png", out=tmp_path / "panel.png")
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        image = np.asarray(picture.convert("RGB")).astype(int)
    # Two square scatter panels side by side, each with coloured points, and they differ.
    side = 520
    assert image.shape[1] == 24 * 2 + 2 * side + 20
    left, right = image[66 : 66 + side, 24 : 24 + side], image[66 : 66 + side, 24 + side + 20 : 24 + 2 * side + 20]
    colourful = lambda region: ((region.max(axis=2) - region.min(axis=2)) > 60).mean()  # noqa: E731
    assert colourful(left) > 0.002 and colourful(right) > 0.002
    assert (left != right).any(axis=2).mean() > 0.005
    three = paint_panel(data, steps=f"first,{steps[len(steps) // 2]},last")
    assert three.shape[1] == 24 * 2 + 3 * side + 2 * 20
    with pytest.raises(FtvizError, match="--format png"):
        render_run(run_copy, output_format="gif", steps="first,last", out=tmp_path / "x.gif")


# ---- names people chose: shown as text, never as markup -----------------------------------------
# Class names come from folder names and dataset metadata, run names from the user.
HOSTILE_NAMES = [
    "<!--<script>",  # opens a script's escape state: the old "</"-only escaping broke the page
    '<a href="https://example.com/">link</a>',  # plotly reads tags in labels: a live link
    "</script><b>bold</b>",
    "cats & dogs &amp;",
    '<img src=x onerror="window.pwned = 1">',
    "it's \"quoted\"",
    "<br>broken<br>line",
    "class7", "class8", "class9",
]
HOSTILE_RUN_NAME = '<a href="https://example.com/">run</a> & <i>co</i>'


def make_hostile_run(tiny_run, path, *, render: bool = True) -> RunDir:
    """A copy of the tiny run whose class names and run name are markup (its page rendered again)."""
    run = RunDir(shutil.copytree(tiny_run.path, path))
    samples = run.samples()
    samples["class_name"] = [HOSTILE_NAMES[c] for c in samples["given_label"]]
    samples["true_class_name"] = [HOSTILE_NAMES[c] for c in samples["true_label"]]
    samples.to_parquet(run.file("samples.parquet"), index=False)
    manifest = run.manifest()
    run.update_manifest(name=HOSTILE_RUN_NAME, dataset={**manifest["dataset"], "class_names": HOSTILE_NAMES})
    if render:
        render_run(run)
    return run


def test_json_in_a_script_element_holds_no_markup_characters():
    from ftviz.render.page import _json_for_script

    value = {"names": HOSTILE_NAMES, "nested": [{"x": "a</script>b<!--c-->&d"}], "n": 1.5}
    text = _json_for_script(value)
    assert not set("<>&") & set(text)
    assert json.loads(text) == value


def test_hostile_names_reach_the_page_as_text(tiny_run, tmp_path):
    run = make_hostile_run(tiny_run, tmp_path / "run")
    page = run.file("animation.html").read_text()
    meta = json.loads(script_text(page, "ftviz-meta"))
    assert meta["classNamesText"] == HOSTILE_NAMES
    # What plotly gets: entities for <, > and &, which it shows as the characters.
    assert meta["classNames"] == [html.escape(name, quote=False) for name in HOSTILE_NAMES]
    assert not any("<" in name or ">" in name for name in meta["classNames"])
    # The metadata element is one element: nothing inside it can end it or open a comment.
    meta_text = script_text(page, "ftviz-meta")
    assert "<" not in meta_text and "&" not in meta_text
    assert page.count('id="ftviz-meta"') == 1
    # The run's name shows escaped in the markup and literally in the metadata.
    assert f"<title>{html.escape(meta['title'])}</title>" in page and HOSTILE_RUN_NAME in meta["title"]
    assert HOSTILE_RUN_NAME not in page.split('<script type="application/json" id="ftviz-meta">')[0]


def test_suspicion_cards_are_suspicion_parquet_by_rank(tiny_run):
    """The cards' samples, order, values and detectors, against the detect stage's file."""
    import pandas as pd

    meta = json.loads(script_text(tiny_run.file("animation.html").read_text(), "ftviz-meta"))
    table = pd.read_parquet(tiny_run.file("suspicion.parquet"))
    top = meta["suspicion"]["top"]
    assert len(top) == tiny_run.manifest()["config"]["score"]["top"]
    # Most suspicious first; equal suspicion in id order.
    expected = table.sort_values(["suspicion", "id"], ascending=[False, True]).head(len(top))
    assert [card["id"] for card in top] == expected["id"].tolist()
    assert [card["rank"] for card in top] == list(range(1, len(top) + 1))
    assert (expected["suspicion_rank"].to_numpy() <= np.arange(1, len(top) + 1)).all()  # ties share a rank
    np.testing.assert_allclose([card["suspicion"] for card in top], expected["suspicion"], atol=5e-5)
    assert [card["flagged"] for card in top] == expected["is_label_issue"].tolist()
    assert [card["issueStep"] for card in top] == [None if pd.isna(s) else int(s) for s in expected["issue_step"]]
    assert meta["suspicion"]["flagged"] == int(table["is_label_issue"].sum())
    # Each card's detector is the score column that ranks the sample highest (ties in a
    # column: the earlier id first), with that rank.
    detectors = meta["suspicion"]["detectors"]
    assert {"aum", "label_quality_last", "outlier_score"} <= set(detectors)
    assert not {"id", "suspicion", "is_label_issue", "issue_step"} & set(detectors)
    by_id = table.sort_values("id").set_index("id")
    ranks = by_id[detectors].rank(ascending=False, method="first")
    for card in top:
        best = ranks.loc[card["id"]].min()
        assert card["detectorRank"] == best == ranks.loc[card["id"], card["detector"]]


def test_detector_rows_are_detectors_parquet_cell_by_cell(tiny_run):
    import pandas as pd

    meta = json.loads(script_text(tiny_run.file("animation.html").read_text(), "ftviz-meta"))
    table = pd.read_parquet(tiny_run.file("detectors.parquet"))
    rows = meta["detectors"]
    assert len(rows) == len(table)
    for row, record in zip(rows, table.to_dict("records")):
        assert row["detector"] == record["detector"]
        assert row["step"] == (None if pd.isna(record["step"]) else int(record["step"]))
        for metric in ("auroc", "average_precision", "precision", "recall", "f1", "n_flagged"):
            value = record[metric]
            if pd.isna(value):
                assert row[metric] is None, (record["detector"], metric)
            else:
                assert row[metric] == pytest.approx(float(value), abs=5e-5), (record["detector"], metric)


# ---- the training set: its images and the page's panel of its most suspicious labels ------------
def train_suspicion_by_rank(run):
    """train_suspicion.parquet, most suspicious first (equal suspicion: smaller id first)."""
    import pandas as pd

    table = pd.read_parquet(run.file("train_suspicion.parquet"))
    return table.sort_values(["suspicion", "id"], ascending=[False, True]).reset_index(drop=True)


def test_train_images_are_the_training_split_as_thumbnails(tiny_run):
    import pandas as pd

    from ftviz.config import ExperimentConfig
    from ftviz.data import load_splits
    from ftviz.dynamics import read_train_images

    config = ExperimentConfig.from_dict(tiny_run.manifest()["config"])
    splits = load_splits(config.data, seed=config.seed)
    images = read_train_images(tiny_run)
    ids = pd.read_parquet(tiny_run.file("train_samples.parquet"))["id"].to_numpy()
    assert images.dtype == np.uint8 and images.shape == (len(ids), 16, 16, 3)  # 16 px: kept as they are
    row_of = {int(sample): row for row, sample in enumerate(splits.train_sample_ids)}
    np.testing.assert_array_equal(images, splits.train.images[[row_of[int(i)] for i in ids]])


def test_thumbnails_box_filter_larger_images_and_never_enlarge():
    from PIL import Image

    from ftviz.dynamics import thumbnails

    rng = np.random.default_rng(4)
    wide = rng.integers(0, 256, (3, 48, 96, 3), dtype=np.uint8)
    small = thumbnails(wide)
    assert small.shape == (3, 16, 32, 3) and small.dtype == np.uint8
    for image, thumb in zip(wide, small):
        np.testing.assert_array_equal(thumb, np.asarray(Image.fromarray(image).resize((32, 16), Image.Resampling.BOX)))
    # A box filter by an exact factor 3 is the mean of each 3 x 3 block (to rounding).
    blocks = wide[0].reshape(16, 3, 32, 3, 3).mean(axis=(1, 3))
    assert np.abs(small[0].astype(float) - blocks).max() <= 1
    tiny = rng.integers(0, 256, (2, 8, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(thumbnails(tiny), tiny)  # never enlarged
    grey = thumbnails(rng.integers(0, 256, (2, 64, 64), dtype=np.uint8))
    assert grey.shape == (2, 32, 32, 3) and (grey[..., 0] == grey[..., 2]).all()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled", "float", "short", "large"])
def test_damaged_train_images_are_a_one_line_error(run_copy, damage, capsys):
    from ftviz.cli import main
    from ftviz.dynamics import read_train_images

    path = run_copy.file("train_images.npy")
    images = np.load(path)
    if damage == "garbage":
        path.write_bytes(b"\x93NUMPY not an array at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "pickled":  # an object array: loading it would unpickle (run code)
        np.save(path, np.array([{"x": 1}] * len(images), dtype=object), allow_pickle=True)
    elif damage == "float":
        np.save(path, images.astype(np.float32))
    elif damage == "short":
        np.save(path, images[:-1])
    else:
        np.save(path, np.zeros((len(images), 64, 64, 3), np.uint8))
    with pytest.raises(FtvizError) as caught:
        read_train_images(run_copy)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and message.endswith("rerun training")
    # The page's render stops on it with that one line (not a traceback), exit code 2.
    assert main(["render", str(run_copy.path), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ftviz: error: {message}"]
    # A GIF shows the probe alone: the training set's files are not read for it.
    assert load_animation_data(run_copy, with_training=False).training is None


def test_training_panel_lists_the_most_suspicious_training_samples(run_copy):
    """The page's training panel: exactly the top ids of train_suspicion.parquet in order,
    with their labels, suspicion, flags and thumbnails (a sheet the page crops, card j = tile j)."""
    from io import BytesIO

    import pandas as pd
    from PIL import Image

    from ftviz.dynamics import read_train_images

    page_path = render_run(run_copy, RenderConfig(thumbnail_format="png"), out=run_copy.path / "png.html")
    page = page_path.read_text()
    meta = json.loads(script_text(page, "ftviz-meta"))
    training = meta["training"]
    top = run_copy.manifest()["config"]["score"]["top"]
    expected = train_suspicion_by_rank(run_copy).head(top)
    samples = pd.read_parquet(run_copy.file("train_samples.parquet")).set_index("id")
    assert [card["id"] for card in training["top"]] == expected["id"].tolist()
    assert [card["rank"] for card in training["top"]] == list(range(1, top + 1))
    np.testing.assert_allclose([card["suspicion"] for card in training["top"]], expected["suspicion"], atol=1e-9)
    assert [card["flagged"] for card in training["top"]] == expected["is_label_issue"].tolist()
    assert [card["given"] for card in training["top"]] == samples.loc[expected["id"], "given_label"].tolist()
    assert [card["true"] for card in training["top"]] == samples.loc[expected["id"], "true_label"].tolist()
    assert [card["noisy"] for card in training["top"]] == samples.loc[expected["id"], "is_noisy"].tolist()
    assert [card["suggested"] for card in training["top"]] == expected["suggested_label"].tolist()
    assert [card["fix"] for card in training["top"]] == expected["fix"].fillna("").tolist()
    assert any(card["fix"] for card in training["top"])  # the flagged cards say what a retrain does
    assert training["count"] == len(samples)
    assert training["flagged"] == int(train_suspicion_by_rank(run_copy)["is_label_issue"].sum())
    assert any(card["flagged"] for card in training["top"])  # the tiny run flags its flipped labels
    # The labels travel as numbers; the names the page shows them by are the run's class names.
    assert meta["classNamesText"][: len(run_copy.manifest()["dataset"]["class_names"])] == \
        run_copy.manifest()["dataset"]["class_names"]

    info = training["thumbnails"]
    assert info["count"] == top and info["mime"] == "image/png"
    sheet_url = script_text(page, "ftviz-train-thumbnails")
    sheet = np.asarray(Image.open(BytesIO(base64.b64decode(sheet_url.split(",", 1)[1]))).convert("RGB"))
    images = read_train_images(run_copy)
    row_of = {int(sample): row for row, sample in enumerate(samples.index)}
    for j, sample in enumerate(expected["id"]):
        r, c = divmod(j, info["columns"])
        tile = sheet[r * info["cell"] : r * info["cell"] + info["height"], c * info["cell"] : c * info["cell"] + info["width"]]
        np.testing.assert_array_equal(tile, images[row_of[int(sample)]])
    # Its bytes are the page's images, not its per-point budget.
    _, sizes = build_page(load_animation_data(run_copy), RenderConfig(thumbnail_format="png"))
    assert sizes["train_thumbnails"] == len(sheet_url.encode()) > 0


def test_training_panel_without_images_or_without_the_file(run_copy):
    run_copy.file("train_images.npy").unlink()  # a run of the Trainer callback: no images kept
    data = load_animation_data(run_copy)
    assert data.training is not None and data.training.images is None
    page, _ = build_page(data)
    meta = json.loads(script_text(page, "ftviz-meta"))
    assert meta["training"]["thumbnails"] is None  # the cards show the grey placeholder
    assert len(meta["training"]["top"]) == run_copy.manifest()["config"]["score"]["top"]
    assert script_text(page, "ftviz-train-thumbnails") == ""
    run_copy.file("train_suspicion.parquet").unlink()  # no training dynamics or no detect stage: no panel
    page, _ = build_page(load_animation_data(run_copy))
    meta = json.loads(script_text(page, "ftviz-meta"))
    assert meta["training"] is None and script_text(page, "ftviz-train-thumbnails") == ""


def test_training_panel_of_a_training_table_that_disagrees_is_refused(run_copy):
    import pandas as pd

    table = pd.read_parquet(run_copy.file("train_suspicion.parquet"))
    table.iloc[:-3].to_parquet(run_copy.file("train_suspicion.parquet"), index=False)
    with pytest.raises(FtvizError, match=r"train_suspicion.parquet has 197 rows.*ftviz detect"):
        load_animation_data(run_copy)
    # The live page reads what it can: no panel rather than an error.
    from ftviz.render.data import training_suspects

    assert training_suspects(run_copy, 8, tolerant=True) is None
