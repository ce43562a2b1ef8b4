"""Stage orchestration: start (or resume) a run directory, then train, score, project, render."""

from __future__ import annotations

import platform
import shutil
import sys
import time

import numpy as np

from ftviz.errors import FtvizError
from ftviz.rundir import STAGES, RunDir, stage_named, write_npy, write_parquet


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


def write_samples(run: RunDir, splits) -> None:
    """samples.parquet and probe_images.npy: the fixed probe set, row i = sample id i."""
    import pandas as pd

    names = np.asarray(splits.class_names, dtype=object)
    given, true = splits.probe.labels, splits.probe_true_labels
    write_npy(run.file("probe_images.npy"), splits.probe.images)
    write_parquet(run.file("samples.parquet"), pd.DataFrame({
        "id": np.arange(len(given), dtype=np.int64),
        "given_label": given.astype(np.int64),
        "true_label": true.astype(np.int64),
        "is_noisy": given != true,
        "class_name": names[given],
        "true_class_name": names[true],
    }))


def prepare_run(config, *, force: bool = False) -> tuple[RunDir, bool]:
    """Create the run directory, or reopen an unfinished one with the same config to resume.

    Returns (run, resuming). A run whose every stage is done is never overwritten without
    ``force``; one stopped anywhere (training, or a later stage) resumes where it stopped.
    """
    run = RunDir(config.run_dir)
    if run.path.exists() and any(not _partial_write(p) for p in run.path.iterdir()):
        if force:
            shutil.rmtree(run.path)
        elif not run.exists():
            raise FtvizError(f"{run.path} exists and is not an ftviz run; choose another name (--set name=...)")
        else:
            manifest = run.manifest()
            if all(run.stage_status(stage.name) == "done" for stage in STAGES):
                raise FtvizError(
                    f"{run.path} already holds a finished run; pick a new name with --set name=..., "
                    f"rerun a later stage (ftviz score|project|render {run.path}), or pass --force to replace it"
                )
            if manifest.get("config") != config.to_dict():
                raise FtvizError(
                    f"{run.path} holds an unfinished run with another config; "
                    "resume it with the same settings or pass --force to start over"
                )
            _remove_partial_writes(run)
            return run, True
    if run.path.exists():
        _remove_partial_writes(run)
    return run, False


def _partial_write(path) -> bool:
    """A temporary file of an atomic write that a kill stopped before its rename (".NAME.*.tmp")."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()


def _remove_partial_writes(run: RunDir) -> None:
    # Nothing reads them (every reader opens final names only), but they would pile up, and a
    # ViT-B resume state is a 1 GB one.
    for path in list(run.path.rglob(".*.tmp")):
        if _partial_write(path):
            path.unlink(missing_ok=True)


def new_run_manifest(config, splits, model, *, hf_model=None, **extra) -> dict:
    """The run.json fields every new run records; ``extra`` adds source-specific blocks."""
    counted = hf_model if hf_model is not None else model
    return {
        "name": config.name,
        "config": config.to_dict(),
        "versions": library_versions(),
        "command": " ".join(sys.argv),
        "seed": config.seed,
        "dataset": {"name": config.data.dataset, "path": config.data.path,
                    "num_classes": splits.num_classes, "class_names": splits.class_names,
                    "train_size": len(splits.train), "image_shape": list(splits.probe.images.shape[1:])},
        "model": {"name": config.model.name, "pretrained": config.model.pretrained,
                  "embedding_dim": model.embedding_dim, "num_classes": model.num_classes,
                  "parameters": sum(p.numel() for p in counted.parameters())},
        "probe_size": len(splits.probe),
        "noise_rate": config.data.noise_rate, "noise": config.data.noise, "noise_map": splits.noise_map,
        "noisy_probe_samples": int((splits.probe.labels != splits.probe_true_labels).sum()),
        **extra,
    }


def run_experiment(config, *, force: bool = False, progress: bool = True, log=print) -> RunDir:
    """All stages for an experiment config; returns the run directory."""
    import torch

    from ftviz import distributed
    from ftviz.data import load_splits
    from ftviz.models import create_model
    from ftviz.train import train

    started = time.perf_counter()
    # Data and model first: bad input must fail before an existing run is touched (--force).
    splits = load_splits(config.data, seed=config.seed)
    torch.manual_seed(config.seed)
    model = create_model(
        config.model.name,
        num_classes=splits.num_classes,
        image_size=config.data.image_size,
        pretrained=config.model.pretrained,
        **config.model.options,
    )
    # Under torchrun every rank gets here; rank 0 alone opens or creates the run directory.
    rank, _ = distributed.init_from_env()

    def open_run() -> bool:
        run, resuming = prepare_run(config, force=force)
        if not resuming:
            run.create(new_run_manifest(config, splits, model))
        if not resuming or not all(run.file(name).is_file() for name in ("samples.parquet", "probe_images.npy")):
            write_samples(run, splits)  # a kill can land between run.json and these; same config, same files
        return resuming

    resuming = distributed.on_main(open_run)
    run = RunDir(config.run_dir)
    if rank != 0:
        log, progress = (lambda *_: None), False
    log(f"ftviz: {'resuming' if resuming else 'training'} {config.model.name} on {config.data.dataset} "
        f"({len(splits.train)} train, {len(splits.probe)} probe) -> {run.path}")
    if run.stage_status("train") != "done":
        train(run, config, splits, model, progress=progress)
    if rank != 0:
        return run
    continue_run(run, config, progress=progress, log=log)
    log(f"ftviz: done in {time.perf_counter() - started:.1f} s")
    return run


def run_stage(run: RunDir, name: str, config, *, progress: bool = True, **options):
    """Run one stage of the table on ``run`` with its config section; returns the runner's result.

    The stages that make its inputs must be done (a clear error names the command otherwise).
    """
    import importlib

    stage = stage_named(name)
    if stage.runner is None:
        raise FtvizError(f"stage '{name}' is not rerun alone; use {stage.command}")
    for earlier in STAGES[: STAGES.index(stage)]:
        if set(earlier.outputs) & stage.required_inputs:
            run.require(earlier.name)
    module_name, function_name = stage.runner.split(":")
    runner = getattr(importlib.import_module(module_name), function_name)
    section = getattr(config, stage.config) if stage.config else None
    return runner(run, section, progress=progress, **options)


def continue_run(run: RunDir, config, *, progress: bool = True, log=print) -> None:
    """Every stage after training that is not done yet, in table order."""
    for stage in STAGES:
        if stage.runner is None or run.stage_status(stage.name) == "done":
            continue
        result = run_stage(run, stage.name, config, progress=progress)
        if stage.name == "render":
            log(f"ftviz: animation at {result}")
