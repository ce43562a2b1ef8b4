"""Kill anywhere: ``ftviz run`` and ``ftviz embed`` stopped with SIGKILL (or Ctrl-C) at chosen
points, then started again with the same command, end with the same snapshots, scores, frames
and page as a run that was never stopped; no stage is ever marked done without its files, and
a damaged run.json is refused with one line that says how to recover.

The stop points are exact, not timed: ``FTVIZ_TEST_KILL_AT`` (read by
:func:`ftviz.rundir._test_kill_point`) makes the process signal itself just after a stage is
marked running ("stage:score"), inside an atomic write before the rename
("write:frames.npy"), or just after a file lands ("wrote:step-0000004.npz"). Each stopped run
is checked before the next is started, so one run directory walks through every point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftviz.cli import main
from ftviz.rundir import KILL_AT_ENV, STAGE_NAMES, RunDir, stage_named
from tests import forked

# A run of a few seconds: 200 synthetic 16 px training images (120 of them the probe), a
# one-layer ViT of width 32, two epochs of 6 steps, a snapshot every 2 steps.
TINY = [
    "--set", "data.dataset=synthetic", "--set", "data.train_size=200", "--set", "data.probe_size=120",
    "--set", "data.image_size=16", "--set", "data.noise_rate=0.1",
    "--set", "model.options={hidden_size=32, num_hidden_layers=1, num_attention_heads=2, "
             "intermediate_size=64, patch_size=4}",
    "--set", "train.epochs=2", "--set", "train.batch_size=32", "--set", "train.lr=3e-3",
    "--set", "train.snapshot_every=2", "--set", "train.device=cpu", "--set", "score.k=5",
    # the stages after training, in the stopped process: stops inside the follower, and of
    # training while it follows, are tests/test_follow.py's
    "--set", "train.follow=false",
]
STEPS = [0, 2, 4, 6, 8, 10, 12]  # 200 // 32 = 6 steps per epoch, 2 epochs


def ftviz(args: list[str], *, kill_at: str | None = None, signal_name: str = "SIGKILL"):
    """Run the ftviz command in a fresh process, stopped at ``kill_at`` if given."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FTVIZ_TEST_")}
    if kill_at:
        env[KILL_AT_ENV] = kill_at
        env["FTVIZ_TEST_KILL_SIGNAL"] = signal_name
    # A process of its own, forked with the libraries already imported (tests/forked.py), its
    # Ctrl-C handling that of a fresh interpreter.
    return forked.run(["-m", "ftviz.cli", *args], env=env, timeout=600)


def stopped(result, signal_name: str) -> None:
    """The process died of SIGKILL, or exited 130 with the resume hint after Ctrl-C."""
    if signal_name == "SIGKILL":
        assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])
    elif signal_name == "SIGTERM":  # a scheduler's stop: handled like Ctrl-C, exit 128 + 15
        assert result.returncode == 143, (result.returncode, result.stderr[-2000:])
        assert result.stderr.strip().splitlines()[-1] == "ftviz: terminated; rerun the same command to resume"
    else:
        assert result.returncode == 130, (result.returncode, result.stderr[-2000:])
        assert result.stderr.strip().splitlines()[-1] == "ftviz: interrupted; rerun the same command to resume"


# Outputs only some runs have: generated samples (diffusion runs), the detectors' scores
# against injected noise (runs with noise).
# Written only by some routes or runs: diffusion samples, noise tables, and the training
# dynamics / training-set labels (ftviz's loop and the callback record them; ftviz embed cannot).
CONDITIONAL_OUTPUTS = {"generated/", "detectors.parquet", "dynamics/", "train_samples.parquet", "train_images.npy",
                       "train_suspicion.parquet", "train_detectors.parquet"}


def check_consistent(run: RunDir) -> dict[str, str]:
    """What a stopped run must satisfy: run.json parses, no stage reads "running" (its process
    is gone), every done stage's files exist and every recorded snapshot is complete."""
    manifest = json.loads(run.manifest_path.read_text())  # never half-written
    statuses = {name: run.stage_status(name) for name in STAGE_NAMES}
    assert "running" not in statuses.values(), statuses
    for name, status in statuses.items():
        if status == "done":
            for output in stage_named(name).outputs:
                if output in CONDITIONAL_OUTPUTS:
                    continue
                assert run.file(output.rstrip("/")).exists(), f"{name} is done but {output} is missing"
    for step in manifest.get("snapshot_steps", []):
        embedding, logits = run.load_snapshot(step)  # raises if missing or damaged
        assert embedding.shape[0] == logits.shape[0]
    return statuses


def check_stop(run: RunDir, point: str, expected: dict) -> None:
    """The stage statuses, recorded snapshot steps and resume-state step ``expected`` after a stop."""
    statuses = check_consistent(run)
    for key, value in expected.items():
        if key == "snapshot_steps":
            assert run.manifest()["snapshot_steps"] == value, point
        elif key == "resume_step":
            import torch

            assert torch.load(run.weights_dir / "latest.pt", weights_only=True)["step"] == value, point
        else:
            assert statuses[key] == value, (point, statuses)


