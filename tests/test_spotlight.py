"""ftviz.spotlight: the table, its parquet export, the layout, errors, and a real Spotlight
server checked in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ftviz import spotlight
from ftviz.cli import main as ftviz_main
from ftviz.errors import FtvizError, MissingStageError
from ftviz.rundir import RunDir

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
STARTUP_TIMEOUT_S = 240  # two cold imports of Spotlight on two busy cores
EXPECTED_COLUMNS = [
    "id", "image", "given_label", "true_label", "is_noisy", "predicted_label", "confidence",
    "outlier_score_first", "outlier_score_last", "label_quality_first", "label_quality_last",
    "label_issue_last", "first_issue_step",
    # from suspicion.parquet (the detect stage)
    "suspicion", "suspicion_rank", "is_label_issue", "issue_step", "aum", "label_quality_ensemble",
    "label_quality_knn", "datamap_confidence", "datamap_variability", "datamap_correctness", "forgetting_events", "outlier_rank",
    "frame_first", "frame_last", "embedding_last",
]
DETECT_COLUMNS = EXPECTED_COLUMNS[EXPECTED_COLUMNS.index("suspicion") : EXPECTED_COLUMNS.index("frame_first")]


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """The tiny run with the detect stage done (a copy: the session's run stays as it is)."""
    from ftviz.config import DetectConfig
    from ftviz.detectors import detect_run

    copy = RunDir(tmp_path_factory.mktemp("spotlight") / "run")
    shutil.copytree(tiny_run.path, copy.path)
    if not copy.file("suspicion.parquet").is_file():
        detect_run(copy, DetectConfig(), progress=False)
    return copy


@pytest.fixture(scope="module")
def table(run):
    return spotlight.build_table(run)


def scores_at(run, step):
    scores = run.scores()
    return scores[scores["step"] == step].set_index("id")


def copy_run(run, tmp_path) -> RunDir:
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.path, copy.path)
    return copy


def set_stage(run: RunDir, stage: str, status: str) -> None:
    """Edit run.json directly: mark_stage would also invalidate later stages."""
    manifest = run.manifest()
    manifest["stages"][stage] = {"status": status}
    run.manifest_path.write_text(json.dumps(manifest))


# ---- table ---------------------------------------------------------------------------------
def test_table_has_one_row_per_probe_sample_with_the_scores_of_first_and_last_snapshot(run, table):
    steps = run.snapshot_steps()
    count = run.manifest()["probe_size"]
    assert len(table) == count == 200
    assert list(table.columns) == EXPECTED_COLUMNS
    assert table.attrs["steps"] == {"first": steps[0], "last": steps[-1]}
    first, last = scores_at(run, steps[0]), scores_at(run, steps[-1])
    samples = run.samples().set_index("id")
    names = run.manifest()["dataset"]["class_names"]
    for sample_id in (0, 7, 123, 199):
        row = table.iloc[sample_id]
        assert row["id"] == sample_id
        assert row["given_label"] == names[samples.loc[sample_id, "given_label"]]
        assert row["true_label"] == names[samples.loc[sample_id, "true_label"]]
        assert row["is_noisy"] == samples.loc[sample_id, "is_noisy"]
        assert row["predicted_label"] == names[last.loc[sample_id, "predicted_label"]]
        assert row["confidence"] == pytest.approx(last.loc[sample_id, "confidence"])
        assert row["outlier_score_first"] == pytest.approx(first.loc[sample_id, "outlier_score"])
        assert row["outlier_score_last"] == pytest.approx(last.loc[sample_id, "outlier_score"])
        assert row["label_quality_first"] == pytest.approx(first.loc[sample_id, "label_quality"])
        assert row["label_quality_last"] == pytest.approx(last.loc[sample_id, "label_quality"])
        assert row["label_issue_last"] == last.loc[sample_id, "is_label_issue"]
    # The tiny run flips 10% of labels: some rows must say so.
    assert table["is_noisy"].sum() == run.manifest()["noisy_probe_samples"] > 0


