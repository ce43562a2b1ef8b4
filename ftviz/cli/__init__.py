"""The ``ftviz`` command. Stage modules are imported inside each subcommand, so ``--help``
and errors about the input come back fast."""

from __future__ import annotations

import argparse
import sys
from ftviz import __version__
from ftviz.errors import FtvizError


def _run_config(run_path: str, overrides: list[str]):
    """The config a run was made with (from run.json), with ``--set`` overrides applied."""
    from ftviz.config import ExperimentConfig, _apply, apply_overrides, validate
    from ftviz.rundir import RunDir

    run = RunDir(run_path)
    manifest = run.manifest()
    config = ExperimentConfig()
    _apply(config, manifest.get("config", {}), "")
    apply_overrides(config, overrides)
    validate(config)
    return run, config


def cmd_run(args) -> None:
    from ftviz.config import load_config
    from ftviz.pipeline import run_experiment

    config = load_config(args.experiment, args.set)
    run_experiment(config, force=args.force, progress=not args.quiet)


def cmd_stage(args) -> None:
    """``ftviz <stage> RUN``: one row of the stage table, rerun alone."""
    from ftviz.pipeline import run_stage
    from ftviz.rundir import stage_named

    run, config = _run_config(args.run, args.set)
    stage = stage_named(args.stage)
    options = {}
    for flags, keywords in stage.options:
        dest = keywords.get("dest", flags[0].lstrip("-").replace("-", "_"))
        options[dest] = getattr(args, dest)
    result = run_stage(run, stage.name, config, progress=not args.quiet, **options)
    written = [str(result)] if result is not None else [
        str(run.file(name)) for name in stage.outputs if run.file(name.rstrip("/")).exists()]
    print(f"ftviz: {stage.name} wrote {', '.join(written)}")


def cmd_models(args) -> None:
    from ftviz.models import list_models

    print("\n".join(list_models()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftviz",
        description="Watch what fine-tuning does to a vision model's view of its data, "
        "and which samples are suspicious.",
    )
    parser.add_argument("--version", action="version", version=f"ftviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return p

    p = add("run", cmd_run, "train with snapshots, then score, project and render")
    p.add_argument("experiment", nargs="?", help="experiment TOML (default: the built-in config; make animate uses experiments/default.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--force", action="store_true", help="replace an existing run of the same name")

    from ftviz.rundir import STAGES

    for stage in STAGES:  # every stage after training reruns alone on an existing run
        if stage.runner is None:
            continue
        p = add(stage.name, cmd_stage, stage.help)
        p.set_defaults(stage=stage.name)
        p.add_argument("run", help="run directory (runs/<name>)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        for flags, keywords in stage.options:
            p.add_argument(*flags, **keywords)

    add("models", cmd_models, "list the registered models")
    _add_optional_commands(sub, add)
    return parser


def _add_optional_commands(sub, add) -> None:
    """Subcommands whose modules register themselves (embed, spotlight, compare)."""
    import importlib

    for module in ("ftviz.cli_embed", "ftviz.cli_spotlight", "ftviz.cli_compare", "ftviz.cli_quality"):
        try:
            importlib.import_module(module).register(add)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's or a container's stop), handled like Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # Schedulers send SIGTERM before SIGKILL: stop between steps, save, and say how to resume.
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        args.handler(args)
    except FtvizError as error:
        print(f"ftviz: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        what = "terminated" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"ftviz: {what}; rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
