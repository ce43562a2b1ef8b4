"""The ``ftviz`` command as a user runs it: a subprocess of the installed entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftviz.rundir import STAGES
from tests import forked

ROOT = Path(__file__).resolve().parents[1]
STAGE_COMMANDS = [stage.name for stage in STAGES if stage.runner is not None]
EVERY_COMMAND = ["run", *STAGE_COMMANDS, "embed", "quality", "spotlight", "compare", "models"]


def ftviz(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``ftviz ARGS`` through ``python -m ftviz.cli`` (what torchrun launches), in a process of its
    own forked with the libraries already imported (tests/forked.py)."""
    return forked.run(["-m", "ftviz.cli", *args], cwd=cwd or ROOT, timeout=120)


def test_help_lists_every_command():
    result = ftviz("--help")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert listed[: len(EVERY_COMMAND)] == EVERY_COMMAND
    assert set(listed) - set(EVERY_COMMAND) <= {"serve"}  # serve only where its module is installed


def test_installed_entry_point_runs_main():
    script = Path(sys.executable).parent / "ftviz"
    if not script.is_file():
        pytest.skip("the ftviz script is not installed next to this interpreter")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("ftviz ")


@pytest.mark.parametrize("name", STAGE_COMMANDS)
def test_each_stage_command_has_help_with_its_flags(name):
    stage = next(stage for stage in STAGES if stage.name == name)
    result = ftviz(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: ftviz {name}" in result.stdout and stage.help.split(" (")[0][:40] in " ".join(result.stdout.split())
    assert "--set KEY=VALUE" in result.stdout and f"e.g. {stage.config}." in result.stdout
    for flags, _ in stage.options:
        assert flags[0] in result.stdout


def test_set_is_one_option_on_every_command_that_builds_a_config():
    import argparse

    from ftviz.cli import build_parser

    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction)).choices
    for command in ("run", "embed", *STAGE_COMMANDS):
        (option,) = [action for action in commands[command]._actions if "--set" in action.option_strings]
        assert option.dest == "set" and option.default == [] and option.metavar == "KEY=VALUE", command


@pytest.mark.parametrize("args", [
    ["run", "--set", "train.epochz=1"],
    ["embed", "--checkpoints", "nowhere", "--set", "score.kk=1"],
], ids=["run", "embed"])
def test_unknown_set_key_is_one_line_exit_2(args, tmp_path):
    result = ftviz(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ftviz: error: unknown config key ")
    assert not any(tmp_path.iterdir())  # refused before any work: no run folder


def test_stage_command_rejects_unknown_set_key_before_work(tiny_run, tmp_path):
    from ftviz.rundir import RunDir

    run = RunDir(shutil.copytree(tiny_run.path, tmp_path / "run"))
    before = run.manifest()["stages"]["score"]
    result = ftviz("score", str(run.path), "--set", "score.kk=3")
    assert result.returncode == 2
    assert result.stderr == ("ftviz: error: unknown config key 'score.kk'; known keys here: "
                             "device, k, method, top\n")
    result = ftviz("detect", str(run.path), "--set", "detect.rule=first")
    assert result.returncode == 2
    assert result.stderr == "ftviz: error: detect.rule must be 'auto', 'history' or 'last', got 'first'\n"
    assert run.manifest()["stages"]["score"] == before


def test_stage_command_reruns_with_the_runs_config_and_set(tiny_run, tmp_path, capsys):
    from ftviz.cli import main  # in process: torch is already imported, a subprocess would redo it
    from ftviz.rundir import RunDir

    run = RunDir(shutil.copytree(tiny_run.path, tmp_path / "run"))
    assert main(["score", str(run.path), "-q", "--set", "score.k=3"]) == 0
    assert capsys.readouterr().out.strip() == f"ftviz: score wrote {run.file('scores.parquet')}"
    assert run.manifest()["stages"]["score"]["k"] == 3  # the override, not the run's k = 5
    assert run.stage_status("detect") != "done"  # what reads scores is stale now


def test_models_lists_the_registry(capsys):
    from ftviz.cli import main
    from ftviz.models import list_models

    assert main(["models"]) == 0
    assert capsys.readouterr().out.split() == list(list_models()) and "vit_tiny" in list_models()


def test_a_family_is_one_module_and_one_entry(monkeypatch):
    # A single-command module (add_arguments + run) joins through one entry of COMMANDS; an
    # optional one that is not installed is left out.
    import types

    import ftviz.cli as cli

    module = types.ModuleType("ftviz_test_hello")
    module.__doc__ = "say hello to a run\n\nMore words."
    module.add_arguments = lambda parser: parser.add_argument("who")
    module.run = lambda args: print(f"hello {args.who}")
    monkeypatch.setitem(sys.modules, "ftviz_test_hello", module)
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, cli.Family("ftviz_test_hello", command="hello"),
                                          cli.Family("ftviz_not_installed", command="absent", optional=True)))
    parser = cli.build_parser()
    args = parser.parse_args(["hello", "world"])
    assert args.handler is module.run and args.who == "world"
    help_text = parser.format_help()
    assert "say hello to a run" in help_text and "absent" not in help_text
