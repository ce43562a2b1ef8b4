"""The run directory: the contract between stages and with other analyses.

Layout (``FORMAT_VERSION`` 1)::

    runs/<name>/
      run.json              manifest: config, versions, dataset/model ids, seed, snapshot
                            steps, probe size, noise rate, and the status of every stage
      metrics.parquet       step, epoch, split ("train"|"eval"; ingested runs add "probe"),
                            loss, accuracy, true_accuracy, learning_rate
      samples.parquet       id, given_label, true_label, is_noisy, class_name, true_class_name
      probe_images.npy      (N, H, W, 3) uint8, row i is the sample with id i
      snapshots/step-XXXXXXX.npz   embedding (N, D) float16, logits (N, C) float16
      scores.parquet        step, id, outlier_score, label_quality, is_label_issue,
                            predicted_label, confidence
      frames.npy            (T, N, 2) float32 aligned 2-D coordinates, T = len(snapshot steps)
      projection.parquet    step, explained_variance, disparity_to_previous, knn_overlap
      animation.html        self-contained page
      weights/latest.pt     training state for resume (while training); weights/final.pt at the end
      generated/step-XXXXXXX.png   diffusion runs only: DDIM samples at each snapshot
      train_samples.parquet the training set: id, given_label, true_label, is_noisy, class_name,
                            true_class_name (runs that record training dynamics)
      train_images.npy      (N, h, w, 3) uint8 thumbnails (no side over 32 px) of the training
                            images, row i = row i of train_samples.parquet in id order; written
                            by ftviz's own loop beside train_samples.parquet (ftviz/dynamics.py)
      dynamics/step-XXXXXXX.npz    training dynamics: the rows recorded up to step XXXXXXX,
                            ids (M,) int64, step (M,) int64 (updates before that forward pass),
                            logits (M, C) float16, features (M, D) float16 (the embedding the
                            head read, unless train.dynamics_features = false), in training
                            order (ftviz/dynamics.py)
      train_suspicion.parquet      the detectors on the training set, from the dynamics:
                            suspicion.parquet's columns plus suggested_label,
                            suggested_probability, times_seen, fix (what a retrain does
                            with the row: relabel | drop | "")
      train_detectors.parquet      as detectors.parquet, for the training set (step = pass index)

Every write goes to a temporary file in the same folder and is renamed into place, so a file
that exists is complete. ``run.json`` marks a stage done only after its files are written.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ftviz import __version__
from ftviz.errors import FtvizError, MissingStageError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Stage:
    """One row of the stage table: what a stage reads and writes, and how it is run.

    Parameters
    ----------
    name : the stage's name in run.json and its ``ftviz <name> RUN`` command.
    inputs, outputs : run-directory entries it reads and writes ("snapshots/" is a folder; an
        input ending in "?" is read when present). The stages that write its required inputs
        must be done before it runs; redoing a stage makes stale exactly the stages whose
        inputs include its outputs.
    config : the ExperimentConfig section handed to the runner (``config.<section>``).
    command : how a user makes the stage's files, for error messages ({run} is filled in).
    runner : "module:function", called as ``function(run, section, progress=bool, **options)``;
        None for training, which ``ftviz run`` / ``ftviz embed`` / the recorder do.
    help : one line for ``ftviz --help``.
    options : extra command-line flags of ``ftviz <name>``: (flags, argparse keywords) pairs;
        each ``dest`` is passed to the runner as a keyword.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    config: str | None
    command: str
    runner: str | None
    help: str
    options: tuple[tuple[tuple[str, ...], dict], ...] = ()

    @property
    def all_inputs(self) -> set[str]:
        return {name.rstrip("?") for name in self.inputs}

    @property
    def required_inputs(self) -> set[str]:
        return {name for name in self.inputs if not name.endswith("?")}


