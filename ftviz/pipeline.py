"""``ftviz run``: open (or resume) a run directory, train, then every later stage of the table."""

from __future__ import annotations

import time

from ftviz.rundir import RunDir


def run_experiment(config, *, force: bool = False, progress: bool = True, log=print) -> RunDir:
    """All stages for an experiment config; returns the run directory."""
    import torch

    from ftviz import distributed
    from ftviz.config import check_probe_size
    from ftviz.data import load_splits
    from ftviz.embed import resolve_device
    from ftviz.follow import finish_after_training, start_follower, stop_follower
    from ftviz.models import create_model
    from ftviz.runs import Probe, new_run_manifest, open_run, run_path
    from ftviz.train import train

    started = time.perf_counter()
    path = run_path(config.out_dir, config.name)  # a name that could reach outside out_dir: refused before any work
    # Data and model first: bad input must fail before an existing run is touched (--force).
    splits = load_splits(config.data, seed=config.seed)
    check_probe_size(config, len(splits.probe))  # k neighbours need more than k probe images
    torch.manual_seed(config.training_seed)  # the new layers' initial weights
    model = create_model(
        config.model.name,
        num_classes=splits.num_classes,
        image_size=config.data.image_size,
        pretrained=config.model.pretrained,
        **config.model.options,
    )
    # Under torchrun every rank gets here; rank 0 alone opens or creates the run directory.
    rank, _ = distributed.init_from_env()

    def open_this_run() -> bool:
        probe = Probe.from_splits(splits)
        _, resuming = open_run(
            path, config=config, probe=probe, force=force,
            force_hint="pass --force to replace it",
            manifest=lambda: new_run_manifest(config, probe, model, train_size=len(splits.train),
                                              noise_map=splits.noise_map,
                                              model_info=getattr(model, "manifest_info", dict)()),
        )
        return resuming

    resuming = distributed.on_main(open_this_run)
    run = RunDir(path)
    if rank != 0:
        log, progress = (lambda *_: None), False
    log(f"ftviz: {'resuming' if resuming else 'training'} {config.model.name} on {config.data.dataset} "
        f"({len(splits.train)} train, {len(splits.probe)} probe) -> {run.path}")
    follower = None
    if run.stage_status("train") != "done":
        if rank == 0:  # analysis of each frame as it lands, in a process apart
            follower = start_follower(run, device=str(resolve_device(config.train.device)))
        try:
            train(run, config, splits, model, progress=progress)
        except BaseException:
            stop_follower(follower)  # its frames stay: the rerun keeps them
            raise
    if rank != 0:
        return run
    finish_after_training(run, config, follower, progress=progress, log=log)
    log(f"ftviz: done in {time.perf_counter() - started:.1f} s")
    return run
