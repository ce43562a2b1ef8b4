"""Running the stage table on a run directory: one stage (``run_stage``) or every stage not yet
done (``continue_run``).

This module depends on the run directory alone (``ftviz.rundir``); each stage's module is
imported by name from the table when the stage runs, so training, the recorder and the
command line can all call it without importing one another.
"""

from __future__ import annotations

import importlib

from ftviz.errors import FtvizError
from ftviz.rundir import STAGES, RunDir, stage_named


def run_stage(run: RunDir, name: str, config, *, progress: bool = True, **options):
    """Run one stage of the table on ``run`` with its config section; returns the runner's result.

    The stages that make its inputs must be done (a clear error names the command otherwise).
    ``config`` is the :class:`ftviz.config.ExperimentConfig`; the runner receives its section.
    """
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


def continue_run(run: RunDir, config, *, progress: bool = True, log=print, before: str | None = None) -> None:
    """Every stage after training that is not done yet, in table order (up to ``before``,
    excluded, when given)."""
    for stage in STAGES:
        if stage.name == before:
            return
        if stage.runner is None or run.stage_status(stage.name) == "done":
            continue
        result = run_stage(run, stage.name, config, progress=progress)
        if stage.name == "render":
            log(f"ftviz: animation at {result}")
