"""Open a run in Renumics Spotlight: one row per probe sample (and per suspicious training
sample), with a layout shipped in ftviz.

The table (:func:`build_table`) has one row per probe sample first, row i = sample id i,
then, in runs with ``train_suspicion.parquet`` (training dynamics and the detect stage), one
row per training sample in id order: all of them up to :data:`TRAIN_ROWS_MAX` (5,000), else
the 5,000 most suspicious (suspicion descending, then id). ``split`` tells them apart; the
columns a training sample has no value for (the probe's snapshots: predictions, per-snapshot
scores, frames and embedding) are missing values on its row, so Spotlight's similarity maps
place the probe rows alone.

=====================  ===================================================================
column                 meaning
=====================  ===================================================================
id                     sample id (row of ``probe_images.npy``; a training row: the training
                       sample id of ``train_samples.parquet``)
split                  "probe" or "train" (category)
image                  PNG bytes, upscaled (nearest neighbour) to at least 128 px; training
                       rows: their ``train_images.npy`` thumbnail, empty where the run kept
                       none (the Trainer callback)
given_label            label the model was trained on (category of class names)
true_label, is_noisy   label before noise injection, and whether it was flipped; only in
                       runs that injected label noise
predicted_label        argmax of the logits at the last snapshot (category)
confidence             softmax probability of ``predicted_label`` at the last snapshot
outlier_score_first    Cleanlab outlier score at the first / last snapshot (a training row:
outlier_score_last     the last, from its features at its last pass)
label_quality_first    Cleanlab label quality (self-confidence) at the first / last snapshot
label_quality_last
label_issue_last       Cleanlab flags the given label as an issue at the last snapshot
first_issue_step       first snapshot step at which the sample was flagged; empty if never
suspicion              the detect stage's recommended score (high = suspicious) and its rank
suspicion_rank         (1 = most suspicious); only when ``suspicion.parquet`` exists, as are
is_label_issue         the rows below: the final label-issue flag, the first step from which
issue_step             it stays flagged (empty if not flagged), and the history detectors
aum                    (see :mod:`ftviz.detectors`): area under the margin, Cleanlab quality
label_quality_ensemble of the snapshot-mean probabilities and of softmax + kNN label votes
label_quality_knn      (label_quality_knn), data-map confidence, variability
datamap_confidence     and correctness, forgetting events, and the rank of the last outlier
datamap_variability    score (1 = most atypical)
datamap_correctness
forgetting_events
outlier_rank
suggested_label        training rows: the class the model settled on (category), the
suggested_probability  probability the network gives it (mean over its learnt passes, with
times_seen             the neighbours' vote while it is weak), and the times the sample was
                       trained on; empty on probe rows (only in runs with training rows)
fix                    training rows: what a retrain does with the row, relabel | drop
                       (category; empty: nothing), as ``ftviz quality --export`` writes it
frame_first            aligned 2-D coordinates (``frames.npy``) of the first / last frame,
frame_last             as Spotlight embeddings (in an exported file: ``(x, y, 0)``, see
                       :func:`export_table`)
embedding_last         the probe embedding at the last snapshot (D values); a training row:
                       its features at its last pass in training (empty without them)
=====================  ===================================================================

Spotlight is imported only inside :func:`show`; its telemetry stays off unless the user
opted in (:func:`keep_telemetry_off`).
"""

from __future__ import annotations

import io
import math
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np

from ftviz.errors import FtvizError
from ftviz.rundir import RunDir, write_parquet

LAYOUT_PATH = Path(__file__).with_name("spotlight_layout.json")
# Probe images are often 16-32 px: shown as is, the browser blurs them into smudges.
IMAGE_MIN_SIDE = 128
FRAME_COLUMNS = ("frame_first", "frame_last")
EMBEDDING_COLUMN = "embedding_last"
# Training rows kept at most: the most suspicious of a bigger training set (CIFAR-10's 50,000
# would make the browser table ten times the probe's and hold few samples worth a look).
TRAIN_ROWS_MAX = 5_000
# Environment variables Spotlight's settings read (pydantic-settings, prefix "spotlight_",
# case-insensitive) to decide on usage analytics.
TELEMETRY_VARIABLES = ("SPOTLIGHT_OPT_IN", "SPOTLIGHT_OPT_OUT")


