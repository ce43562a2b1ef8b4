"""The one rule that opens a run directory, for every route that writes one.

``ftviz run``, ``ftviz embed``, :class:`ftviz.recorder.Recorder` and ``FtvizCallback`` all call
:func:`open_run`, which decides in one place whether a run folder is new, resumed, refused or
replaced, and creates it (``run.json`` and the probe files) when it is new:

==========================================  =============================================
the folder                                  outcome
==========================================  =============================================
absent or empty                             new run
not an ftviz run (no readable run.json      refused, with or without ``force``: nothing
with a format version)                      is touched
a symbolic link, with ``force``             refused (a link is never followed to delete)
an ftviz run, with ``force``                replaced
every stage done                            refused (``force`` replaces it)
unfinished, another config                  refused (``force`` starts over)
unfinished, same config, ``fresh``          replaced (a new training from step 0), unless
                                            its training is done (then refused)
unfinished, same config                     resumed
==========================================  =============================================

A run's name must be a plain folder name (no ``.``/``..``, separators, NUL or control
characters), and the run folder must lie inside its ``out_dir``: a name can never reach a
folder the user did not point ftviz at.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ftviz.errors import FtvizError
from ftviz.rundir import STAGES, RunDir


@dataclass(frozen=True)
class Probe:
    """The fixed probe set a run records: row i is sample id i.

    images : (N, H, W, 3) uint8; given_labels, true_labels : (N,) int; class_names : C names.
    """

    images: np.ndarray
    given_labels: np.ndarray
    true_labels: np.ndarray
    class_names: list

    @classmethod
    def from_splits(cls, splits) -> "Probe":
        return cls(splits.probe.images, splits.probe.labels, splits.probe_true_labels, list(splits.class_names))


def check_run_name(name) -> str:
    """Raise :class:`FtvizError` unless ``name`` is a plain folder name; returns it."""
    from ftviz.config import plain_run_name

    text = str(name)
    if not plain_run_name(text):
        raise FtvizError(
            f"run name {text!r} is not a plain folder name (not '.' or '..', no '/' or '\\', no control "
            "characters): give a name such as --set name=my-run (the folder goes inside out_dir)"
        )
    return text


def run_path(out_dir, name) -> Path:
    """``out_dir/name`` after checking the name; the result always lies inside ``out_dir``."""
    check_run_name(name)
    folder = Path(out_dir).expanduser()
    path = folder / str(name)
    if not _inside(path, folder):
        raise FtvizError(f"run {name!r} resolves outside {folder}: give a plain run name")
    return path


def is_ftviz_run(path: Path) -> bool:
    """Whether ``path`` holds a readable ``run.json`` with a format version (of any release)."""
    try:
        data = json.loads((Path(path) / "run.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("format_version"), int)


def open_run(
    path,
    *,
    config,
    manifest: Callable[[], dict],
    probe: Probe | None,
    force: bool = False,
    fresh: bool = False,
    keep_out=(),
    force_hint: str = "pass --force to replace it",
) -> tuple[RunDir, bool]:
    """Open the run folder at ``path`` by the table above; returns (run, resuming).

    Parameters
    ----------
    config : the :class:`ftviz.config.ExperimentConfig` (an unfinished run resumes only with
        the same ``config.to_dict()``).
    manifest : called only for a new run: the run.json fields (see :func:`new_run_manifest`).
    probe : written as samples.parquet + probe_images.npy for a new run, and again for a
        resumed one that lacks them (a kill between run.json and the probe files); None when
        the caller writes it.
    force : replace an ftviz run (never anything else, never through a symbolic link).
    fresh : the caller starts training from step 0: an unfinished run is replaced.
    keep_out : folders ftviz reads from (e.g. the checkpoints ``ftviz embed`` embeds): the run
        folder may be neither inside one nor around one.
    force_hint : how this route's user replaces a run, for the error messages.
    """
    run = RunDir(Path(path).expanduser())
    _check_keep_out(run.path, keep_out)
    resuming = False
    if run.path.is_symlink() or (run.path.exists() and any(not _partial_write(p) for p in run.path.iterdir())):
        resuming = _existing(run, config, force=force, fresh=fresh, force_hint=force_hint)
    if resuming:
        _remove_partial_writes(run)
    else:
        if run.path.exists():
            _remove_partial_writes(run)
        run.create(manifest())
    if probe is not None and not (resuming and run.file("samples.parquet").is_file()
                                  and run.file("probe_images.npy").is_file()):
        run.write_probe(probe.images, probe.given_labels, probe.true_labels, probe.class_names)
    return run, resuming


def _existing(run: RunDir, config, *, force: bool, fresh: bool, force_hint: str) -> bool:
    """Decide for a non-empty folder: True to resume; after a replace, False; else raise."""
    if not is_ftviz_run(run.path):
        damaged = run.manifest_path.is_file()
        raise FtvizError(
            f"{run.path} exists and is not an ftviz run ({'its run.json is unreadable' if damaged else 'no run.json'}); "
            "nothing was touched: choose another run name, or move the folder away yourself"
        )
    if force:
        _replace(run)
        return False
    manifest = run.manifest()  # refuses another format version, with the version named
    finished = all(run.stage_status(stage.name) == "done" for stage in STAGES)
    if finished or (fresh and run.stage_status("train") == "done"):  # a new training never replaces a trained one
        raise FtvizError(
            f"{run.path} already holds a finished run; pick a new name, rerun a later stage "
            f"(ftviz score|project|render {run.path}), or {force_hint}"
        )
    if manifest.get("config") != config.to_dict():
        raise FtvizError(
            f"{run.path} holds an unfinished run with another config; resume it with the same settings, "
            f"or {force_hint} and start over"
        )
    if fresh:
        _replace(run)
        return False
    return True


def _replace(run: RunDir) -> None:
    """Delete an ftviz run folder (checked by the caller); a symbolic link is refused, never followed."""
    if run.path.is_symlink():
        raise FtvizError(
            f"{run.path} is a symbolic link; ftviz does not delete through links: remove the link "
            "yourself or choose another run name"
        )
    shutil.rmtree(run.path)  # rmtree unlinks links inside the run, never follows them


def _check_keep_out(path: Path, keep_out) -> None:
    for folder in keep_out:
        folder = Path(folder).expanduser()
        if _inside(path, folder) or _inside(folder, path):
            raise FtvizError(
                f"the run folder {path} overlaps {folder}, which ftviz reads; ftviz never writes into or "
                "deletes what it reads: give another run name (--name) or --out-dir"
            )


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, links and '..' resolved."""
    resolved, parent = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return resolved == parent or parent in resolved.parents