def test_first_issue_step_is_the_earliest_flagged_step_or_empty(run, table):
    import pandas as pd

    scores = run.scores()
    steps = run.snapshot_steps()
    flags = scores.pivot(index="id", columns="step", values="is_label_issue").loc[:, steps].to_numpy()
    expected = [steps[int(np.argmax(row))] if row.any() else None for row in flags]
    got = [None if pd.isna(v) else int(v) for v in table["first_issue_step"]]
    assert got == expected
    assert str(table["first_issue_step"].dtype) == "Int64"


def test_detect_columns_are_the_suspicion_file_in_id_order(run, table):
    import pandas as pd

    suspicion = pd.read_parquet(run.file("suspicion.parquet")).set_index("id")
    for column, source in spotlight.SUSPICION_COLUMNS.items():
        expected = suspicion[column].reindex(range(len(table)))
        if column == "issue_step":
            assert str(table[source].dtype) == "Int64"
            assert table[source].isna().tolist() == expected.isna().tolist()
            assert table[source].dropna().tolist() == expected.dropna().tolist()
        else:
            np.testing.assert_array_equal(table[source].to_numpy(), expected.to_numpy())
    assert table.loc[table["suspicion_rank"] == 1, "suspicion"].iloc[0] == table["suspicion"].max()


def test_a_run_without_the_detect_stage_has_no_detect_columns_or_suspicion_histogram(run, tmp_path):
    copy = copy_run(run, tmp_path)
    copy.file("suspicion.parquet").unlink()
    table = spotlight.build_table(copy)
    assert list(table.columns) == [c for c in EXPECTED_COLUMNS if c not in DETECT_COLUMNS]
    layout = json.dumps(spotlight.load_layout(table.columns).model_dump(by_alias=True))
    assert "suspicion" not in layout and "Suspicion (detect stage)" not in layout
    assert "Outlier score, last snapshot" in layout  # the other histogram stays


def test_frames_and_embedding_columns_hold_the_run_arrays(run, table):
    frames = run.frames()
    embedding, _ = run.load_snapshot(run.snapshot_steps()[-1])
    np.testing.assert_array_equal(np.stack(table["frame_first"]), frames[0])
    np.testing.assert_array_equal(np.stack(table["frame_last"]), frames[-1])
    np.testing.assert_array_equal(np.stack(table["embedding_last"]), embedding.astype(np.float32))
    assert spotlight.spotlight_dtypes(table)["frame_first"].length == 2
    assert spotlight.spotlight_dtypes(table)["embedding_last"].length == embedding.shape[1]


