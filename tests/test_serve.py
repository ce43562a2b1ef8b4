"""``ftviz serve`` and ``ftviz.show``: a real uvicorn server on 127.0.0.1, real HTTP, real runs.

A live run is simulated from a copy of the session's tiny run: its final files are removed
and the per-frame analysis files (the follower's contract) are written back frame by frame,
from the run's own frames.npy and scores.parquet, with training "running" under this test's
pid; the server must follow it as it grows and when it ends.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftviz.errors import FtvizError
from ftviz.rundir import INTERIM_SUSPICION, RunDir, atomic_path, write_json, write_parquet
from ftviz.serve import BackgroundServer, run_names

FINAL_FILES = ("frames.npy", "scores.parquet", "projection.parquet", "suspicion.parquet", "detectors.parquet",
               "train_suspicion.parquet", "train_detectors.parquet", "animation.html")


# ---- helpers --------------------------------------------------------------------------------
def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get_json(url: str) -> dict:
    status, body = get(url)
    assert status == 200, body[:300]
    return json.loads(body)


def raw_get(server: BackgroundServer, path: str) -> tuple[int, bytes]:
    """A request for ``path`` exactly as written (no client-side normalisation of dots or slashes)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def decoded_frames(payload: dict) -> np.ndarray:
    """(T, N, 2) coordinates of a /data payload, decoded as the page's script decodes them."""
    from tests.test_render import decode_page

    page = (f'<script type="application/json" id="ftviz-meta">{json.dumps(payload["meta"])}</script>'
            f'<script type="application/octet-stream" id="ftviz-points">{payload["points"]}</script>')
    meta, arrays = decode_page(page)
    origin, scale = np.asarray(meta["axes"]["origin"]), np.asarray(meta["axes"]["scale"])
    return origin[:, None, :] + arrays["coords"].astype(np.float64) * scale[:, None, :]


def grid_step(frames: np.ndarray) -> float:
    """The codec's coordinate error bound: one grid step of the widest extent (see test_browser.tolerance)."""
    from ftviz.render.codec import COORDINATE_BITS

    return float((frames.max(axis=(0, 1)) - frames.min(axis=(0, 1))).max() / (2**COORDINATE_BITS - 1) * 1.01 + 1e-6)


