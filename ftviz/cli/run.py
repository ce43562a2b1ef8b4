"""``ftviz run [EXPERIMENT.toml]``: train with snapshots, then every later stage."""

from __future__ import annotations

from ftviz.cli.run_config import add_set_option, build_config


def register(add) -> None:
    p = add("run", cmd_run, "train with snapshots, then score, project and render")
    p.add_argument("experiment", nargs="?", help="experiment TOML (default: the built-in config; "
                                                 "make animate uses experiments/default.toml)")
    add_set_option(p)
    p.add_argument("--force", action="store_true", help="replace an existing run of the same name")


def cmd_run(args) -> None:
    from ftviz.pipeline import run_experiment

    config = build_config(args.set, experiment=args.experiment)
    run_experiment(config, force=args.force, progress=not args.quiet)
