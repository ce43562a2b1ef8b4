"""The one rule that opens a run (ftviz/runs.py): nothing a user owns is deleted, names stay
inside out_dir, --force replaces only ftviz runs; and the package has no import cycle."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ftviz.cli import main
from ftviz.errors import FtvizError
from ftviz.runs import Probe, check_run_name, is_ftviz_run, open_run, run_path
from tests.conftest import tiny_config


def _one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ftviz: error: ")
    return lines[0]


def _plant_user_folder(parent: Path, name: str) -> Path:
    folder = parent / name
    (folder / "src").mkdir(parents=True)
    (folder / "thesis.txt").write_text("three years of work")
    (folder / "src" / "main.py").write_text("print('hi')")
    return folder


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- the reproductions of the data-loss reports --------------------------------------------
def test_force_never_deletes_a_folder_that_is_not_an_ftviz_run(tmp_path, capsys):
    documents = _plant_user_folder(tmp_path, "Documents")
    before = _tree(documents)
    code = main(["run", "-q", "--force", "--set", f"out_dir={tmp_path}", "--set", "name=Documents",
                 "--set", "train.epochs=1"])
    assert code == 2
    assert "not an ftviz run" in _one_line_error(capsys)
    assert _tree(documents) == before  # thesis.txt and src/ untouched, nothing added


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../escape", "x\x00y", "tab\there", "bell\x07", "new\nline"])
def test_run_names_that_could_leave_out_dir_are_refused_before_any_work(tmp_path, capsys, name):
    project = _plant_user_folder(tmp_path, "project")
    before = _tree(project)
    out_dir = project / "runs"
    code = main(["run", "-q", "--force", "--set", f"out_dir={out_dir}", "--set", f"name={name}"])
    assert code == 2
    assert "name" in _one_line_error(capsys)
    assert _tree(project) == before
    assert not out_dir.exists()  # refused before anything was made


def test_check_run_name_accepts_plain_names():
    for name in ("vit-digits", "run 2", "ümlaut_ok", "a.b"):
        assert check_run_name(name) == name
    assert run_path("runs", "vit") == Path("runs") / "vit"


def test_force_replaces_an_ftviz_run_and_what_was_planted_in_it(tiny_run, tmp_path):
    from ftviz.pipeline import run_experiment

    config = tiny_config(tmp_path, name="replaced", train={"epochs": 1})
    shutil.copytree(tiny_run.path, config.run_dir)
    planted = config.run_dir / "planted.txt"
    planted.write_text("left by an earlier run")
    old_created = json.loads((config.run_dir / "run.json").read_text())["created_at"]
    with pytest.raises(FtvizError, match="already holds a finished run"):
        run_experiment(config, progress=False, log=lambda *_: None)
    assert planted.is_file()  # refused without --force: nothing touched
    run = run_experiment(config, force=True, progress=False, log=lambda *_: None)
    assert not planted.exists()
    manifest = run.manifest()
    assert manifest["config"]["train"]["epochs"] == 1  # the new config, not the copied run's
    assert manifest["created_at"] >= old_created
    assert all(run.stage_status(stage) == "done" for stage in manifest["stages"])


def test_force_never_follows_a_symlinked_run_folder(tiny_run, tmp_path):
    target = tmp_path / "elsewhere"
    shutil.copytree(tiny_run.path, target)
    before = _tree(target)
    out_dir = tmp_path / "runs"
    out_dir.mkdir()
    (out_dir / "linked").symlink_to(target, target_is_directory=True)
    config = tiny_config(out_dir, name="linked")
    probe = _probe()
    with pytest.raises(FtvizError, match="symbolic link"):
        open_run(config.run_dir, config=config, probe=probe, force=True, manifest=dict)
    assert _tree(target) == before and (out_dir / "linked").is_symlink()


def test_a_symlinked_name_cannot_reach_outside_out_dir(tmp_path):
    outside = _plant_user_folder(tmp_path, "outside")
    out_dir = tmp_path / "runs"
    out_dir.mkdir()
    (out_dir / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FtvizError, match="outside"):
        run_path(out_dir, "sneaky")


def test_embed_never_writes_into_or_around_the_checkpoints_it_reads(tmp_path):
    checkpoints = tmp_path / "runs" / "trainer-output"
    (checkpoints / "checkpoint-10").mkdir(parents=True)
    before = _tree(checkpoints)
    config = tiny_config(tmp_path / "runs", name="trainer-output")
    for path in (checkpoints, checkpoints / "inside", tmp_path / "runs"):
        with pytest.raises(FtvizError, match="never writes into or deletes what it reads"):
            open_run(path, config=config, probe=_probe(), force=True, keep_out=(checkpoints,), manifest=dict)
    assert _tree(checkpoints) == before


def test_unfinished_run_with_another_config_is_refused_then_replaced_with_force(tmp_path):
    config = tiny_config(tmp_path, name="unfinished")
    run, resuming = open_run(config.run_dir, config=config, probe=_probe(), manifest=lambda: {"name": "x", "config": config.to_dict()})
    assert not resuming and is_ftviz_run(run.path)
    other = tiny_config(tmp_path, name="unfinished", train={"epochs": 3})
    with pytest.raises(FtvizError, match="another config.*--force"):
        open_run(config.run_dir, config=other, probe=_probe(), manifest=dict)
    _, resuming = open_run(config.run_dir, config=config, probe=_probe(), manifest=dict)
    assert resuming  # same config: resumed, probe files kept
    run, resuming = open_run(config.run_dir, config=other, probe=_probe(), force=True,
                             manifest=lambda: {"name": "other", "config": other.to_dict()})
    assert not resuming and run.manifest()["name"] == "other"


def test_a_fresh_training_replaces_an_unfinished_run_but_never_a_trained_one(tmp_path):
    config = tiny_config(tmp_path, name="fresh")
    run, _ = open_run(config.run_dir, config=config, probe=_probe(), manifest=lambda: {"name": "first", "config": config.to_dict()})
    (run.path / "snapshots").mkdir()
    (run.path / "snapshots" / "step-0000000.npz").write_bytes(b"old")
    run, resuming = open_run(config.run_dir, config=config, probe=_probe(), fresh=True,
                             manifest=lambda: {"name": "second", "config": config.to_dict()})
    assert not resuming and run.manifest()["name"] == "second" and not (run.path / "snapshots").exists()
    run.mark_stage("train", "done")
    with pytest.raises(FtvizError, match="finished run"):
        open_run(config.run_dir, config=config, probe=_probe(), fresh=True, manifest=dict)


def test_probe_files_are_written_for_a_new_run(tmp_path):
    config = tiny_config(tmp_path, name="probe")
    probe = _probe()
    run, _ = open_run(config.run_dir, config=config, probe=probe, manifest=dict)
    samples = run.samples()
    np.testing.assert_array_equal(samples["given_label"], probe.given_labels)
    np.testing.assert_array_equal(samples["is_noisy"], probe.given_labels != probe.true_labels)
    assert list(samples["class_name"]) == [probe.class_names[i] for i in probe.given_labels]
    np.testing.assert_array_equal(run.probe_images(), probe.images)


def _probe() -> Probe:
    rng = np.random.default_rng(0)
    given = np.array([0, 1, 2, 1, 0])
    true = np.array([0, 1, 2, 2, 0])
    return Probe(rng.integers(0, 255, (5, 4, 4, 3), dtype=np.uint8), given, true, ["a", "b", "c"])


# ---- the package's structure ----------------------------------------------------------------
def _ftviz_imports(path: Path, package_root: Path) -> set[str]:
    """Every ftviz module ``path`` imports, at module level or inside functions."""
    module = ".".join(path.relative_to(package_root.parent).with_suffix("").parts)
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ftviz")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = parts[: len(parts) - node.level + (1 if path.name == "__init__.py" else 0)]
                base = ".".join(keep + ([base] if base else []))
            if base.startswith("ftviz"):
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_the_package_has_no_import_cycle():
    root = Path(__file__).resolve().parents[1] / "ftviz"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {name: {imp for imp in _ftviz_imports(path, root) if imp in modules and imp != name}
             for name, path in modules.items()}
    # A package's __init__ that only re-exports is a face, not a room: importing
    # ``ftviz.models.vit`` runs ``ftviz.models`` first, which is no cycle of the code's own.
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    real = [c for c in cycles if not all(m == c[0] or c[0].startswith(m + ".") or m.startswith(c[0] + ".")
                                         for m in c)]
    assert not real, " ; ".join(" -> ".join(c) for c in real)
    assert os.path.isfile(modules["ftviz.stages"])
