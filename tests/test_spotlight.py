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
    "id", "split", "image", "given_label", "true_label", "is_noisy", "predicted_label", "confidence",
    "outlier_score_first", "outlier_score_last", "label_quality_first", "label_quality_last",
    "label_issue_last", "first_issue_step",
    # from suspicion.parquet (the detect stage)
    "suspicion", "suspicion_rank", "is_label_issue", "issue_step", "aum", "label_quality_ensemble",
    "label_quality_knn", "datamap_confidence", "datamap_variability", "datamap_correctness", "forgetting_events", "outlier_rank",
    # the training rows' own (train_suspicion.parquet)
    "suggested_label", "suggested_probability", "times_seen", "fix",
    "frame_first", "frame_last", "embedding_last",
]
DETECT_COLUMNS = EXPECTED_COLUMNS[EXPECTED_COLUMNS.index("suspicion") : EXPECTED_COLUMNS.index("frame_first")]
PROBE_SIZE = TRAIN_SIZE = 200  # the tiny run (tests/conftest.py): every training row is kept


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
def full_table(run):
    """The table: the probe's rows, then the training set's."""
    return spotlight.build_table(run)


@pytest.fixture(scope="module")
def table(full_table):
    """The probe's rows (0..N-1, row i = sample id i)."""
    probe = full_table[full_table["split"] == "probe"]
    assert list(probe.index) == list(range(len(probe)))  # the probe rows come first
    return probe


@pytest.fixture(scope="module")
def train_rows(full_table):
    return full_table[full_table["split"] == "train"].reset_index(drop=True)


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
def test_table_has_one_row_per_probe_sample_with_the_scores_of_first_and_last_snapshot(run, table, full_table):
    steps = run.snapshot_steps()
    count = run.manifest()["probe_size"]
    assert len(table) == count == PROBE_SIZE and len(full_table) == PROBE_SIZE + TRAIN_SIZE
    assert list(full_table.columns) == EXPECTED_COLUMNS
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
    copy.file("train_suspicion.parquet").unlink()  # no detect stage: no training rows either
    table = spotlight.build_table(copy)
    assert list(table.columns) == [c for c in EXPECTED_COLUMNS if c not in DETECT_COLUMNS]
    assert len(table) == PROBE_SIZE and set(table["split"]) == {"probe"}
    layout = json.dumps(spotlight.load_layout(table.columns).model_dump(by_alias=True))
    assert "suspicion" not in layout and "Suspicion (detect stage)" not in layout
    assert "suggested_label" not in layout and '"split"' in layout
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
    assert "true_label" not in table and "is_noisy" not in table  # on training rows neither
    assert (table["split"] == "train").sum() == TRAIN_SIZE
    layout = json.dumps(spotlight.load_layout(table.columns).model_dump(by_alias=True))
    assert "true_label" not in layout and "is_noisy" not in layout
    assert "given_label" in layout


