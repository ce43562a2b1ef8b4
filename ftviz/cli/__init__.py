"""The ``ftviz`` command: one module per command family, listed in :data:`COMMANDS`.

A family module either registers its subcommands itself (``register(add)``, where
``add(name, handler, help)`` returns the subcommand's parser) or is a single command named
by its entry (``add_arguments(parser)`` and ``run(args)``). A new family is its module plus
one entry here. Stage modules are imported inside each command, so ``--help`` and errors
about the input come back fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from ftviz import __version__
from ftviz.errors import FtvizError


@dataclass(frozen=True)
class Family:
    """One entry of the command list.

    module : the module that declares the commands.
    command : for a single-command module (``add_arguments`` + ``run``), the command's name;
        None for a module that registers its own (``register(add)``).
    optional : leave the family out when its module is absent from this install.
    """

    module: str
    command: str | None = None
    optional: bool = False


COMMANDS: tuple[Family, ...] = (
    Family("ftviz.cli.run"),  # run
    Family("ftviz.cli.stages"),  # score, detect, project, render: one per row of ftviz.rundir.STAGES
    Family("ftviz.cli.embed"),  # embed
    Family("ftviz.cli.quality"),
    Family("ftviz.cli.spotlight"),  # spotlight
    Family("ftviz.cli.compare"),  # compare
    Family("ftviz.cli.models"),  # models
    Family("ftviz.serve", command="serve", optional=True),  # serve, where that module is installed
)


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

    for family in COMMANDS:
        _add_family(family, add)
    return parser


def _add_family(family: Family, add) -> None:
    try:
        module = importlib.import_module(family.module)
    except ModuleNotFoundError as error:
        if family.optional and error.name == family.module:
            return  # not part of this install
        raise
    if family.command is None:
        module.register(add)
        return
    help_text = getattr(module, "HELP", None) or (module.__doc__ or family.command).strip().splitlines()[0]
    module.add_arguments(add(family.command, module.run, help_text))


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
