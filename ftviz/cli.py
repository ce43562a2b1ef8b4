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


def cmd_score(args) -> None:
    from ftviz.quality import score_run

    run, config = _run_config(args.run, args.set)
    score_run(run, config.score, progress=not args.quiet)
    print(f"ftviz: scores at {run.file('scores.parquet')}")


def cmd_project(args) -> None:
    from ftviz.project import project_run

    run, config = _run_config(args.run, args.set)
    project_run(run, config.project, progress=not args.quiet)
    print(f"ftviz: frames at {run.file('frames.npy')}")


def cmd_render(args) -> None:
    from ftviz.render import render_run

    run, config = _run_config(args.run, args.set)
    path = render_run(run, config.render, output_format=args.format, out=args.out)
    print(f"ftviz: wrote {path}")


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

    for name, handler, text in (
        ("score", cmd_score, "Cleanlab outlier and label-issue scores for every snapshot"),
        ("project", cmd_project, "2-D PCA of every snapshot, aligned with Procrustes"),
        ("render", cmd_render, "the animated HTML (or a GIF/MP4 for slides)"),
    ):
        p = add(name, handler, text)
        p.add_argument("run", help="run directory (runs/<name>)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        if name == "render":
            p.add_argument("--format", choices=("html", "gif", "mp4"), default="html")
            p.add_argument("--out", help="output file (default: inside the run)")

    add("models", cmd_models, "list the registered models")
    _add_optional_commands(sub, add)
    return parser


def _add_optional_commands(sub, add) -> None:
    """Subcommands whose modules register themselves (embed, spotlight, compare)."""
    import importlib

    for module in ("ftviz.cli_embed", "ftviz.cli_spotlight", "ftviz.cli_compare"):
        try:
            importlib.import_module(module).register(add)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except FtvizError as error:
        print(f"ftviz: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ftviz: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