# ---- the training set's rows -----------------------------------------------------------------
def test_training_rows_are_train_suspicion_with_labels_and_images(run, table, train_rows):
    """One row per training sample (200 <= TRAIN_ROWS_MAX: all kept), in id order, with its
    suspicion, labels and train_images.npy thumbnail; the probe's columns empty there."""
    import pandas as pd
    from PIL import Image

    suspicion = pd.read_parquet(run.file("train_suspicion.parquet")).sort_values("id").reset_index(drop=True)
    samples = pd.read_parquet(run.file("train_samples.parquet")).sort_values("id").reset_index(drop=True)
    names = run.manifest()["dataset"]["class_names"]
    assert train_rows["id"].tolist() == suspicion["id"].tolist() == samples["id"].tolist()
    np.testing.assert_array_equal(train_rows["suspicion"], suspicion["suspicion"])
    np.testing.assert_array_equal(train_rows["suspicion_rank"], suspicion["suspicion_rank"])
    np.testing.assert_array_equal(train_rows["is_label_issue"].astype(bool), suspicion["is_label_issue"])
    np.testing.assert_allclose(train_rows["aum"], suspicion["aum"])
    # The outlier score from the features training recorded (NaN for a sample never trained on).
    np.testing.assert_array_equal(train_rows["outlier_score_last"].astype(float), suspicion["outlier_score"])
    assert train_rows["outlier_score_last"].notna().sum() == (suspicion["times_seen"] > 0).sum()
    assert train_rows["times_seen"].tolist() == suspicion["times_seen"].tolist()
    assert train_rows["given_label"].tolist() == [names[c] for c in samples["given_label"]]
    assert train_rows["true_label"].tolist() == [names[c] for c in samples["true_label"]]
    np.testing.assert_array_equal(train_rows["is_noisy"].astype(bool), samples["is_noisy"])
    assert train_rows["suggested_label"].tolist() == [names[c] if c >= 0 else np.nan for c in suspicion["suggested_label"]]
    np.testing.assert_array_equal(train_rows["suggested_probability"].astype(float), suspicion["suggested_probability"])
    # What a retrain does with each row, as the export's fix column (blank: missing).
    assert train_rows["fix"].tolist() == [value or np.nan for value in suspicion["fix"]]
    assert train_rows["fix"].notna().sum() >= train_rows["is_label_issue"].astype(bool).sum() > 0
    # The flipped training labels are what the detectors flag.
    flagged = train_rows["is_label_issue"].astype(bool).to_numpy()
    assert flagged[samples["is_noisy"].to_numpy()].mean() > flagged[~samples["is_noisy"].to_numpy()].mean()
    # Images: the thumbnails of train_images.npy, upscaled by whole pixels as the probe's.
    images = np.load(run.file("train_images.npy"))
    factor = -(-spotlight.IMAGE_MIN_SIDE // images.shape[1])
    for row in (0, 57, TRAIN_SIZE - 1):
        decoded = np.asarray(Image.open(io.BytesIO(train_rows["image"][row])))
        np.testing.assert_array_equal(decoded[::factor, ::factor], images[row])
    # The probe's own columns are missing values on training rows.
    assert train_rows["predicted_label"].isna().all() and train_rows["confidence"].isna().all()
    assert train_rows["label_issue_last"].isna().all() and train_rows["first_issue_step"].isna().all()
    assert all(value is None for column in ("frame_first", "frame_last") for value in train_rows[column])
    # The embedding column holds the features training recorded at each sample's last pass, so
    # Spotlight's similarity map places training rows among the probe's; none for a sample never seen.
    from ftviz.dynamics import last_features

    features = last_features(run, suspicion["id"].to_numpy(np.int64))
    seen = (suspicion["times_seen"] > 0).to_numpy()
    assert seen.any()
    np.testing.assert_array_equal(np.stack(train_rows["embedding_last"][seen]), features[seen])
    assert all(value is None for value in train_rows["embedding_last"][~seen])
    assert len(train_rows["embedding_last"][np.flatnonzero(seen)[0]]) == len(table["embedding_last"][0])
    # ... and the training set's own columns are missing on the probe's.
    assert table["suggested_label"].isna().all() and table["times_seen"].isna().all() and table["fix"].isna().all()
    assert table["suggested_probability"].isna().all()


def test_a_big_training_set_keeps_its_most_suspicious_rows(run, monkeypatch):
    import pandas as pd

    monkeypatch.setattr(spotlight, "TRAIN_ROWS_MAX", 50)
    table = spotlight.build_table(run)
    train = table[table["split"] == "train"]
    ranked = pd.read_parquet(run.file("train_suspicion.parquet")).sort_values(["suspicion", "id"], ascending=[False, True])
    assert train["id"].tolist() == sorted(ranked["id"].head(50).tolist())  # the top 50, in id order
    assert (table["split"] == "probe").sum() == PROBE_SIZE  # the probe is never cut


def test_training_rows_without_or_with_damaged_images(run, tmp_path):
    copy = copy_run(run, tmp_path)
    copy.file("train_images.npy").unlink()  # a run of the Trainer callback keeps no images
    table = spotlight.build_table(copy)
    train = table[table["split"] == "train"]
    assert len(train) == TRAIN_SIZE and all(image is None for image in train["image"])
    copy.file("train_images.npy").write_bytes(b"not an array")
    with pytest.raises(FtvizError, match=r"train_images.npy is damaged .*rerun training$"):
        spotlight.build_table(copy)


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


def test_shipped_layout_refers_only_to_table_columns_and_has_the_widgets(full_table):
    from renumics.spotlight.layout.nodes import Layout

    raw = json.loads(spotlight.LAYOUT_PATH.read_text())
    Layout.model_validate(raw)  # Spotlight's own schema accepts the file
    assert layout_columns(raw) <= set(full_table.columns)
    text = spotlight.LAYOUT_PATH.read_text()
    widgets = re.findall(r'"type": "(\w+)"', text)
    assert sorted(set(widgets)) == ["histogram", "inspector", "similaritymap", "table"]
    assert widgets.count("similaritymap") == 2
    assert {"frame_first", "frame_last", "outlier_score_last", "image", "suspicion", "suspicion_rank", "split",
            "suggested_label", "suggested_probability", "fix"} <= layout_columns(raw)


# ---- export --------------------------------------------------------------------------------
def test_export_writes_a_parquet_file_spotlight_reads_by_itself(run, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "export.parquet"
    assert ftviz_main(["spotlight", str(run.path), "--export", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    exported = pd.read_parquet(out)
    steps = run.snapshot_steps()
    first, last = scores_at(run, steps[0]), scores_at(run, steps[-1])
    assert len(exported) == PROBE_SIZE + TRAIN_SIZE and list(exported.columns) == EXPECTED_COLUMNS
    assert exported["split"].tolist() == ["probe"] * PROBE_SIZE + ["train"] * TRAIN_SIZE
    for sample_id in (3, 50, 199):
        row = exported.iloc[sample_id]
        assert row["id"] == sample_id
        assert row["outlier_score_first"] == first.loc[sample_id, "outlier_score"]
        assert row["outlier_score_last"] == last.loc[sample_id, "outlier_score"]
        assert row["label_quality_first"] == first.loc[sample_id, "label_quality"]
        assert row["label_quality_last"] == last.loc[sample_id, "label_quality"]
        assert row["confidence"] == last.loc[sample_id, "confidence"]
    frames = run.frames()
    padded = np.stack(exported["frame_last"][:PROBE_SIZE])
    np.testing.assert_array_equal(padded[:, :2], frames[-1])
    np.testing.assert_array_equal(padded[:, 2], 0)
    assert exported["frame_last"][PROBE_SIZE:].isna().all()  # training rows have no frame

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
    assert kinds["suspicion"] == kinds["aum"] == kinds["suggested_probability"] == "float"
    assert kinds["split"] == kinds["suggested_label"] == kinds["fix"] == "Category" and kinds["times_seen"] == "int"
    # Values too: a training row's image, its missing probe-only cells.
    converted = {name: store.get_converted_values(name, [0, PROBE_SIZE]) for name in
                 ("image", "frame_last", "label_issue_last", "confidence", "predicted_label")}
    assert all(value is not None for value in converted["image"])
    assert converted["frame_last"][1] is None and converted["label_issue_last"][1] is None
    assert converted["confidence"][1] is None or np.isnan(converted["confidence"][1])
    assert converted["predicted_label"][1] == -1


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
        rows = PROBE_SIZE + TRAIN_SIZE
        assert {len(column["values"]) for column in table["columns"]} == {rows}
        dtypes = {column["name"]: column["dtype"] for column in table["columns"]}
        assert dtypes["image"]["name"] == "Image"
        assert dtypes["frame_first"] == {"name": "Embedding", "length": 2}

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(url)
                # The status bar counts the rows the frontend loaded.
                expect(page.get_by_text(re.compile(rf"\b{len(EXPECTED_COLUMNS)} cols / {rows} rows\b"))).to_be_visible(timeout=120_000)
                # ftviz's layout, not Spotlight's default one.
                for title in ("Samples", "First frame (aligned 2-D)", "Last frame (aligned 2-D)"):
                    expect(page.get_by_text(title, exact=True)).to_be_visible(timeout=30_000)
                # Both similarity maps placed every probe sample from the 2-D frame embeddings
                # (the training rows have none: Spotlight leaves them out of the map).
                expect(page.get_by_text(f"{PROBE_SIZE} of {rows} rows", exact=True)).to_have_count(2, timeout=180_000)
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