def file_states(run: RunDir) -> dict[str, tuple[int, bytes]]:
    """Every file of the run directory: its modification time (ns) and bytes."""
    return {str(p.relative_to(run.path)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(run.path.rglob("*")) if p.is_file()}


def check_only_render_redone(run: RunDir, before: dict[str, tuple[int, bytes]], stages_before: dict) -> None:
    """After a rerun of a run stopped in render: no file of train to project was rewritten or
    removed (snapshots, metrics, weights, scores, suspicion, frames, projection keep their
    bytes and times), their stage records are unchanged, and the page is new."""
    after = file_states(run)
    assert set(before) - set(after) == set()
    rewritten = {name for name in after if before.get(name) != after[name]}
    assert rewritten == {"animation.html", "run.json"}, rewritten
    last_snapshot = f"snapshots/step-{run.snapshot_steps()[-1]:07d}.npz"
    for name in (last_snapshot, "scores.parquet", "frames.npy"):
        assert name in before, name  # the files the claim is about were there to compare
    stages = run.manifest()["stages"]
    for name in ("train", "score", "detect", "project"):
        assert stages[name] == stages_before[name], name


def leftovers(run: RunDir) -> list[str]:
    """Temporary files of interrupted atomic writes still in the run directory."""
    return sorted(str(p.relative_to(run.path)) for p in run.path.rglob(".*.tmp"))


def assert_same_result(run: RunDir, reference: RunDir) -> None:
    """Same snapshots, scores, frames (to 1e-6), projection, metrics and page as the reference."""
    manifest = run.manifest()
    assert {name: run.stage_status(name) for name in STAGE_NAMES} == {name: "done" for name in STAGE_NAMES}
    assert manifest["snapshot_steps"] == reference.manifest()["snapshot_steps"]
    for step in manifest["snapshot_steps"]:
        for ours, theirs in zip(run.load_snapshot(step), reference.load_snapshot(step)):
            np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(run.frames(), reference.frames(), rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(run.scores(), reference.scores())
    for table in ("suspicion.parquet", "detectors.parquet"):
        if reference.file(table).is_file():
            pd.testing.assert_frame_equal(pd.read_parquet(run.file(table)), pd.read_parquet(reference.file(table)))
    timing = ["seconds"]  # wall-clock columns differ between any two runs
    pd.testing.assert_frame_equal(run.projection().drop(columns=timing, errors="ignore"),
                                  reference.projection().drop(columns=timing, errors="ignore"))
    pd.testing.assert_frame_equal(run.metrics(), reference.metrics())
    pd.testing.assert_frame_equal(run.samples(), reference.samples())
    for name in ("train_images.npy", "train_samples.parquet"):  # kept or written again on resume: the same
        assert run.file(name).is_file() == reference.file(name).is_file(), name
        if name.endswith(".npy") and reference.file(name).is_file():
            np.testing.assert_array_equal(np.load(run.file(name)), np.load(reference.file(name)))
    assert (run.path / "animation.html").read_bytes() == (reference.path / "animation.html").read_bytes()
    assert leftovers(run) == []


# ---- ftviz run ------------------------------------------------------------------------------
# (point, signal, what must hold right after the stop): in pipeline order, each reached by the
# rerun after the previous stop.
RUN_STOPS = [
    # inside the very first write of run.json: the folder holds only a temporary file
    ("write:run.json", "SIGKILL", {"train": None}),
    # run.json written, the probe's samples.parquet not yet
    ("write:samples.parquet", "SIGKILL", {"train": "pending"}),
    # between snapshots, before the first resume state: step 4 is on disk, not yet recorded
    ("wrote:step-0000004.npz", "SIGKILL", {"train": "interrupted", "snapshot_steps": [0, 2]}),
    # between snapshots of the second epoch, after the end-of-epoch resume state (step 6)
    ("wrote:step-0000010.npz", "SIGKILL", {"train": "interrupted", "snapshot_steps": [0, 2, 4, 6, 8],
                                           "resume_step": 6}),
    # Ctrl-C at the same point, reached from the step-6 state: half-way through step 10's
    # snapshot, so the step-6 state is kept rather than one that would skip that snapshot
    ("wrote:step-0000010.npz", "SIGINT", {"train": "interrupted", "resume_step": 6}),
    # inside the write of the final weights
    ("write:final.pt", "SIGKILL", {"train": "interrupted", "snapshot_steps": STEPS}),
    # training done; inside the write of the scores
    ("write:scores.parquet", "SIGKILL", {"train": "done", "score": "interrupted"}),
    # suspicion.parquet landed, detectors.parquet not yet
    ("wrote:suspicion.parquet", "SIGKILL", {"score": "done", "detect": "interrupted"}),
    # frames.npy landed, projection.parquet not yet
    ("wrote:frames.npy", "SIGKILL", {"detect": "done", "project": "interrupted"}),
    # Ctrl-C inside the page's write
    ("write:animation.html", "SIGINT", {"project": "done", "render": "interrupted"}),
]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> RunDir:
    out = tmp_path_factory.mktemp("reference")
    result = ftviz(["run", "-q", "--set", f"out_dir={out}", "--set", "name=kill", *TINY])
    assert result.returncode == 0, result.stderr[-3000:]
    return RunDir(out / "kill")


@pytest.mark.slow
def test_run_killed_anywhere_resumes_to_the_same_result(reference_run, tmp_path):
    args = ["run", "-q", "--set", f"out_dir={tmp_path}", "--set", "name=kill", *TINY]
    run = RunDir(tmp_path / "kill")
    for point, signal_name, expected in RUN_STOPS:
        stopped(ftviz(args, kill_at=point, signal_name=signal_name), signal_name)
        if expected.get("train", "") is None:
            assert not run.manifest_path.exists() and leftovers(run), point
        else:
            check_stop(run, point, expected)
    # the last stop is in render: the rerun must redo render alone
    before, stages_before = file_states(run), run.manifest()["stages"]
    result = ftviz(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_result(run, reference_run)
    check_only_render_redone(run, before, stages_before)


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_resumes(reference_run, tmp_path):
    args = ["run", "-q", "--set", f"out_dir={tmp_path}", "--set", "name=kill", *TINY]
    run = RunDir(tmp_path / "kill")
    stopped(ftviz(args, kill_at="wrote:step-0000008.npz", signal_name="SIGTERM"), "SIGTERM")
    # Stopped inside step 8's snapshot: the state saved is the epoch end before it (step 6).
    check_stop(run, "SIGTERM", {"train": "interrupted", "resume_step": 6})
    assert run.manifest()["stages"]["train"]["status"] == "interrupted"
    result = ftviz(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_result(run, reference_run)


# ---- ftviz embed ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trainer_output(tmp_path_factory) -> dict:
    """A real transformers.Trainer run: a tiny ViT, 6 steps, checkpoints at steps 2, 4 and 6,
    on CIFAR-format pickles the test writes (100 train, 30 test images)."""
    from tests.test_ingest import tiny_trainer_output

    return tiny_trainer_output(tmp_path_factory.mktemp("trainer"))


def embed_args(trainer_output: dict, runs: Path) -> list[str]:
    return ["embed", "--checkpoints", str(trainer_output["out"]), "--dataset", "cifar10",
            "--data-path", str(trainer_output["cifar"]), "--name", "kill", "--out-dir", str(runs),
            "--device", "cpu", "--set", "train.embed_precision=fp32", "--set", "score.k=5",
            "--set", "train.follow=false", "-q"]


EMBED_STOPS = [
    # between checkpoints: step 4's snapshot landed, run.json lists only step 2
    ("wrote:step-0000004.npz", "SIGKILL", {"train": "interrupted", "snapshot_steps": [2]}),
    # all checkpoints embedded and scored; the projection just started
    ("stage:project", "SIGKILL", {"train": "done", "score": "done", "project": "interrupted"}),
    # Ctrl-C inside the page's write
    ("write:animation.html", "SIGINT", {"project": "done", "render": "interrupted"}),
]


@pytest.mark.slow
def test_embed_killed_anywhere_resumes_to_the_same_result(trainer_output, tmp_path):
    reference_dir, runs = tmp_path / "reference", tmp_path / "runs"
    result = ftviz(embed_args(trainer_output, reference_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    args = embed_args(trainer_output, runs)
    run = RunDir(runs / "kill")
    for point, signal_name, expected in EMBED_STOPS:
        stopped(ftviz(args, kill_at=point, signal_name=signal_name), signal_name)
        check_stop(run, point, expected)
    before, stages_before = file_states(run), run.manifest()["stages"]
    result = ftviz(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_result(run, RunDir(reference_dir / "kill"))
    # Stopped during render: the rerun embeds nothing and redoes only the stages not done.
    check_only_render_redone(run, before, stages_before)


# ---- a damaged run.json ---------------------------------------------------------------------
def _one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ftviz: error: ")
    return lines[0]


@pytest.mark.parametrize("damage", ["truncated", "empty", "not an object"])
def test_damaged_run_json_is_one_line_that_says_how_to_recover(tiny_run, tmp_path, capsys, damage):
    run_path = tmp_path / "damaged"
    shutil.copytree(tiny_run.path, run_path)
    manifest = run_path / "run.json"
    text = manifest.read_text()
    manifest.write_text({"truncated": text[: len(text) // 2], "empty": "", "not an object": "[1, 2]"}[damage])
    for command in (["score", str(run_path), "-q"], ["render", str(run_path), "-q"]):
        assert main(command) == 2
        error = _one_line_error(capsys)
        assert "run.json" in error and "delete" in error, error
    # the command that makes runs refuses it, --force too: an unreadable run.json is not proof
    # that the folder is an ftviz run, so nothing is deleted
    for force in ([], ["--force"]):
        assert main(["run", "-q", "--set", f"out_dir={tmp_path}", "--set", "name=damaged", *force]) == 2
        assert "not an ftviz run" in _one_line_error(capsys)
        assert (run_path / "snapshots").is_dir() and manifest.read_text() == {
            "truncated": text[: len(text) // 2], "empty": "", "not an object": "[1, 2]"}[damage]
