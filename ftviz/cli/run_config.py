"""The one ``--set KEY=VALUE`` option and the config every command builds from it."""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser, example: str = "train.epochs=1") -> None:
    """Declare ``--set KEY=VALUE`` (repeatable) on ``parser``; ``example`` shows a key it is used with."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key (e.g. {example}); repeat for several")


def build_config(overrides: list[str], *, experiment: str | None = None, values: dict | None = None):
    """The :class:`ftviz.config.ExperimentConfig` a command runs with, validated once.

    The defaults, then ``experiment`` (a TOML file) or ``values`` (nested dicts: a run's
    run.json "config", or what the command's own flags set), then the ``--set`` overrides.
    """
    from ftviz.config import ExperimentConfig, apply_overrides, apply_values, load_config, validate

    if experiment is not None:
        return load_config(experiment, overrides)
    config = ExperimentConfig()
    apply_values(config, values or {})
    apply_overrides(config, overrides)
    validate(config)
    return config