# ---- the table ---------------------------------------------------------------------------
def build_table(run: RunDir):
    """The Spotlight table of ``run``: one row per probe sample, then the training rows (see
    the module docstring).

    Raises :class:`~ftviz.errors.MissingStageError` naming the first missing stage
    (train, score, project) and the command that makes it.

    Returns
    -------
    pandas.DataFrame with N probe rows (0..N-1, row i = sample id i) and M training rows
    after them; ``frame_*`` cells are float32 arrays of shape (2,), ``embedding_last`` cells
    float32 arrays of shape (D,) (None on training rows).
    """
    import pandas as pd

    from ftviz.render.data import read_training_suspicion

    for stage in ("train", "score", "project"):
        run.require(stage)
    manifest = run.manifest()
    samples = run.samples().sort_values("id").reset_index(drop=True)
    count = len(samples)
    if not np.array_equal(samples["id"].to_numpy(), np.arange(count)):
        raise FtvizError(f"{run.path}: samples.parquet ids are not 0..{count - 1}; rerun training")
    steps = run.snapshot_steps()
    if not steps:
        raise FtvizError(f"{run.path} has no snapshots; rerun training")
    first, last = steps[0], steps[-1]

    scores = run.scores()
    at_first, at_last = (_scores_at(run, scores, step, count) for step in (first, last))
    frames = run.frames()
    if frames.shape != (len(steps), count, 2):
        raise FtvizError(
            f"{run.path}: frames.npy has shape {frames.shape}, expected ({len(steps)}, {count}, 2); "
            f"rerun `ftviz project {run.path}`"
        )
    embedding, _ = run.load_snapshot(last)
    if len(embedding) != count:
        raise FtvizError(f"{run.path}: snapshot {last} has {len(embedding)} rows, not {count}; rerun training")

    training = training_rows(read_training_suspicion(run))
    training_labels = ([training[c].to_numpy(np.int64) for c in ("given_label", "true_label", "suggested_label")
                        if c in training] if training is not None else [])
    class_names = _class_names(run, samples, np.concatenate([np.asarray(at_last["predicted_label"]).ravel(),
                                                             *training_labels]))

    def category(labels):
        return pd.Categorical.from_codes(np.asarray(labels, dtype=np.int64), categories=class_names)

    noise = _injected_noise(manifest, samples)
    columns = {
        "id": samples["id"].to_numpy(np.int64),
        "split": pd.Categorical(["probe"] * count, categories=SPLITS),
        "image": png_images(run.probe_images()),
        "given_label": category(samples["given_label"]),
    }
    if noise:
        columns["true_label"] = category(samples["true_label"])
        columns["is_noisy"] = samples["is_noisy"].to_numpy(bool)
    columns |= {
        "predicted_label": category(at_last["predicted_label"]),
        "confidence": at_last["confidence"].to_numpy(np.float64),
        "outlier_score_first": at_first["outlier_score"].to_numpy(np.float64),
        "outlier_score_last": at_last["outlier_score"].to_numpy(np.float64),
        "label_quality_first": at_first["label_quality"].to_numpy(np.float64),
        "label_quality_last": at_last["label_quality"].to_numpy(np.float64),
        "label_issue_last": at_last["is_label_issue"].to_numpy(bool),
        "first_issue_step": first_issue_steps(scores, count),
        **suspicion_columns(run, count),
        "frame_first": list(frames[0].astype(np.float32)),
        "frame_last": list(frames[-1].astype(np.float32)),
        EMBEDDING_COLUMN: list(embedding.astype(np.float32)),
    }
    table = pd.DataFrame(columns)
    if training is not None:
        table = _with_training_rows(table, _training_columns(run, training, category, noise=noise,
                                                             width=embedding.shape[1]))
    table.attrs["steps"] = {"first": int(first), "last": int(last)}
    return table


SPLITS = ("probe", "train")


