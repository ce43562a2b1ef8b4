"""``ftviz <stage> RUN``: every stage after training, rerun alone; one command per row of the
stage table (:data:`ftviz.rundir.STAGES`), with the row's extra flags."""

from __future__ import annotations

from ftviz.cli.run_config import add_set_option, build_config


def register(add) -> None:
    from ftviz.rundir import STAGES

    for stage in STAGES:
        if stage.runner is None:  # training: ftviz run / ftviz embed
            continue
        p = add(stage.name, cmd_stage, stage.help)
        p.set_defaults(stage=stage.name)
        p.add_argument("run", help="run directory (runs/<name>)")
        add_set_option(p, example=_example_setting(stage.config))
        for flags, keywords in stage.options:
            p.add_argument(*flags, **keywords)


def _example_setting(section_name: str) -> str:
    """``"score.k=10"``: the section's first key at its default, for the --set help."""
    import dataclasses

    from ftviz.config import ExperimentConfig

    first = dataclasses.fields(getattr(ExperimentConfig(), section_name))[0]
    return f"{section_name}.{first.name}={first.default}"


def _option_dest(flags: tuple[str, ...], keywords: dict) -> str:
    return keywords.get("dest", flags[0].lstrip("-").replace("-", "_"))


def cmd_stage(args) -> None:
    """Rerun one stage with the config the run was made with (run.json), ``--set`` applied."""
    from ftviz.stages import run_stage
    from ftviz.rundir import RunDir, stage_named

    run = RunDir(args.run)
    config = build_config(args.set, values=run.manifest().get("config", {}))
    stage = stage_named(args.stage)
    options = {_option_dest(flags, keywords): getattr(args, _option_dest(flags, keywords))
               for flags, keywords in stage.options}
    result = run_stage(run, stage.name, config, progress=not args.quiet, **options)
    written = [str(result)] if result is not None else [
        str(run.file(name)) for name in stage.outputs if run.file(name.rstrip("/")).exists()]
    print(f"ftviz: {stage.name} wrote {', '.join(written)}")