def _partial_write(path) -> bool:
    """A temporary file of an atomic write that a kill stopped before its rename (".NAME.*.tmp")."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()


def _remove_partial_writes(run: RunDir) -> None:
    # Nothing reads them (every reader opens final names only), but they would pile up, and a
    # ViT-B resume state is a 1 GB one.
    for path in list(run.path.rglob(".*.tmp")):
        if _partial_write(path):
            path.unlink(missing_ok=True)


# ---- what a new run records --------------------------------------------------------------
def library_versions() -> dict:
    """Versions of the libraries that shape a run's numbers, for run.json."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("numpy", "torch", "transformers", "cleanlab", "scikit-learn", "plotly", "diffusers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def new_run_manifest(config, probe: Probe, model, *, train_size: int = 0, hf_model=None, noise_map=None,
                     model_info: dict | None = None, **extra) -> dict:
    """The run.json fields every new run records; ``extra`` adds source-specific blocks.

    ``model`` is the :class:`~ftviz.models.base.ProbeModel` (its sizes), ``hf_model`` the module
    whose parameters are counted when it wraps one; ``model_info`` adds to the model block.
    """
    counted = hf_model if hf_model is not None else model
    given, true = np.asarray(probe.given_labels), np.asarray(probe.true_labels)
    return {
        "name": config.name,
        "config": config.to_dict(),
        "versions": library_versions(),
        "command": " ".join(sys.argv),
        "seed": config.seed,
        "dataset": {"name": config.data.dataset, "path": config.data.path,
                    "num_classes": len(probe.class_names), "class_names": list(probe.class_names),
                    "train_size": int(train_size), "image_shape": list(probe.images.shape[1:])},
        "model": {"name": config.model.name, "pretrained": config.model.pretrained,
                  "embedding_dim": model.embedding_dim, "num_classes": model.num_classes,
                  "parameters": sum(p.numel() for p in counted.parameters()), **(model_info or {})},
        "probe_size": len(given),
        "noise_rate": config.data.noise_rate, "noise": config.data.noise, "noise_map": noise_map,
        "noisy_probe_samples": int((given != true).sum()),
        **extra,
    }