def training_rows(table):
    """The training rows Spotlight shows, in id order: every row of ``table`` (from
    :func:`ftviz.render.data.read_training_suspicion`) up to :data:`TRAIN_ROWS_MAX`, else the
    most suspicious (:func:`ftviz.render.data.suspicion_order`). None when ``table`` is."""
    from ftviz.render.data import suspicion_order

    if table is None:
        return None
    if len(table) > TRAIN_ROWS_MAX:
        keep = np.sort(suspicion_order(table["suspicion"])[:TRAIN_ROWS_MAX])
        table = table.iloc[keep]
    return table.reset_index(drop=True)


def _training_columns(run: RunDir, training, category, *, noise: bool, width: int) -> dict:
    """The training rows' columns (M values each), named as the table's; ``width``: D of the
    probe's embedding column."""
    import pandas as pd

    from ftviz.dynamics import last_features, read_train_images

    count = len(training)
    images = read_train_images(run, mmap=True)  # checked against train_samples.parquet
    columns = {
        "id": training["id"].to_numpy(np.int64),
        "split": pd.Categorical(["train"] * count, categories=SPLITS),
        # No image kept (the Trainer callback's runs): the row stays, its image cell is empty.
        "image": (png_images(np.asarray(images[training["row"].to_numpy(np.int64)])) if images is not None
                  else [None] * count),
        "given_label": category(training["given_label"]),
    }
    if noise and "true_label" in training:
        columns["true_label"] = category(training["true_label"])
        columns["is_noisy"] = training["is_noisy"].to_numpy(bool)
    for source, name in SUSPICION_COLUMNS.items():
        if source in training:  # issue_step and outlier_rank: nullable Int64, kept so
            nullable = source in ("issue_step", "outlier_rank")
            columns[name] = training[source].array if nullable else training[source].to_numpy()
    if "outlier_score" in training:  # at the sample's last pass, from the recorded features (NaN: none)
        columns["outlier_score_last"] = training["outlier_score"].to_numpy(np.float64)
    if "suggested_label" in training:
        suggested = training["suggested_label"].to_numpy(np.int64)  # -1: never trained on
        columns["suggested_label"] = pd.Categorical.from_codes(np.where(suggested >= 0, suggested, -1),
                                                               categories=category([]).categories)
    if "suggested_probability" in training:  # runs detected since 2026-12-06
        columns["suggested_probability"] = training["suggested_probability"].to_numpy(np.float64)
    if "times_seen" in training:
        columns["times_seen"] = training["times_seen"].to_numpy(np.int64)
    if "fix" in training:  # what a retrain does with the row (the export's fix column); blank: nothing
        from ftviz.detectors import RETRAIN_FIXES

        fixes = training["fix"].fillna("").astype(str).to_numpy()
        columns["fix"] = pd.Categorical(np.where(fixes == "", None, fixes), categories=RETRAIN_FIXES)
    # The features training recorded at each sample's last pass (the vector the head read, as
    # the probe's embedding is): in the embedding column, Spotlight's similarity map places the
    # training rows among the probe's. Empty where a sample has none or the widths differ.
    features = last_features(run, training["id"].to_numpy(np.int64))
    if features is not None and features.shape[1] == width:
        complete = np.isfinite(features).all(axis=1)
        columns[EMBEDDING_COLUMN] = [row if ok else None for row, ok in zip(features.astype(np.float32), complete)]
    return columns


def _with_training_rows(table, training: dict):
    """``table`` (the probe rows) with the training rows appended: a column either side lacks
    holds missing values there, in a dtype Spotlight reads as the column's own (nullable
    boolean and Int64, categories kept, None for images and arrays)."""
    import pandas as pd

    count = len(next(iter(training.values())))
    names = list(table.columns)
    # Columns of the training rows alone (suggested_label, times_seen) go before the arrays.
    first_array = names.index(FRAME_COLUMNS[0]) if FRAME_COLUMNS[0] in names else len(names)
    names[first_array:first_array] = [name for name in training if name not in table]
    joined = {}
    for name in names:
        probe = table[name] if name in table else None
        train = pd.Series(training[name]) if name in training else None
        joined[name] = _joined(probe, train, len(table), count)
    return pd.DataFrame(joined)