# The pipeline, in order. A new stage is its module plus a row here.
STAGES: tuple[Stage, ...] = (
    Stage("train", (), ("snapshots/", "metrics.parquet", "samples.parquet", "probe_images.npy", "generated/",
                        "dynamics/", "train_samples.parquet", "train_images.npy"),
          "train", "ftviz run EXPERIMENT.toml (or ftviz embed --checkpoints DIR)", None,
          "train with snapshots of the probe set"),
    Stage("score", ("snapshots/", "samples.parquet"), ("scores.parquet",),
          "score", "ftviz score {run}", "ftviz.quality:score_run",
          "Cleanlab outlier and label-issue scores for every snapshot"),
    Stage("detect", ("snapshots/", "samples.parquet", "scores.parquet", "dynamics/?", "train_samples.parquet?"),
          ("suspicion.parquet", "detectors.parquet", "train_suspicion.parquet", "train_detectors.parquet"),
          "detect", "ftviz detect {run}", "ftviz.detectors:detect_run",
          "label issues from the whole snapshot history (suspicion.parquet; detectors.parquet under injected noise)"),
    Stage("project", ("snapshots/",), ("frames.npy", "projection.parquet"),
          "project", "ftviz project {run}", "ftviz.project:project_run",
          "2-D projection of every snapshot, aligned with Procrustes"),
    Stage("render", ("frames.npy", "projection.parquet", "scores.parquet", "suspicion.parquet?",
                     "detectors.parquet?", "metrics.parquet", "samples.parquet", "probe_images.npy", "generated/?"),
          ("animation.html",), "render", "ftviz render {run}", "ftviz.render:render_run",
          "the animated HTML (or a GIF/MP4/PNG for slides and papers)",
          options=((("--format",), {"dest": "output_format", "choices": ("html", "gif", "mp4", "png"),
                                    "default": "html", "help": "html (default), a video for slides, or a PNG panel"}),
                   (("--out",), {"help": "output file (default: inside the run)"}),
                   (("--steps",), {"help": "PNG panel: the training steps to show, e.g. 0,100,last (default: first,last)"}))),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def stage_named(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise FtvizError(f"unknown stage {name!r}; the stages are {', '.join(STAGE_NAMES)}")


def stages_reading(name: str) -> list[str]:
    """Every stage that reads, directly or through other stages, what ``name`` writes."""
    changed, found = set(stage_named(name).outputs), []
    for stage in STAGES[STAGE_NAMES.index(name) + 1 :]:
        if changed & stage.all_inputs:
            found.append(stage.name)
            changed |= set(stage.outputs)
    return found


def one_line(error: BaseException) -> str:
    """An exception as one line for run.json: the message alone for ftviz's own errors."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, FtvizError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# Test hook, for tests/test_kill.py only: with FTVIZ_TEST_KILL_AT set, the process sends itself
# a signal (SIGKILL, or the one FTVIZ_TEST_KILL_SIGNAL names, e.g. SIGINT) at that point, so a
# test stops a run exactly there. Points: "stage:NAME" (stage NAME just marked running),
# "write:FILE" (inside an atomic write of FILE: the temporary file is complete, not renamed
# yet), "wrote:FILE" (FILE just renamed into place), "step:N" (training, between optimizer steps
# N and N+1); FILE is a base name, the first write fires. The follower takes its own point from
# FTVIZ_TEST_FOLLOWER_KILL_AT (ftviz/follow.py), so a test stops one process, not both.
KILL_AT_ENV = "FTVIZ_TEST_KILL_AT"


def _test_kill_point(point: str) -> None:
    if os.environ.get(KILL_AT_ENV) == point:
        import signal

        os.kill(os.getpid(), getattr(signal, os.environ.get("FTVIZ_TEST_KILL_SIGNAL", "SIGKILL")))


@contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _test_kill_point(f"write:{final.name}")
        os.replace(tmp, final)
        _test_kill_point(f"wrote:{final.name}")
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path | str, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_parquet(path: Path | str, frame) -> None:
    """Write a pandas DataFrame atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_npy(path: Path | str, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def snapshot_name(step: int, suffix: str = ".npz") -> str:
    """The file name of ``step``'s file in a per-step folder: ``step-XXXXXXX<suffix>``
    (snapshots, analysis frames, dynamics, generated samples, saved weights)."""
    return f"step-{int(step):07d}{suffix}"


# The follower's suspicion table while training runs (ftviz.detectors.interim_suspicion): the
# live page shows it until the detect stage has written suspicion.parquet.
INTERIM_SUSPICION = "analysis/suspicion.interim.parquet"


class RunDir:
    """Read and write one run directory.

    Parameters
    ----------
    path : path of the run folder (created by :meth:`create`, read by everything else).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)

    # ---- paths -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / "run.json"

    @property
    def snapshots_dir(self) -> Path:
        return self.path / "snapshots"

    @property
    def weights_dir(self) -> Path:
        return self.path / "weights"

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- manifest ----------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def create(self, manifest: dict) -> None:
        """Start a new run: write ``run.json`` with every stage pending."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = {
            "format_version": FORMAT_VERSION,
            "ftviz_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **manifest,
            "stages": {name: {"status": "pending"} for name in STAGE_NAMES},
        }
        data.setdefault("snapshot_steps", [])
        write_json(self.manifest_path, data)

    def manifest(self) -> dict:
        """The parsed ``run.json``; errors if absent, corrupt or from another format version."""
        if not self.path.is_dir():
            raise FtvizError(f"no run directory at {self.path}: give the path of a run (runs/<name>)")
        if not self.manifest_path.is_file():
            raise FtvizError(
                f"{self.path} has no run.json: it is not an ftviz run (make one with ftviz run)"
            )
        try:
            data = json.loads(self.manifest_path.read_text())
            damage = None if isinstance(data, dict) else "not a JSON object"
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            damage = "empty" if not self.manifest_path.stat().st_size else str(error).splitlines()[0]
        if damage:
            # ftviz writes run.json atomically, so this is damage from outside (disk, editor,
            # copy): the config and stage record are gone and cannot be rebuilt from the files.
            raise FtvizError(
                f"{self.manifest_path} is damaged ({damage}): the run's config and stage record are lost; "
                f"delete {self.path} yourself (--force replaces only runs it can read) and run the command "
                "that made it again"
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise FtvizError(
                f"{self.path} was written in run format {version!r} by ftviz "
                f"{data.get('ftviz_version', '?')}; this ftviz {__version__} reads format "
                f"{FORMAT_VERSION}: rerun it with this version or use the matching ftviz"
            )
        return data

    def update_manifest(self, **changes: Any) -> dict:
        data = self.manifest()
        data.update(changes)
        write_json(self.manifest_path, data)
        return data

    def mark_stage(self, stage: str, status: str = "done", **info: Any) -> None:
        """Record a stage's status; call with "done" only after its files are complete.

        "running" records this process (pid and host), so a run killed with SIGKILL reads as
        interrupted rather than running forever. "running" and "done" make stale the stages
        that read this stage's outputs (see :func:`stages_reading`).
        """
        data = self.manifest()
        now = time.time()
        entry = {"status": status, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
        previous = data.setdefault("stages", {}).get(stage, {})
        if status == "running":
            entry.update(started=now, pid=os.getpid(), host=socket.gethostname())
        elif "started" in previous:
            entry["seconds"] = round(now - previous["started"], 3)
        data["stages"][stage] = entry
        if status in ("done", "running") and stage in STAGE_NAMES:
            for later in stages_reading(stage):
                if data["stages"].get(later, {}).get("status") == "done":
                    data["stages"][later] = {"status": "stale", "because": f"{stage} was redone"}
        write_json(self.manifest_path, data)

    @contextmanager
    def stage(self, name: str, **info: Any) -> Iterator[dict]:
        """Run a stage's body with its status recorded in run.json.

        Records "running" on entry, then "done" with the seconds and whatever the body put in
        the yielded dict, "failed" with the one-line error if the body raised, or "interrupted"
        on Ctrl-C; the exception is re-raised either way.

        >>> with run.stage("score", k=10) as record:   # doctest: +SKIP
        ...     record["frames"] = write_scores()
        """
        stage_named(name)
        record = dict(info)
        self.mark_stage(name, "running", **info)
        try:
            _test_kill_point(f"stage:{name}")
            yield record
        except KeyboardInterrupt:
            self._mark_quietly(name, "interrupted", record)
            raise
        except BaseException as error:
            self._mark_quietly(name, "failed", {**record, "error": one_line(error)})
            raise
        self.mark_stage(name, "done", **record)

    def _mark_quietly(self, name: str, status: str, record: dict) -> None:
        # The stage's own error is the one to report; a manifest that cannot be written now
        # (disk full, run.json damaged by the same fault) must not replace it.
        try:
            self.mark_stage(name, status, **record)
        except Exception:
            pass

    def stage_entry(self, stage: str) -> dict:
        """The stage's run.json entry; a "running" stage whose process is gone reads "interrupted"."""
        entry = dict(self.manifest().get("stages", {}).get(stage, {"status": "pending"}))
        if entry.get("status") == "running" and not _process_alive(entry.get("pid"), entry.get("host")):
            entry["status"] = "interrupted"
        return entry

    def stage_status(self, stage: str) -> str:
        return self.stage_entry(stage).get("status", "pending")

    def require(self, stage: str) -> None:
        """Raise :class:`MissingStageError` unless ``stage`` is done."""
        entry = self.stage_entry(stage)
        status = entry.get("status", "pending")
        if status != "done":
            command = stage_named(stage).command.format(run=self.path)
            why = f" ({entry['error']})" if status == "failed" and entry.get("error") else ""
            raise MissingStageError(
                f"{self.path}: stage '{stage}' is {status}{why}; run `{command}` first"
            )

    # ---- snapshots ---------------------------------------------------------------------
    def write_snapshot(self, step: int, embedding: np.ndarray, logits: np.ndarray) -> Path:
        """Store the probe's embedding (N, D) and logits (N, C) at ``step`` as float16."""
        if embedding.ndim != 2 or logits.ndim != 2 or len(embedding) != len(logits):
            raise ValueError(
                f"embedding (N, D) and logits (N, C) must share N; got {embedding.shape} and {logits.shape}"
            )
        path = self.snapshots_dir / snapshot_name(step)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    embedding=np.asarray(embedding, dtype=np.float16),
                    logits=np.asarray(logits, dtype=np.float16),
                )
        return path

    def write_probe(self, images: np.ndarray, given_labels: np.ndarray, true_labels: np.ndarray,
                    class_names) -> None:
        """samples.parquet and probe_images.npy: the fixed probe set, row i = sample id i.

        images : (N, H, W, 3) uint8; given_labels, true_labels : (N,) int; class_names : C names.
        """
        import pandas as pd

        names = np.asarray([str(name) for name in class_names], dtype=object)
        given, true = np.asarray(given_labels), np.asarray(true_labels)
        write_npy(self.file("probe_images.npy"), np.asarray(images))
        write_parquet(self.file("samples.parquet"), pd.DataFrame({
            "id": np.arange(len(given), dtype=np.int64),
            "given_label": given.astype(np.int64),
            "true_label": true.astype(np.int64),
            "is_noisy": given != true,
            "class_name": names[given],
            "true_class_name": names[true],
        }))

    def snapshot_steps(self) -> list[int]:
        """Steps of the complete snapshots, ascending (from the manifest, checked on disk)."""
        steps = [int(s) for s in self.manifest().get("snapshot_steps", [])]
        missing = [s for s in steps if not (self.snapshots_dir / snapshot_name(s)).is_file()]
        if missing:
            raise FtvizError(
                f"{self.path}: snapshots for steps {missing[:5]} are missing; rerun training"
            )
        return steps

    def load_snapshot(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (embedding (N, D) float16, logits (N, C) float16) at ``step``."""
        return self._read_snapshot(step, "embedding", "logits")

    def load_logits(self, step: int) -> np.ndarray:
        """The logits (N, C) float16 at ``step``, without reading the embedding."""
        return self._read_snapshot(step, "logits")[0]

    def _read_snapshot(self, step: int, *keys: str) -> tuple[np.ndarray, ...]:
        path = self.snapshots_dir / snapshot_name(step)
        try:
            with np.load(path) as data:  # an npz reads only the arrays asked for
                return tuple(data[key] for key in keys)
        except FileNotFoundError:
            raise FtvizError(f"{path} is missing; rerun training for this run") from None
        except Exception as error:  # zip / pickle / key errors from a damaged file
            raise FtvizError(f"{path} is corrupt ({type(error).__name__}); rerun training") from None

    # ---- tables ------------------------------------------------------------------------
    def read_parquet(self, name: str, stage: str | None = None):
        import pandas as pd

        path = self.path / name
        if not path.is_file():
            if stage:
                self.require(stage)
            raise FtvizError(f"{path} is missing; rerun the stage that writes it")
        try:
            return pd.read_parquet(path)
        except Exception as error:
            raise FtvizError(f"{path} is corrupt ({type(error).__name__}); rerun its stage") from None

    def samples(self):
        return self.read_parquet("samples.parquet", "train")

    def metrics(self):
        return self.read_parquet("metrics.parquet", "train")

    def scores(self):
        self.require("score")
        return self.read_parquet("scores.parquet", "score")

    def projection(self):
        self.require("project")
        return self.read_parquet("projection.parquet", "project")

    def frames(self) -> np.ndarray:
        """Aligned 2-D coordinates (T, N, 2) float32."""
        self.require("project")
        return np.load(self.path / "frames.npy")

    def probe_images(self) -> np.ndarray:
        """Probe images (N, H, W, 3) uint8, row i = sample id i."""
        path = self.path / "probe_images.npy"
        if not path.is_file():
            self.require("train")
            raise FtvizError(f"{path} is missing; rerun training")
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:  # truncated, garbage, or pickled objects
            raise FtvizError(f"{path} is damaged ({type(error).__name__}: {error}); rerun training") from None

    # ---- typed readers ---------------------------------------------------------------------
    # The one reader of each derived table: every stage, page and command reads these files
    # here, with the same checks and the same error naming the stage to rerun.

    # scores.parquet column -> (dtype, value where a (step, id) row is missing).
    FRAME_SCORE_COLUMNS = {
        "outlier_score": (np.float64, np.nan),
        "label_quality": (np.float64, np.nan),
        "is_label_issue": (bool, False),
        "predicted_label": (np.int64, -1),
        "confidence": (np.float64, np.nan),
    }
    # suspicion.parquet columns every detect stage has written; the detector columns beside
    # them (aum, data map, ...) may be missing from a run of an earlier ftviz.
    SUSPICION_CORE = ("id", "suspicion", "suspicion_rank", "is_label_issue", "issue_step")
    DETECTOR_COLUMNS = ("detector", "step", "auroc", "average_precision", "precision", "recall", "f1", "n_flagged")

    def frame_scores(self, columns=None, *, steps=None, count: int | None = None, scores=None,
                     complete: bool = False) -> dict[str, np.ndarray]:
        """Per-frame arrays of ``scores.parquet`` (long: one row per step and sample).

        Parameters
        ----------
        columns : the columns to read (default: those of :attr:`FRAME_SCORE_COLUMNS` the file
            has); a column the file lacks comes back filled with its missing value.
        steps : (T,) snapshot steps, one row of the output each; default the snapshot steps.
        count : N; default the number of rows of ``samples.parquet``.
        scores : the table, if already read (default: :meth:`scores`).
        complete : raise :class:`FtvizError` (naming ``ftviz score``) unless every (step, id)
            pair has a row; otherwise missing rows keep the missing value (NaN, False, -1).

        Returns
        -------
        {column: (T, N) array}: float64 scores, bool flags, int64 labels; plus "present",
        (T, N) bool, where a row was found.
        """
        if scores is None:
            scores = self.scores()
        steps = np.asarray(self.snapshot_steps() if steps is None else steps, dtype=np.int64)
        count = len(self.samples()) if count is None else int(count)
        if columns is None:
            columns = [c for c in self.FRAME_SCORE_COLUMNS if c in scores]
        shape = (len(steps), count)
        out = {}
        for column in columns:
            dtype, missing = self.FRAME_SCORE_COLUMNS.get(column, (np.float64, np.nan))
            out[column] = np.full(shape, missing, dtype=dtype)
        present = np.zeros(shape, dtype=bool)
        if len(steps) and len(scores):
            step_values = scores["step"].to_numpy().astype(np.int64)
            id_values = scores["id"].to_numpy().astype(np.int64)
            order = np.argsort(steps)
            position = np.clip(np.searchsorted(steps[order], step_values), 0, len(steps) - 1)
            known = (steps[order][position] == step_values) & (id_values >= 0) & (id_values < count)
            rows, cols = order[position[known]], id_values[known]
            present[rows, cols] = True
            for column in columns:
                if column in scores:
                    values = scores[column].to_numpy()[known]
                    if out[column].dtype.kind in "iub" and values.dtype.kind == "f":
                        values = np.where(np.isnan(values), self.FRAME_SCORE_COLUMNS.get(column, (None, -1))[1], values)
                    out[column][rows, cols] = values
        if complete and not present.all():
            frame, sample = np.argwhere(~present)[0]
            raise FtvizError(
                f"{self.path}: scores.parquet has no row for step {int(steps[frame])}, id {int(sample)} "
                f"({int((~present).sum())} missing of {present.size}); rerun `ftviz score {self.path}`"
            )
        out["present"] = present
        return out

    def suspicion(self, *, optional: bool = False, count: int | None = None, name: str = "suspicion.parquet"):
        """``suspicion.parquet`` in id order, one row per probe sample (``name``: another file of
        its columns, the follower's interim table).

        Parameters
        ----------
        optional : True: None when the file is absent (the detect stage is optional for pages
            and Spotlight); False: a MissingStageError naming ``ftviz detect`` unless the stage
            is done (a stale file was computed from scores that have been replaced).
        count : N, the probe size (default: the rows of ``samples.parquet``).

        Returns
        -------
        pandas.DataFrame with at least :attr:`SUSPICION_CORE`; detector columns an earlier ftviz
        did not write are absent, not refused. None only when ``optional``.
        """
        if optional and not self.file(name).is_file():
            return None
        if not optional:
            self.require("detect")
        table = self.read_parquet(name, "detect")
        count = len(self.samples()) if count is None else int(count)
        rerun = f"rerun `ftviz detect {self.path}`"
        missing = [c for c in self.SUSPICION_CORE if c not in table]
        if missing:
            raise FtvizError(f"{self.path}/{name} lacks the columns {', '.join(missing)}; {rerun}")
        table = table.sort_values("id").reset_index(drop=True)
        if not np.array_equal(table["id"].to_numpy(), np.arange(count)):
            raise FtvizError(f"{self.path}/{name} has {len(table)} rows, not one per probe sample "
                             f"(ids 0..{count - 1}); {rerun}")
        return table

    def detectors(self):
        """``detectors.parquet`` (one row per detector against the injected noise), or None when
        the run has none (no injected noise, or no detect stage)."""
        if not self.file("detectors.parquet").is_file():
            return None
        table = self.read_parquet("detectors.parquet", "detect")
        missing = [c for c in self.DETECTOR_COLUMNS if c not in table]
        if missing:
            raise FtvizError(f"{self.path}/detectors.parquet lacks the columns {', '.join(missing)}; "
                             f"rerun `ftviz detect {self.path}`")
        return table

    def class_names(self, count: int = 0, *, samples=None) -> list[str]:
        """Class names indexed by label, for every label of ``samples.parquet`` and at least ``count``.

        ``run.json``'s ``dataset.class_names`` first; a label beyond them takes the name
        ``samples.parquet`` gives it (``class_name``, ``true_class_name``), else its number.
        ``samples`` : the table, if already read.
        """
        names = [str(name) for name in self.manifest().get("dataset", {}).get("class_names") or []]
        samples = self.samples() if samples is None else samples
        known: dict[int, str] = {}
        needed = count
        for label, name in (("given_label", "class_name"), ("true_label", "true_class_name")):
            if label in samples:
                labels = samples[label].to_numpy(np.int64)
                needed = max(needed, int(labels.max()) + 1 if len(labels) else 0)
                if name in samples:
                    known.update(zip(labels.tolist(), samples[name].astype(str)))
        return names + [known.get(label, str(label)) for label in range(len(names), needed)]


def _process_alive(pid: Any, host: Any) -> bool:
    """Whether the process that marked a stage running still exists (unknowable on another host)."""
    if not isinstance(pid, int) or host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