def tree_state(folder: Path) -> dict:
    """Every file under ``folder`` with its size and modification time (to prove nothing was written)."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


class LiveRun:
    """A copy of a finished run turned back into one still training, grown frame by frame.

    Frames are "analysed" by writing analysis/score and analysis/project files (the
    follower's per-frame contract) from the original run's scores and frames.
    """

    def __init__(self, finished: RunDir, path: Path):
        self.finished = finished
        self.run = RunDir(shutil.copytree(finished.path, path, ignore=shutil.ignore_patterns("weights")))
        self.frames = finished.frames()
        self.projection = finished.projection()
        self.steps = [int(s) for s in self.projection["step"]]
        self.scores = finished.read_parquet("scores.parquet").sort_values(["step", "id"])
        self.metrics = finished.read_parquet("metrics.parquet")
        for name in FINAL_FILES:
            self.run.file(name).unlink(missing_ok=True)
        shutil.rmtree(self.run.path / "analysis", ignore_errors=True)  # the finished run's own frame files
        manifest = self.run.manifest()
        manifest["stages"] = {name: {"status": "pending"} for name in manifest["stages"]}
        manifest["stages"]["train"] = {"status": "running", "pid": os.getpid(), "host": socket.gethostname()}
        manifest["snapshot_steps"] = []
        write_json(self.run.manifest_path, manifest)
        self.record(0)

    def record(self, count: int) -> None:
        """``count`` snapshots recorded, and the metrics logged up to the last of them."""
        manifest = self.run.manifest()
        manifest["snapshot_steps"] = self.steps[:count]
        write_json(self.run.manifest_path, manifest)
        last = self.steps[count - 1] if count else -1
        write_parquet(self.run.file("metrics.parquet"), self.metrics[self.metrics["step"] <= last])

    def analyse(self, index: int) -> None:
        step = self.steps[index]
        rows = self.scores[self.scores["step"] == step].sort_values("id")
        with atomic_path(self.run.path / "analysis" / "score" / f"step-{step:07d}.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, outlier_score=rows["outlier_score"].to_numpy(np.float32),
                         label_quality=rows["label_quality"].to_numpy(np.float32),
                         is_label_issue=rows["is_label_issue"].to_numpy(bool),
                         predicted_label=rows["predicted_label"].to_numpy(np.int64),
                         confidence=rows["confidence"].to_numpy(np.float32))
        row = self.projection.iloc[index]
        with atomic_path(self.run.path / "analysis" / "project" / f"step-{step:07d}.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, xy=self.frames[index], layout=self.frames[index],
                         **{key: np.float64(row.get(key, np.nan)) for key in
                            ("explained_variance", "disparity_to_previous", "knn_overlap")})

    def write_suspicion(self) -> None:
        """The follower's interim suspicion table (never suspicion.parquet: the detect stage's)."""
        shutil.copy(self.finished.file("suspicion.parquet"), self.run.file(INTERIM_SUSPICION))

    def finish(self) -> None:
        """Training ends and the final files are assembled, as the follower does."""
        for name in (*FINAL_FILES, "metrics.parquet"):
            if self.finished.file(name).is_file():
                shutil.copy(self.finished.file(name), self.run.file(name))
        write_json(self.run.manifest_path, self.finished.manifest())


@pytest.fixture()
def runs_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    return root


@pytest.fixture()
def serve_folder():
    """Start a background server on a folder (port 0: a free one); stopped at the end of the test."""
    servers = []

    def start(root: Path) -> BackgroundServer:
        server = BackgroundServer(root)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ---- the index and the JSON API ---------------------------------------------------------------
def test_index_lists_finished_live_stopped_and_damaged_runs(tiny_run, runs_root, serve_folder):
    shutil.copytree(tiny_run.path, runs_root / "finished", ignore=shutil.ignore_patterns("weights"))
    growing = LiveRun(tiny_run, runs_root / "growing")
    growing.record(2)
    growing.analyse(0)
    (runs_root / "broken").mkdir()
    (runs_root / "broken" / "run.json").write_text("{ not json")
    dead = LiveRun(tiny_run, runs_root / "dead")  # its training process is gone
    manifest = dead.run.manifest()
    manifest["stages"]["train"]["pid"] = 2**22 + 12345
    write_json(dead.run.manifest_path, manifest)
    (runs_root / "notes").mkdir()  # a folder without run.json is not a run
    before = tree_state(runs_root)

    server = serve_folder(runs_root)
    listed = {run["name"]: run for run in get_json(server.url + "api/runs")["runs"]}
    assert sorted(listed) == ["broken", "dead", "finished", "growing"]
    finished = listed["finished"]
    manifest = tiny_run.manifest()
    assert finished["model"] == manifest["model"]["name"] and finished["dataset"] == manifest["dataset"]["name"]
    assert finished["stages"] == {name: "done" for name in manifest["stages"]}
    assert (finished["snapshots"], finished["frames"]) == (len(manifest["snapshot_steps"]), len(tiny_run.frames()))
    assert (finished["live"], finished["state"], finished["error"]) == (False, "finished", None)
    assert (listed["growing"]["live"], listed["growing"]["state"]) == (True, "live")
    assert (listed["growing"]["snapshots"], listed["growing"]["frames"]) == (2, 1)
    assert listed["growing"]["stages"]["train"] == "running" and listed["growing"]["stages"]["score"] == "pending"
    assert (listed["dead"]["live"], listed["dead"]["state"], listed["dead"]["stages"]["train"]) == (
        False, "stopped", "interrupted")
    assert listed["broken"]["state"] == "damaged" and "run.json is damaged" in listed["broken"]["error"]
    assert get_json(server.url + "api/runs/growing") == listed["growing"]

    status, body = get(server.url)
    page = body.decode()
    assert status == 200
    rows = dict(re.findall(r'<tr data-run="([^"]+)" data-state="([^"]+)">', page))
    assert rows == {"broken": "damaged", "dead": "stopped", "finished": "finished", "growing": "live"}
    assert "run.json is damaged" in page and f"{len(tiny_run.frames())} / {len(manifest['snapshot_steps'])}" in page
    assert "1 / 2" in page and 'href="/runs/growing/"' in page
    # Every page of every run, damaged or not: nothing in the folder changes.
    for name in listed:
        get(server.url + f"runs/{name}/")
        get(server.url + f"api/runs/{name}/data")
    assert get(server.url + "runs/broken/")[0] == 422
    assert tree_state(runs_root) == before


def test_finished_run_page_is_its_animation_html(tiny_run, runs_root, serve_folder):
    shutil.copytree(tiny_run.path, runs_root / "tiny", ignore=shutil.ignore_patterns("weights"))
    server = serve_folder(runs_root)
    expected = tiny_run.file("animation.html").read_bytes()
    assert get(server.url + "runs/tiny/") == (200, expected)
    assert get(server.url + "runs/tiny") == (200, expected)  # redirected to the slash
    payload = get_json(server.url + "api/runs/tiny/data")
    frames = tiny_run.frames()
    assert payload["meta"]["T"] == len(frames) and payload["state"] == "finished"
    assert payload["meta"]["steps"] == tiny_run.projection()["step"].tolist()
    assert np.abs(decoded_frames(payload) - frames).max() <= grid_step(frames)
    # The training set's panel travels with the data: its list and its own small sprite sheet.
    from tests.test_render import script_text, train_suspicion_by_rank

    page_meta = json.loads(script_text(expected.decode(), "ftviz-meta"))
    training = payload["meta"]["training"]
    top = [card["id"] for card in training["top"]]
    assert top == train_suspicion_by_rank(tiny_run)["id"].head(len(top)).tolist() and top
    assert training["top"] == page_meta["training"]["top"]
    assert training["thumbnails"]["count"] == len(top)
    assert payload["train_thumbnails"] == script_text(expected.decode(), "ftviz-train-thumbnails")


def test_empty_folder_says_so(runs_root, serve_folder):
    server = serve_folder(runs_root)
    status, body = get(server.url)
    assert status == 200 and f"No runs in {runs_root} yet" in body.decode()
    assert get_json(server.url + "api/runs") == {"root": str(runs_root), "runs": []}


def test_names_that_are_not_runs_are_404_and_never_leave_the_folder(tiny_run, tmp_path, runs_root, serve_folder):
    shutil.copytree(tiny_run.path, runs_root / "tiny", ignore=shutil.ignore_patterns("weights", "snapshots"))
    outside = tmp_path / "outside"  # a run beside the folder, reachable only through links
    shutil.copytree(tiny_run.path, outside, ignore=shutil.ignore_patterns("weights", "snapshots"))
    (runs_root / "escape").symlink_to(outside, target_is_directory=True)
    (runs_root / "parent").symlink_to(tmp_path, target_is_directory=True)
    (runs_root / ".hidden").mkdir()
    (runs_root / ".hidden" / "run.json").write_text("{}")
    assert run_names(runs_root) == ["tiny"]
    server = serve_folder(runs_root)
    for path in ["/runs/../", "/runs/%2e%2e/", "/runs/%2E%2E/", "/api/runs/..", "/api/runs/%2e%2e/data",
                 "/runs/%2Ftmp/", f"/runs/{str(outside).replace('/', '%2F')}/", "//etc/passwd", "/runs//etc/",
                 "/runs/escape/", "/api/runs/escape", "/api/runs/escape/data", "/runs/parent/",
                 "/runs/.hidden/", "/api/runs/nope", "/runs/tiny/../../", "/runs/tiny%2F..%2F..%2F/"]:
        status, body = raw_get(server, path)
        assert status == 404, path
        assert b"Plotly" not in body and b'"frames"' not in body, path
    assert raw_get(server, "/runs/tiny/")[0] == 200


def test_port_in_use_and_a_missing_folder_are_one_line_and_exit_2(runs_root, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "ftviz.serve", str(runs_root), "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"ftviz: error: port {port} on 127.0.0.1 is taken") and "--port" in result.stderr
    with pytest.raises(FtvizError, match="does not exist"):
        BackgroundServer(tmp_path / "nowhere")
    with pytest.raises(FtvizError, match="is taken"):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            BackgroundServer(runs_root, port=taken.getsockname()[1])


def test_serve_command_runs_until_ctrl_c(tiny_run, runs_root):
    shutil.copytree(tiny_run.path, runs_root / "tiny", ignore=shutil.ignore_patterns("weights", "snapshots"))
    process = subprocess.Popen([sys.executable, "-m", "ftviz.serve", str(runs_root), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", banner).group(0)
        assert [run["name"] for run in get_json(url + "api/runs")["runs"]] == ["tiny"]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, process.stderr.read()


# ---- a live run ---------------------------------------------------------------------------------
def test_live_run_is_shown_as_far_as_it_goes(tiny_run, runs_root, serve_folder):
    live = LiveRun(tiny_run, runs_root / "growing")
    server = serve_folder(runs_root)
    api = server.url + "api/runs/growing"
    frames = live.frames

    status, body = get(server.url + "runs/growing/")
    assert status == 200 and "waiting for its first analysed frame" in body.decode()
    assert get_json(api + "/data")["meta"] is None

    live.record(3)
    for index in range(2):
        live.analyse(index)
    # Half-written: a score file without its project file, and a temporary file mid-write.
    step = live.steps[2]
    (live.run.path / "analysis" / "score" / f"step-{step:07d}.npz").write_bytes(b"")
    (live.run.path / "analysis" / "project" / f".step-{step:07d}.npz.x1.tmp").write_bytes(b"PK")
    status = get_json(api)
    assert (status["snapshots"], status["frames"], status["live"]) == (3, 2, True)
    payload = get_json(api + "/data")
    meta = payload["meta"]
    assert meta["T"] == 2 and meta["steps"] == live.steps[:2] and meta["suspicion"] is None
    assert meta["training"] is None and payload["train_thumbnails"] == ""  # no detect stage yet
    assert np.abs(decoded_frames(payload) - frames[:2]).max() <= grid_step(frames[:2])
    logged = live.metrics[(live.metrics["split"] == "train") & (live.metrics["step"] <= live.steps[2])]
    assert meta["metrics"]["train"]["step"] == logged["step"].tolist()
    knn = live.projection["knn_overlap"].to_numpy()[:2]
    assert meta["diagnostics"]["knn_overlap"] == pytest.approx(knn.tolist(), abs=1e-4)

    page = get(server.url + "runs/growing/")[1].decode()
    live_element = json.loads(re.search(r'<script type="application/json" id="ftviz-live">(.*?)</script>', page).group(1))
    assert live_element["api"] == "../../api/runs/growing" and live_element["live"] is True
    assert live_element["revision"] == status["revision"]

    live.analyse(2)
    live.write_suspicion()
    grown = get_json(api + "/data")
    assert grown["revision"] != status["revision"] and grown["meta"]["T"] == 3
    suspicion = pd.read_parquet(live.run.file(INTERIM_SUSPICION)).sort_values("suspicion", ascending=False)
    assert grown["meta"]["suspicion"]["top"][0]["id"] == int(suspicion["id"].iloc[0])

    live.finish()
    done = get_json(api)
    assert (done["live"], done["state"], done["frames"]) == (False, "finished", len(frames))
    assert get(server.url + "runs/growing/")[1] == tiny_run.file("animation.html").read_bytes()
    # The detect stage's training table appeared with the end: the page's data now has the panel.
    finished = get_json(api + "/data")
    assert finished["meta"]["training"]["top"][0]["id"] == int(
        pd.read_parquet(live.run.file("train_suspicion.parquet")).sort_values(
            ["suspicion", "id"], ascending=[False, True])["id"].iloc[0])
    assert finished["train_thumbnails"].startswith("data:image/")


# ---- notebooks ---------------------------------------------------------------------------------
def test_show_puts_the_page_in_the_notebook(tiny_run, runs_root):
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    import ftviz
    from ftviz.serve import stop_notebook_servers

    InteractiveShell.instance()
    finished = RunDir(shutil.copytree(tiny_run.path, runs_root / "tiny", ignore=shutil.ignore_patterns("weights")))
    with capture_output() as captured:
        assert ftviz.show(finished, height=500) is None
    (output,) = captured.outputs
    frame = output.data["text/html"]
    assert frame.startswith("<iframe") and 'height="500"' in frame
    srcdoc = re.search(r'srcdoc="([^"]*)"', frame).group(1)
    assert unescape(srcdoc) == tiny_run.file("animation.html").read_text(encoding="utf-8")

    live = LiveRun(tiny_run, runs_root / "growing")
    live.record(1)
    live.analyse(0)
    try:
        with capture_output() as captured:
            ftviz.show(str(live.run.path))
        frame = captured.outputs[0].data["text/html"]
        url = re.search(r'src="(http://127\.0\.0\.1:\d+/runs/growing/)"', frame).group(1)
        status, body = get(url)
        assert status == 200 and b'id="ftviz-live"' in body
    finally:
        stop_notebook_servers()
    with pytest.raises(FtvizError, match="not an ftviz run"):
        ftviz.show(runs_root)


# ---- the live page in a browser ---------------------------------------------------------------
@pytest.mark.slow
def test_live_page_grows_in_place_then_reads_finished(tiny_run, runs_root, serve_folder):
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (make browser)")
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    live = LiveRun(tiny_run, runs_root / "growing")
    live.record(3)
    live.analyse(0)
    live.analyse(1)
    server = serve_folder(runs_root)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(server.url + "runs/growing/")
        page.wait_for_function("window.ftviz && window.ftviz.ready", timeout=60_000)
        assert page.inner_text("#live-badge") == "● live"
        assert page.evaluate("window.ftviz.meta.T") == 2
        train_points = lambda: page.evaluate("document.getElementById('loss').data[0].x.length")  # noqa: E731
        before = train_points()
        page.evaluate("window.ftviz.goTo(1, 0); window.notReloaded = true")

        live.record(4)
        live.analyse(2)
        live.write_suspicion()
        page.wait_for_function("window.ftviz.meta.T === 3", timeout=15_000)
        assert page.evaluate("window.notReloaded === true && window.ftviz.frame === 1 && !window.ftviz.isPlaying()")
        assert page.get_attribute("#frame-slider", "max") == "2"
        assert train_points() > before
        shown = page.evaluate("window.ftviz.pointsOf(2)")
        assert np.abs(np.stack([shown["x"], shown["y"]], 1) - live.frames[2]).max() <= grid_step(live.frames[:3])
        # suspicion.parquet appeared: the cards now list the most suspicious labels.
        suspicion = pd.read_parquet(live.run.file(INTERIM_SUSPICION)).sort_values("suspicion", ascending=False,
                                                                                   kind="stable")
        page.wait_for_function("document.querySelector('#outliers .outlier') !== null")
        assert int(page.get_attribute("#outliers .outlier >> nth=0", "data-id")) == int(suspicion["id"].iloc[0])

        page.evaluate("window.ftviz.play()")
        live.finish()
        page.wait_for_function("document.getElementById('live-badge').dataset.state === 'finished'", timeout=15_000)
        T = len(live.frames)
        page.wait_for_function(f"window.ftviz.meta.T === {T}")
        assert page.evaluate("window.notReloaded") is True
        # train_suspicion.parquet came with the end: the training panel appears in place.
        page.wait_for_function("window.ftviz.trainThumbnailsLoaded === true", timeout=15_000)
        assert not page.locator("#training-card").is_hidden()
        assert page.locator("#training .outlier").count() == len(page.evaluate("window.ftviz.meta.training.top"))
        assert page.get_attribute("#frame-slider", "max") == str(T - 1)
        assert errors == []
        browser.close()
