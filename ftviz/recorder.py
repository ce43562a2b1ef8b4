"""The one writer of snapshots: ftviz's own loop, ``ftviz embed`` and the Trainer callback use it.

A :class:`Recorder` owns a run directory for a fixed probe set given as plain arrays. At each
``snapshot(model, step)`` the probe goes through the live model on the model's device, with
the model's own preprocessing, and its embeddings and logits are written to ``snapshots/``,
with a probe-metrics row in ``metrics.parquet`` and the step in ``run.json``. ``log`` adds loss
curve rows; ``finish`` marks training done and runs the stages after it (score, detect,
project, render: whatever the stage table holds).

>>> recorder = Recorder("runs/my-run", probe_images=images, probe_labels=labels,
...                     class_names=names)                           # doctest: +SKIP
>>> recorder.create(model)                                           # doctest: +SKIP
>>> for step in ...: recorder.snapshot(model, step)                  # doctest: +SKIP
>>> recorder.finish()                                                # doctest: +SKIP

Under several processes (torchrun, Accelerate, a multi-process Trainer) every rank calls
``snapshot`` at the same steps: each embeds its block of the probe, the blocks are gathered,
and rank 0 alone writes. The write order (snapshot file, metrics, then ``run.json``) means
a step listed in ``run.json`` has its file and its metrics row, whatever kills the process.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ftviz import distributed
from ftviz.errors import FtvizError
from ftviz.framecache import forget_frame
from ftviz.rundir import RunDir, write_parquet

METRIC_COLUMNS = ["step", "epoch", "split", "loss", "accuracy", "true_accuracy", "learning_rate"]


def probe_metrics(logits: np.ndarray, given: np.ndarray, true: np.ndarray) -> dict:
    """Cross-entropy against the given labels and accuracy against given and true labels.

    Parameters
    ----------
    logits : (N, C), any float dtype (computed in float64).
    given, true : (N,) int labels.
    """
    from ftviz.numerics import log_softmax

    logits = np.asarray(logits, dtype=np.float64)
    log_probs = log_softmax(logits)
    predicted = logits.argmax(1)
    return {
        "loss": float(-log_probs[np.arange(len(given)), given].mean()),
        "accuracy": float((predicted == given).mean()),
        "true_accuracy": float((predicted == true).mean()),
    }


class Recorder:
    """Snapshots of a fixed probe set into one run directory.

    Parameters
    ----------
    run : the run directory (``RunDir`` or a path).
    probe_images : (N, H, W, 3) uint8, the probe set; row i is sample id i.
    probe_labels : (N,) int, the labels the model is trained on.
    class_names : C names, index = label.
    probe_true_labels : (N,) int where known to differ from ``probe_labels`` (injected noise);
        defaults to ``probe_labels``.
    config : the :class:`ftviz.config.ExperimentConfig` recorded in ``run.json`` and used by
        :meth:`finish`; default: the defaults, named after the folder.
    probe_split : the ``split`` of the probe-metrics rows: "eval" in ftviz's loop (its only
        evaluation), "probe" where the training has its own eval set (Trainer, ingestion).
    batch_size : probe images per forward pass.
    precision : "auto" | "fp32" | "bf16" for the probe forward (see ``ftviz.embed``).
    """

    def __init__(
        self,
        run,
        *,
        probe_images,
        probe_labels,
        class_names,
        probe_true_labels=None,
        config=None,
        probe_split: str = "probe",
        batch_size: int = 256,
        precision: str = "auto",
    ):
        self.run = run if isinstance(run, RunDir) else RunDir(Path(run).expanduser())
        self.probe_images = np.asarray(probe_images)
        self.probe_labels = np.asarray(probe_labels)
        self.probe_true_labels = self.probe_labels if probe_true_labels is None else np.asarray(probe_true_labels)
        self.class_names = [str(name) for name in class_names]
        _check_probe(self.probe_images, self.probe_labels, self.probe_true_labels, self.class_names)
        self.config = config if config is not None else _default_config(self.run.path)
        self.probe_split = probe_split
        self.batch_size = int(batch_size)
        self.precision = precision
        self.snapshot_steps: list[int] = []
        self.rows: list[dict] = []
        self._device_images = None  # the probe as a uint8 tensor on the model's device
        self._follower = None  # the analysis process started by open() (ftviz/follow.py)

    @property
    def is_main(self) -> bool:
        return distributed.is_main()

    # ---- the run directory -------------------------------------------------------------
    def open(self, model, *, hf_model=None, force: bool = False, fresh: bool = False,
             force_hint: str = "pass force=True to replace it", keep_out=(), **manifest_extra) -> bool:
        """Open the run folder by the one rule of :func:`ftviz.runs.open_run`; returns whether
        an unfinished run is resumed (then call :meth:`restore`). Rank 0 writes.

        A new run gets ``run.json`` (config, versions, probe), samples and probe images.
        ``model`` is the :class:`~ftviz.models.base.ProbeModel` (for its sizes), ``hf_model``
        the module whose parameters are counted when it wraps one; ``fresh``: training starts
        from step 0, so an unfinished run of the same config is replaced rather than resumed.
        """
        if not self.is_main:
            return False
        from ftviz.runs import Probe, new_run_manifest, open_run

        probe = Probe(self.probe_images, self.probe_labels, self.probe_true_labels, self.class_names)
        _, resuming = open_run(
            self.run.path, config=self.config, probe=probe, force=force, fresh=fresh, keep_out=keep_out,
            force_hint=force_hint,
            manifest=lambda: new_run_manifest(self.config, probe, model, hf_model=hf_model, **manifest_extra),
        )
        if not resuming:
            self.snapshot_steps, self.rows = [], []
        if self.run.stage_status("train") != "done":
            from ftviz.follow import start_follower

            device = next(model.parameters()).device
            self._follower = start_follower(self.run, device=str(device))
        return resuming

    def create(self, model, *, hf_model=None, force: bool = False, **manifest_extra) -> None:
        """Start a new run (an unfinished one of the same config is replaced; a finished one,
        or another config's, only with ``force``). See :meth:`open`."""
        self.open(model, hf_model=hf_model, force=force, fresh=True, **manifest_extra)

    def restore(self, step: int | float = math.inf, *, rows: list[dict] | None = None,
                logged: list[dict] | None = None) -> list[int]:
        """Pick up a run written before, up to ``step``: its snapshot steps and metrics rows.

        ``rows`` replaces every metrics row (ftviz's loop keeps them in its resume state);
        otherwise the probe rows of the kept snapshots come from ``metrics.parquet`` (recomputed
        from the stored logits where missing) and the other rows are ``logged``, or the file's
        rows up to ``step`` when ``logged`` is None. Returns the kept snapshot steps.
        """
        manifest = self.run.manifest()
        self.snapshot_steps = sorted(int(s) for s in manifest.get("snapshot_steps", []) if s <= step)
        if rows is not None:
            self.rows = [dict(row) for row in rows]
            return self.snapshot_steps
        on_disk = []
        if self.run.file("metrics.parquet").is_file():
            on_disk = self.run.read_parquet("metrics.parquet").to_dict("records")
        probe_rows = {int(r["step"]): r for r in on_disk if r["split"] == self.probe_split and r["step"] in self.snapshot_steps}
        for missing in set(self.snapshot_steps) - set(probe_rows):
            _, logits = self.run.load_snapshot(missing)
            probe_rows[missing] = self._probe_row(missing, logits, {})
        others = logged if logged is not None else [r for r in on_disk if r["split"] != self.probe_split and r["step"] <= step]
        self.rows = [dict(r) for r in others] + [probe_rows[s] for s in sorted(probe_rows)]
        return self.snapshot_steps

    # ---- snapshots and the loss curve --------------------------------------------------
    def embed(self, model) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (N, D) and logits (N, C), float16, of the whole probe on every rank.

        ``model`` is a :class:`~ftviz.models.base.ProbeModel` on its device; under several
        processes each rank embeds its block of the probe and the blocks are gathered.
        """
        import torch

        from ftviz.embed import probe_forward, resolve_precision

        device = next(model.parameters()).device
        if self._device_images is None or self._device_images.device != device:
            self._device_images = torch.from_numpy(self.probe_images).to(device)
        n = len(self.probe_images)
        start, stop, _ = distributed.shard_bounds(n)
        dtype = resolve_precision(self.precision, device, inference=True)
        if stop > start:
            from ftviz.follow import probe_pass_threads

            with probe_pass_threads(self.run, self.snapshot_steps):  # the follower's core, while it waits
                embedding, logits = probe_forward(model, self._device_images[start:stop], batch_size=self.batch_size,
                                                  dtype=dtype)
        else:  # more ranks than probe rows: this rank only takes part in the gather
            embedding = np.zeros((0, model.embedding_dim), np.float16)
            logits = np.zeros((0, model.num_classes), np.float16)
        if distributed.rank_and_world()[1] == 1:
            return embedding, logits
        gathered = [distributed.gather_rows(torch.from_numpy(part).to(device), n) for part in (embedding, logits)]
        return gathered[0].cpu().numpy(), gathered[1].cpu().numpy()

    def snapshot(self, model, step: int, **row) -> tuple[np.ndarray, np.ndarray]:
        """Probe ``model`` at ``step``: write the snapshot, its metrics row and the step.

        ``row`` adds to the probe-metrics row (``epoch``, ``learning_rate``). Every rank must
        call it (the probe is sharded); rank 0 writes. Returns (embedding, logits).
        """
        step = int(step)
        embedding, logits = self.embed(model)
        if not np.isfinite(embedding).all() or not np.isfinite(logits).all():
            raise FtvizError(
                f"the probe embeddings at step {step} are not finite (training diverged or the weights "
                "are damaged): lower the learning rate"
            )
        if self.is_main:
            self.run.write_snapshot(step, embedding, logits)
            forget_frame(self.run, step)  # analysis made from an earlier file of this step is void
            self.rows = [r for r in self.rows if not (r["split"] == self.probe_split and r["step"] == step)]
            self.rows.append(self._probe_row(step, logits, row))
            self.write_metrics()
        self.snapshot_steps = sorted({*self.snapshot_steps, step})  # on every rank: it decides what is left
        if self.is_main:
            self.run.update_manifest(snapshot_steps=self.snapshot_steps)
        return embedding, logits

    def _probe_row(self, step: int, logits: np.ndarray, extra: dict) -> dict:
        nan = float("nan")
        return {"step": step, "epoch": float(extra.pop("epoch", nan)), "split": self.probe_split,
                **probe_metrics(logits, self.probe_labels, self.probe_true_labels),
                "learning_rate": float(extra.pop("learning_rate", nan)), **extra}

    def log(self, step: int, *, split: str = "train", **metrics) -> None:
        """Add one row to the metrics (loss, accuracy, learning_rate, epoch, ...); written at
        the next snapshot or :meth:`write_metrics`."""
        nan = float("nan")
        row = {"step": int(step), "epoch": nan, "split": split, "loss": nan, "accuracy": nan,
               "true_accuracy": nan, "learning_rate": nan}
        row.update({key: (float(value) if isinstance(value, (int, float, np.number)) else value)
                    for key, value in metrics.items()})
        self.rows.append(row)

    # ---- training dynamics (ftviz/dynamics.py) ------------------------------------------
    @property
    def dynamics(self):
        """The buffer of training-batch logits (:class:`ftviz.dynamics.DynamicsLog`), made on first use."""
        if getattr(self, "_dynamics", None) is None:
            from ftviz.dynamics import DynamicsLog

            self._dynamics = DynamicsLog(self.run)
        return self._dynamics

    def record_batch(self, step: int, ids, logits, *, features=None, order=None) -> None:
        """Keep one training batch's logits (B, C), and features (B, D) when given, for sample
        ids (B,), computed after ``step`` updates; written by :meth:`flush_dynamics`. Every
        rank records its own rows."""
        self.dynamics.record(step, ids, logits, features=features, order=order)

    def flush_dynamics(self, step: int, *, gather: bool = True) -> None:
        """Write the recorded rows up to ``step`` (every rank calls it when ``gather``; rank 0 writes)."""
        self.dynamics.flush(step, gather=gather)

    def restore_dynamics(self, step: int) -> None:
        """Resume from ``step``: rows recorded past it are removed (they are trained again)."""
        self.dynamics.restore(step)

    def set_logged(self, rows: list[dict]) -> None:
        """Replace every non-probe row (the loss curve) with ``rows``; the probe rows stay."""
        self.rows = [dict(r) for r in rows] + [r for r in self.rows if r["split"] == self.probe_split]

    def annotate_probe_row(self, step: int, **values) -> None:
        """Set fields (e.g. ``learning_rate``) of the probe row at ``step``, if there is one."""
        for row in self.rows:
            if row["split"] == self.probe_split and row["step"] == int(step):
                row.update(values)

    def write_metrics(self) -> None:
        """``metrics.parquet`` from every row so far, by step (rows of one step keep their order)."""
        if not self.is_main:
            return
        import pandas as pd

        table = pd.DataFrame(self.rows)
        for column in METRIC_COLUMNS:
            if column not in table:
                table[column] = np.nan if column != "split" else ""
        extra = [c for c in table.columns if c not in METRIC_COLUMNS]
        table = table[METRIC_COLUMNS + extra]
        if len(table):
            table = table.sort_values("step", kind="stable", ignore_index=True)
        write_parquet(self.run.file("metrics.parquet"), table)

    # ---- the end -----------------------------------------------------------------------
    def finish(self, *, progress: bool = True, log=print, later_stages: bool = True, **train_info):
        """Mark training done (with ``train_info``) and run every later stage (unless
        ``later_stages`` is False); rank 0 only. Returns the run directory.
        """
        if not self.is_main:
            return self.run
        self.write_metrics()
        if self.run.stage_status("train") != "done":
            final = next((r for r in reversed(self.rows) if r["split"] == self.probe_split), {})
            self.run.mark_stage("train", "done", snapshots=len(self.snapshot_steps),
                                final_true_accuracy=final.get("true_accuracy"), **train_info)
        if later_stages:  # the follower finishes the frames left; the stages assemble them
            from ftviz.follow import finish_after_training

            follower, self._follower = self._follower, None
            finish_after_training(self.run, self.config, follower, progress=progress, log=log)
        else:
            self.wait_for_analysis()
        return self.run

    def wait_for_analysis(self) -> None:
        """After training is marked done: wait until the follower has analysed every frame."""
        from ftviz.follow import wait_for_follower

        wait_for_follower(self._follower)
        self._follower = None

    def stop_following(self) -> None:
        """End the follower now (training stopped before its end); its frames stay for the rerun."""
        from ftviz.follow import stop_follower

        stop_follower(self._follower)
        self._follower = None


def _check_probe(images: np.ndarray, labels: np.ndarray, true: np.ndarray, class_names: list[str]) -> None:
    """One-line errors for probe arrays the recorder cannot store."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise FtvizError(
            f"probe_images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}; "
            "convert with np.asarray(images, dtype=np.uint8) (channels last, RGB)"
        )
    for name, values in (("probe_labels", labels), ("probe_true_labels", true)):
        if values.shape != (len(images),) or not np.issubdtype(values.dtype, np.integer):
            raise FtvizError(f"{name} must be {len(images)} integer labels (one per probe image), got {values.dtype} {values.shape}")
        if len(values) and (values.min() < 0 or values.max() >= len(class_names)):
            raise FtvizError(
                f"{name} run from {values.min()} to {values.max()} but there are {len(class_names)} class_names"
            )
    if len(images) < 2:
        raise FtvizError(f"the probe set needs at least 2 images, got {len(images)}")


def _default_config(path: Path):
    """Defaults named after the run folder, without injected noise (the labels are the user's)."""
    from ftviz.config import ExperimentConfig

    config = ExperimentConfig(name=path.name, out_dir=str(path.parent))
    config.data.dataset = "arrays"
    config.data.noise_rate = 0.0
    return config