def test_images_are_png_upscaled_by_whole_pixels(run, table):
    from PIL import Image

    images = run.probe_images()
    factor = -(-spotlight.IMAGE_MIN_SIDE // images.shape[1])  # 16 px -> 8x
    for sample_id in (0, 199):
        decoded = np.asarray(Image.open(io.BytesIO(table["image"][sample_id])))
        assert decoded.shape == (images.shape[1] * factor, images.shape[2] * factor, 3)
        np.testing.assert_array_equal(decoded[::factor, ::factor], images[sample_id])
    assert spotlight.png_images(np.zeros((2, 200, 100, 3), np.uint8))[0].startswith(b"\x89PNG")
    with pytest.raises(FtvizError, match="uint8"):
        spotlight.png_images(np.zeros((2, 8, 8, 3), np.float32))


def test_runs_without_noise_leave_out_true_label(run, tmp_path):
    copy = copy_run(run, tmp_path)
    samples = copy.samples()
    samples["true_label"] = samples["given_label"]
    samples["is_noisy"] = False
    samples.to_parquet(copy.file("samples.parquet"), index=False)
    copy.update_manifest(noise_rate=0.0)
    table = spotlight.build_table(copy)
    assert "true_label" not in table and "is_noisy" not in table
    layout = json.dumps(spotlight.load_layout(table.columns).model_dump(by_alias=True))
    assert "true_label" not in layout and "is_noisy" not in layout
    assert "given_label" in layout


# ---- layout --------------------------------------------------------------------------------
def layout_columns(node) -> set[str]:
    """Every column name a layout (as JSON) refers to."""
    found: set[str] = set()
    if isinstance(node, list):
        for child in node:
            found |= layout_columns(child)
    elif isinstance(node, dict):
        config = node.get("config") or {}
        for key in ("columnKey", "stackByColumnKey", "colorBy", "sizeBy", "xAxisColumn", "yAxisColumn"):
            if config.get(key):
                found.add(config[key])
        found |= set(config.get("placeBy") or [])
        if isinstance(config.get("visibleColumns"), list):  # the inspector's is a count
            found |= set(config["visibleColumns"])
        found |= {s[0] for s in config.get("sorting") or []}
        for view in config.get("views") or []:
            found |= set(view["columns"])
        found |= layout_columns(node.get("children", []))
    return found


def test_shipped_layout_refers_only_to_table_columns_and_has_the_widgets(table):
    from renumics.spotlight.layout.nodes import Layout

    raw = json.loads(spotlight.LAYOUT_PATH.read_text())
    Layout.model_validate(raw)  # Spotlight's own schema accepts the file
    assert layout_columns(raw) <= set(table.columns)
    text = spotlight.LAYOUT_PATH.read_text()
    widgets = re.findall(r'"type": "(\w+)"', text)
    assert sorted(set(widgets)) == ["histogram", "inspector", "similaritymap", "table"]
    assert widgets.count("similaritymap") == 2
    assert {"frame_first", "frame_last", "outlier_score_last", "image", "suspicion", "suspicion_rank"} \
        <= layout_columns(raw)


# ---- export --------------------------------------------------------------------------------
def test_export_writes_a_parquet_file_spotlight_reads_by_itself(run, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "export.parquet"
    assert ftviz_main(["spotlight", str(run.path), "--export", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    exported = pd.read_parquet(out)
    steps = run.snapshot_steps()
    first, last = scores_at(run, steps[0]), scores_at(run, steps[-1])
    assert len(exported) == 200 and list(exported.columns) == EXPECTED_COLUMNS
    for sample_id in (3, 50, 199):
        row = exported.iloc[sample_id]
        assert row["id"] == sample_id
        assert row["outlier_score_first"] == first.loc[sample_id, "outlier_score"]
        assert row["outlier_score_last"] == last.loc[sample_id, "outlier_score"]
        assert row["label_quality_first"] == first.loc[sample_id, "label_quality"]
        assert row["label_quality_last"] == last.loc[sample_id, "label_quality"]
        assert row["confidence"] == last.loc[sample_id, "confidence"]
    frames = run.frames()
    padded = np.stack(exported["frame_last"])
    np.testing.assert_array_equal(padded[:, :2], frames[-1])
    np.testing.assert_array_equal(padded[:, 2], 0)

    # The types Spotlight infers when it opens the file on its own (`spotlight FILE`):
    # the same data source and store its server uses, with no dtype hints.
    from renumics.spotlight.data_store import DataStore
    from renumics.spotlight_plugins.core.pandas_data_source import PandasDataSource

    store = DataStore(PandasDataSource(out), {})
    kinds = {name: dtype.name for name, dtype in store.dtypes.items()}
    assert kinds["image"] == "Image"
    assert kinds["given_label"] == kinds["predicted_label"] == "Category"
    assert kinds["frame_first"] == kinds["frame_last"] == kinds["embedding_last"] == "Embedding"
    assert store.dtypes["embedding_last"].length == run.load_snapshot(steps[-1])[0].shape[1]
    assert kinds["first_issue_step"] == "int" and kinds["label_issue_last"] == "bool"
    assert kinds["issue_step"] == kinds["suspicion_rank"] == "int" and kinds["is_label_issue"] == "bool"
    assert kinds["suspicion"] == kinds["aum"] == "float"


def test_export_refuses_other_formats(run, tmp_path):
    with pytest.raises(FtvizError, match=r"\.parquet"):
        spotlight.export_table(run, tmp_path / "table.csv")


# ---- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("stage, command", [
    ("train", "ftviz run"),
    ("score", "ftviz score"),
    ("project", "ftviz project"),
])
def test_missing_stage_names_the_stage_and_the_command(run, tmp_path, capsys, stage, command):
    copy = copy_run(run, tmp_path)
    set_stage(copy, stage, "pending")
    with pytest.raises(MissingStageError, match=rf"stage '{stage}' is pending; run `{command}"):
        spotlight.build_table(copy)
    assert ftviz_main(["spotlight", str(copy.path), "--no-browser"]) == 2
    assert f"stage '{stage}'" in capsys.readouterr().err


def test_a_taken_port_is_named(run, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert ftviz_main(["spotlight", str(run.path), "--port", str(port), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is taken" in err and "--port" in err


def test_a_non_loopback_host_without_tls_is_refused_with_a_way_out(run, capsys):
    assert ftviz_main(["spotlight", str(run.path), "--host", "0.0.0.0", "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "TLS" in err and "--no-ssl" in err and "--host 127.0.0.1" in err


def test_telemetry_respects_a_user_choice(monkeypatch):
    monkeypatch.delenv("SPOTLIGHT_OPT_OUT", raising=False)
    monkeypatch.setenv("SPOTLIGHT_OPT_IN", "true")
    spotlight.keep_telemetry_off()
    assert "SPOTLIGHT_OPT_OUT" not in os.environ
    monkeypatch.delenv("SPOTLIGHT_OPT_IN")
    spotlight.keep_telemetry_off()
    assert os.environ["SPOTLIGHT_OPT_OUT"] == "true"


@pytest.mark.slow
def test_spotlight_reads_the_telemetry_opt_out_ftviz_sets():
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SPOTLIGHT_")}
    code = (
        "from ftviz.spotlight import keep_telemetry_off; keep_telemetry_off()\n"
        "from renumics.spotlight.settings import settings\n"
        "print(settings.opt_out, settings.opt_in)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


# ---- a real server in a real browser ---------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Child processes of ``pid``, recursively (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found |= {child} | descendants(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_is_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_for(predicate, timeout_s: float, what: str, process=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited ({process.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt install chromium)")
def test_cli_serves_the_run_to_a_browser_and_stops_cleanly(run, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SPOTLIGHT_")}
    # Spotlight keeps per-user settings in its config dir: keep them in the test's folder.
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    log = tmp_path / "server.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "ftviz.cli", "spotlight", str(run.path), "--port", str(port), "--no-browser"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )
    spawned: set[int] = set()
    try:
        wait_for(lambda: "Spotlight serving" in log.read_text(), STARTUP_TIMEOUT_S, "the server", server)
        spawned = descendants(server.pid)
        assert spawned, "Spotlight's server runs in a child process"

        # Spotlight's own API: every column has one value per probe sample.
        table = wait_for(lambda: get_json(url + "api/table/"), 60, "the table API", server)
        assert {column["name"] for column in table["columns"]} == set(EXPECTED_COLUMNS)
        assert {len(column["values"]) for column in table["columns"]} == {200}
        dtypes = {column["name"]: column["dtype"] for column in table["columns"]}
        assert dtypes["image"]["name"] == "Image"
        assert dtypes["frame_first"] == {"name": "Embedding", "length": 2}

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(url)
                # The status bar counts the rows the frontend loaded.
                expect(page.get_by_text(re.compile(rf"\b{len(EXPECTED_COLUMNS)} cols / 200 rows\b"))).to_be_visible(timeout=120_000)
                # ftviz's layout, not Spotlight's default one.
                for title in ("Probe samples", "First frame (aligned 2-D)", "Last frame (aligned 2-D)"):
                    expect(page.get_by_text(title, exact=True)).to_be_visible(timeout=30_000)
                # Both similarity maps placed every sample from the 2-D frame embeddings.
                expect(page.get_by_text("200 of 200 rows", exact=True)).to_have_count(2, timeout=180_000)
            finally:
                browser.close()

        # The similarity maps started Spotlight's worker processes by now: record them too.
        spawned |= descendants(server.pid)
        assert len(spawned) > 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        assert "Spotlight stopped" in log.read_text()
        # ftviz has ended them all before exiting; the short wait only lets init reap them.
        wait_for(lambda: not any(alive(pid) for pid in spawned), 10, "Spotlight's processes to end")
        assert port_is_closed(port)
    finally:
        if server.poll() is None:
            spawned |= descendants(server.pid)
            server.kill()
            server.wait(timeout=30)
        for pid in spawned:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