def _joined(probe, train, probe_count: int, train_count: int):
    """One column: the probe rows' values, then the training rows'; ``None`` for a side that
    lacks the column (its rows get missing values)."""
    import pandas as pd

    like = probe if probe is not None else train
    sides = ((probe, probe_count), (train, train_count))
    if isinstance(like.dtype, pd.CategoricalDtype):
        codes = [side.cat.codes.to_numpy() if side is not None else np.full(size, -1) for side, size in sides]
        return pd.Categorical.from_codes(np.concatenate(codes), categories=like.cat.categories)
    if like.dtype.kind == "f":
        return np.concatenate([side.to_numpy(np.float64) if side is not None else np.full(size, np.nan)
                               for side, size in sides])
    if like.dtype.kind in "biu" or str(like.dtype) in ("boolean", "Int64"):
        plain = [side.to_numpy() for side, _ in sides if side is not None and isinstance(side.dtype, np.dtype)]
        if len(plain) == 2:
            return np.concatenate(plain)
        # A side without values: pandas' nullable types, which Spotlight reads as bool / int.
        nullable = "boolean" if like.dtype.kind == "b" or str(like.dtype) == "boolean" else "Int64"
        values = [value for side, size in sides
                  for value in (side.astype(object) if side is not None else [None] * size)]
        return pd.array([None if value is pd.NA else value for value in values], dtype=nullable)
    # Images, frames, embeddings: one object per row.
    return [value for side, size in sides for value in (list(side) if side is not None else [None] * size)]


# suspicion.parquet column -> Spotlight column (the data-map ones would clash with "confidence").
SUSPICION_COLUMNS = {
    "suspicion": "suspicion",
    "suspicion_rank": "suspicion_rank",
    "is_label_issue": "is_label_issue",
    "issue_step": "issue_step",
    "aum": "aum",
    "label_quality_ensemble": "label_quality_ensemble",
    "label_quality_knn": "label_quality_knn",
    "confidence": "datamap_confidence",
    "variability": "datamap_variability",
    "correctness": "datamap_correctness",
    "forgetting_events": "forgetting_events",
    "outlier_rank": "outlier_rank",
}

def suspicion_columns(run: RunDir, count: int) -> dict:
    """The detect stage's columns (:data:`SUSPICION_COLUMNS`), in id order; none without
    ``suspicion.parquet`` (read and checked by :meth:`ftviz.rundir.RunDir.suspicion`)."""
    table = run.suspicion(optional=True, count=count)
    if table is None:
        return {}
    # Detector columns a run from an earlier ftviz did not write are left out, not refused.
    return {name: table[source].to_numpy() if source != "issue_step" else table[source].array
            for source, name in SUSPICION_COLUMNS.items() if source in table}


def _scores_at(run: RunDir, scores, step: int, count: int):
    """scores.parquet at ``step``, one row per sample in id order (the run's per-frame reader)."""
    import pandas as pd

    per_frame = run.frame_scores(steps=[step], count=count, scores=scores, complete=True)
    return pd.DataFrame({name: values[0] for name, values in per_frame.items() if name != "present"})


def first_issue_steps(scores, count: int):
    """First step at which each sample was flagged as a label issue (nullable Int64, length N)."""
    import pandas as pd

    flagged = scores.loc[scores["is_label_issue"].astype(bool), ["id", "step"]]
    first = flagged.groupby("id")["step"].min()
    return pd.array(first.reindex(range(count)).to_numpy(), dtype="Int64")


def _class_names(run: RunDir, samples, predicted) -> list[str]:
    """Category names indexed by label (:meth:`ftviz.rundir.RunDir.class_names`, covering the
    ``predicted`` labels too); unique, since Spotlight keys categories by name."""
    names = run.class_names(int(np.max(np.asarray(predicted), initial=-1)) + 1, samples=samples)
    if len(set(names)) != len(names):
        names = [f"{i}: {name}" for i, name in enumerate(names)]
    return names


def _injected_noise(manifest: dict, samples) -> bool:
    if "true_label" not in samples or "is_noisy" not in samples:
        return False
    return float(manifest.get("noise_rate") or 0) > 0 or bool(samples["is_noisy"].any())


def png_images(images: np.ndarray, *, min_side: int = IMAGE_MIN_SIDE) -> list[bytes]:
    """Encode (N, H, W, 3) or (N, H, W) uint8 images as PNG bytes.

    Images smaller than ``min_side`` are enlarged by a whole factor with nearest-neighbour
    repetition, so pixels stay sharp where the browser would otherwise blur them.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise FtvizError(
            f"probe_images.npy must be uint8 (N, H, W, 3); got {images.dtype} {images.shape}: rerun training"
        )
    factor = max(1, math.ceil(min_side / max(images.shape[1:3])))
    encoded = []
    for image in images:
        if factor > 1:
            image = image.repeat(factor, axis=0).repeat(factor, axis=1)
        buffer = io.BytesIO()
        # compress_level 1: a 10k-image probe encodes in seconds, files stay small.
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
        encoded.append(buffer.getvalue())
    return encoded


def spotlight_dtypes(table) -> dict:
    """Column -> Spotlight dtype for the columns Spotlight cannot guess right by itself.

    2-value arrays would be read as ``Window`` and PNG bytes as bytes without these.
    """
    from renumics.spotlight import dtypes

    mapping = {"image": dtypes.image_dtype}
    for column in (*FRAME_COLUMNS, EMBEDDING_COLUMN):
        if column in table:
            present = next((value for value in table[column] if value is not None), None)
            mapping[column] = dtypes.EmbeddingDType(None if present is None else len(present))
    return mapping


# ---- export ------------------------------------------------------------------------------
def export_table(run: RunDir, path: Path | str) -> Path:
    """Write the table to a parquet file that ``spotlight PATH`` opens without any options.

    Spotlight reads a parquet file through pandas and guesses each column's type from its
    values: PNG bytes become images and float lists of length D embeddings, except that a
    list of 2 values is read as a ``Window`` (and 4 as a bounding box). The 2-D frame columns
    are therefore written as ``(x, y, 0)``; the zero changes no distance, so a similarity map
    (PCA) of the column shows the same frame.
    """
    path = Path(path)
    if path.suffix.lower() != ".parquet":
        raise FtvizError(f"--export writes parquet: give a file name ending in .parquet (got {path.name})")
    table = build_table(run)
    for column in FRAME_COLUMNS:  # training rows have no frame: their cells stay empty
        table[column] = [None if xy is None else np.append(xy, np.float32(0)) for xy in table[column]]
    write_parquet(path, table)
    return path


# ---- layout ------------------------------------------------------------------------------
def load_layout(columns=None):
    """ftviz's Spotlight layout (``spotlight_layout.json``), read from the package, no network.

    Table columns and inspector lenses that name a column absent from ``columns`` (e.g.
    ``true_label`` in a run without injected noise) are dropped.
    """
    import json

    from renumics.spotlight.layout.nodes import Layout

    data = json.loads(LAYOUT_PATH.read_text())
    if columns is not None:
        _drop_missing_columns(data, set(columns))
    return Layout.model_validate(data)


def _drop_missing_columns(node, present: set) -> None:
    if isinstance(node, list):
        for child in node:
            _drop_missing_columns(child, present)
        return
    if not isinstance(node, dict):
        return
    # Widgets that plot an absent column (the suspicion histogram of a run without the detect
    # stage) go, and so do the tabs they leave empty.
    children = node.get("children")
    if isinstance(children, list):
        _drop_missing_columns(children, present)
        node["children"] = [child for child in children if _keeps(child, present)]
    config = node.get("config") or {}
    if config.get("stackByColumnKey") and config["stackByColumnKey"] not in present:
        config["stackByColumnKey"] = None
    if isinstance(config.get("visibleColumns"), list):
        config["visibleColumns"] = [c for c in config["visibleColumns"] if c in present]
    if isinstance(config.get("views"), list):
        config["views"] = [v for v in config["views"] if set(v.get("columns", [])) <= present]
    if isinstance(config.get("sorting"), list):
        config["sorting"] = [s for s in config["sorting"] if s and s[0] in present]


def _keeps(node, present: set) -> bool:
    if not isinstance(node, dict):
        return True
    if node.get("kind") == "tab":
        return bool(node.get("children"))
    key = (node.get("config") or {}).get("columnKey") if node.get("kind") == "widget" else None
    return not key or key in present


# ---- serving -----------------------------------------------------------------------------
def keep_telemetry_off() -> None:
    """Turn Spotlight's usage analytics off unless the user set an opt-in/opt-out variable.

    Spotlight reads ``SPOTLIGHT_OPT_IN`` / ``SPOTLIGHT_OPT_OUT`` when it is imported, and
    its server process inherits this environment, so call this before importing it.
    """
    chosen = {name.upper() for name in os.environ} & set(TELEMETRY_VARIABLES)
    if not chosen:
        os.environ["SPOTLIGHT_OPT_OUT"] = "true"


def check_port_free(host: str, port: int) -> None:
    """Raise FtvizError if ``port`` on ``host`` is taken (bound the way Spotlight binds it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise FtvizError(
                f"port {port} on {host} is taken ({error.strerror}); pass another --port, "
                "or leave --port out to pick a free one"
            ) from None


def show(
    run: RunDir,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    open_browser: bool = True,
    no_ssl: bool = False,
):
    """Start a Spotlight server on ``run``'s table with ftviz's layout; returns the Viewer.

    The server runs in a child process until ``viewer.close()`` (or interpreter exit).
    ``port=None`` picks a free port.
    """
    table = build_table(run)
    if port is not None:
        check_port_free(host, port)
    keep_telemetry_off()
    try:
        from renumics import spotlight
        from renumics.spotlight.server import MissingTLSCertificate, MissingTLSKey
    except ModuleNotFoundError:
        raise FtvizError(
            "Renumics Spotlight is not installed: pip install 'ftviz[spotlight]'"
        ) from None
    try:
        return spotlight.show(
            table,
            host=host,
            port="auto" if port is None else port,
            layout=load_layout(table.columns),
            dtype=spotlight_dtypes(table),
            no_browser=not open_browser,
            allow_filebrowsing=False,
            wait=False,
            no_ssl=no_ssl,
        )
    except (MissingTLSCertificate, MissingTLSKey):
        raise FtvizError(
            f"Spotlight serves {host} only over TLS; use --host 127.0.0.1 (and an SSH tunnel), "
            "or pass --no-ssl to serve it unencrypted"
        ) from None
    except OSError as error:
        raise FtvizError(f"cannot serve on {host}:{port} ({error}); try another --port or --host") from None


# ---- stopping every process Spotlight started ---------------------------------------------
# Spotlight's server (a uvicorn child process) computes similarity maps in a pool of worker
# processes. When the server is killed after its 3 s grace period, which is common on a busy
# machine, the workers outlive it until their current job ends. The CLI ends them itself.


def server_processes(viewer) -> set[tuple[int, str]]:
    """Spotlight's server process and its descendants, as (pid, start time) pairs.

    Reads the server's pid from the viewer's private ``_server.process`` (Spotlight has no
    public accessor); an empty set if that changes or on systems without Linux's /proc.
    """
    process = getattr(getattr(viewer, "_server", None), "process", None)
    pid = getattr(process, "pid", None)
    started = _start_time(pid) if pid else None
    if started is None:
        return set()
    return {(pid, started)} | process_tree(pid)


def process_tree(pid: int) -> set[tuple[int, str]]:
    """Descendants of ``pid`` as (pid, start time) pairs, from /proc.

    The start time tells a process from a later one that reuses its pid.
    """
    found: set[tuple[int, str]] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            started = _start_time(child)
            if started is not None:
                found |= {(child, started)} | process_tree(child)
    return found


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def end_processes(processes: set[tuple[int, str]], *, grace_s: float = 5.0) -> None:
    """SIGTERM the processes still running, then SIGKILL those alive after ``grace_s``."""

    def running():
        return {(pid, started) for pid, started in processes if _start_time(pid) == started}

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _ in running():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not running():
            return
