"""The follower (ftviz/follow.py): analysis frame by frame while training runs, the same
numbers as the stages after training, and stops of either process that resume."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftviz.framecache import FrameCache
from ftviz.rundir import RunDir
from tests import forked

# t-SNE with a short schedule: the warm-started chain is what the follower must reproduce.
PROJECT = {"method": "tsne", "first_iter": 60, "iter": 15, "last_iter": 20, "perplexity": 10.0}

SCRIPT = """
import sys
from tests.conftest import tiny_config
from ftviz.pipeline import run_experiment
config = tiny_config(sys.argv[1], name=sys.argv[2], project={project!r},
                     train={{"follow": sys.argv[3] == "1", "epochs": 2}})
run_experiment(config, progress=False, log=lambda *_: None)
""".format(project=PROJECT)


def _run(out_dir: Path, name: str, *, follow: bool, env: dict | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    # a process of its own, forked with the libraries already imported (tests/forked.py)
    result = forked.run(["-c", SCRIPT, str(out_dir), name, "1" if follow else "0"],
                        cwd=root, env={**os.environ, "PYTHONPATH": str(root), **(env or {})}, timeout=600)
    print(result.stdout, result.stderr, sep="\n")  # shown when the test fails
    return result.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunDir:
    """An uninterrupted followed run."""
    out = tmp_path_factory.mktemp("reference")
    assert _run(out, "followed", follow=True) == 0
    return RunDir(out / "followed")


def assert_same_analysis(run: RunDir, reference: RunDir) -> None:
    pd.testing.assert_frame_equal(run.read_parquet("scores.parquet"), reference.read_parquet("scores.parquet"))
    np.testing.assert_allclose(np.load(run.file("frames.npy")), np.load(reference.file("frames.npy")), atol=1e-6)
    projection, expected = (r.read_parquet("projection.parquet").drop(columns="seconds") for r in (run, reference))
    pd.testing.assert_frame_equal(projection, expected, atol=1e-6)
    pd.testing.assert_frame_equal(run.read_parquet("suspicion.parquet"), reference.read_parquet("suspicion.parquet"))
    assert all(run.stage_status(stage) == "done" for stage in run.manifest()["stages"])


def test_a_followed_run_writes_the_same_numbers_as_the_stages_after_training(reference, tmp_path, monkeypatch):
    run = reference
    steps = run.snapshot_steps()
    # every frame was recorded frame by frame, the last one settled with last_iter
    score_cache = FrameCache(run, "score", {}).folder
    assert sorted(int(p.stem.split("-")[1]) for p in score_cache.glob("step-*.npz")) == steps
    assert (run.path / "analysis" / "project" / f"step-{steps[-1]:07d}.last.npz").is_file()
    log = (run.path / "analysis" / "follower.log").read_text()
    assert f"to step {steps[-1]}" in log  # the follower, not the stages, made the frames
    # The same snapshots analysed after training, with nothing followed: the same numbers.
    # (Training itself runs on fewer threads while followed, so two trainings' snapshots
    # differ in the last bits; the comparison is of the analysis of the same snapshots.)
    from ftviz.config import config_from_manifest
    from ftviz.stages import continue_run

    # On two threads where the follower had one (the suite's OMP_NUM_THREADS=1): the neighbour
    # search and t-SNE give the same numbers on any thread count.
    monkeypatch.setenv("FTVIZ_THREADS", "2")
    after = RunDir(tmp_path / "after")
    shutil.copytree(run.path, after.path)
    shutil.rmtree(after.path / "analysis")
    for stage in ("score", "detect", "project", "render"):
        after.mark_stage(stage, "pending")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2):  # the BLAS too (the suite loads it on one)
        continue_run(after, config_from_manifest(after.manifest()), progress=False, log=lambda *_: None)
    assert_same_analysis(after, run)
    assert not (after.path / "analysis" / "follower.log").exists()


def test_a_run_with_follow_false_starts_no_follower(tmp_path):
    assert _run(tmp_path, "plain", follow=False) == 0
    run = RunDir(tmp_path / "plain")
    assert not (run.path / "analysis" / "follower.log").exists()
    assert all(run.stage_status(stage) == "done" for stage in run.manifest()["stages"])


def test_the_follower_killed_mid_frame_costs_only_time(reference, tmp_path):
    # SIGKILL inside the follower's write of step 4's score file: training goes on, and the
    # stages after it make the frames the follower did not.
    env = {"FTVIZ_TEST_FOLLOWER_KILL_AT": "write:step-0000004.npz", "FTVIZ_TEST_KILL_SIGNAL": "SIGKILL"}
    assert _run(tmp_path, "follower-killed", follow=True, env=env) == 0
    run = RunDir(tmp_path / "follower-killed")
    # the frame it was writing was made again by the stage (its temporary file is never read)
    assert (run.path / "analysis" / "score" / "step-0000004.npz").is_file()
    assert "to step 4" not in (run.path / "analysis" / "follower.log").read_text()
    assert_same_analysis(run, reference)


def test_training_killed_while_the_follower_works_resumes_to_the_same_result(reference, tmp_path):
    env = {"FTVIZ_TEST_KILL_AT": "wrote:step-0000006.npz"}
    assert _run(tmp_path, "killed", follow=True, env=env) == -signal.SIGKILL
    run = RunDir(tmp_path / "killed")
    assert run.stage_status("train") == "interrupted"
    assert _run(tmp_path, "killed", follow=True) == 0  # the same command resumes
    assert_same_analysis(run, reference)


def test_the_follower_scores_without_hugging_face_datasets():
    """The follower blocks `import datasets` (cleanlab's Datalab pulls it in, ~0.5 s of the
    follower's start); cleanlab's scores and flags must work without it, as they do here."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from ftviz.follow import _without_hf_datasets\n"
        "_without_hf_datasets()\n"
        "import cleanlab.filter, cleanlab.rank\n"
        "from ftviz.detectors import label_quality\n"
        "labels = np.repeat(np.arange(3), 20); probs = np.full((60, 3), 0.05); probs[np.arange(60), labels] = 0.9\n"
        "probs[0] = [0.05, 0.9, 0.05]; probs /= probs.sum(1, keepdims=True)\n"
        "quality, flags = label_quality(probs=probs, labels=labels)\n"
        "print(sys.modules['datasets'] is None, int(flags.sum()), int(np.argmin(quality)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "1", "0"]


def test_thread_split_leaves_each_process_a_core():
    from ftviz.follow import thread_split

    assert thread_split(2) == (1, 1)
    assert thread_split(16) == (8, 8)
    assert thread_split(1) == (1, 1)


def test_idle_cores_leave_out_the_cores_another_process_keeps_busy():
    """Training on a GPU, the follower takes the cores nobody else used during its last frame."""
    import subprocess
    import sys
    import time

    from ftviz.follow import IdleCores, available_cores

    cores = available_cores()
    idle = IdleCores(most=cores)
    assert 1 <= idle() <= cores
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        idle()
        time.sleep(1.0)
        assert idle() <= max(1, cores - 1)  # the spinning process's core is not offered
    finally:
        busy.kill()
        busy.wait()
    assert IdleCores(most=1)() == 1


def test_idle_cores_read_the_last_frame_or_the_last_window_of_waiting(monkeypatch):
    """The share is measured over the frame just made, or over the last WINDOW_S seconds of
    waiting (a 0.2 s poll alone would read one snapshot write as a core taken)."""
    from ftviz.follow import IdleCores

    samples = iter([
        (0.0, 0.0, 0.0),      # start
        (1.0, 0.5, 0.0),      # waiting: another process busy half a core
        (2.0, 1.0, 0.0),      # waiting
        (2.2, 1.2, 0.0),      # frame starts: over the last 1.5 s (from t=0.0, the latest sample that old), 0.55 busy
        (5.2, 7.2, 3.0),      # frame ends: 6 s busy of which the follower's own 3, over 3 s: one core taken
    ])
    monkeypatch.setattr(IdleCores, "_sample", lambda self: next(samples))
    idle = IdleCores(most=2)
    idle.cpus = {"cpu0", "cpu1"}
    idle.note()
    idle.note()
    assert idle() == 1  # 2 - 0.55 = 1.45, to the nearest core: the other process's half core is not offered
    assert idle() == 1  # 2 - 1.0


def test_cpu_threads_follow_ftviz_threads_then_omp_num_threads(monkeypatch):
    from ftviz.numerics import available_cores, cpu_threads

    monkeypatch.delenv("FTVIZ_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads() == available_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.setenv("FTVIZ_THREADS", "5")
    assert cpu_threads() == 5


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to lend one")
def test_a_probe_pass_takes_the_followers_core_only_while_it_waits(tmp_path):
    """Training on the CPU beside a split follower: the probe pass runs on every core when the
    follower has analysed every snapshot so far, on training's share otherwise."""
    import subprocess

    import torch

    from ftviz import follow
    from ftviz.rundir import snapshot_name

    run = RunDir(tmp_path / "run")
    (run.path / "analysis" / "score").mkdir(parents=True)
    stand_in = subprocess.Popen(["sleep", "60"])  # the follower's process, alive
    follow._SPLIT[str(run.path.resolve())] = (stand_in, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def threads_during(steps) -> int:
            with follow.probe_pass_threads(run, steps):
                return torch.get_num_threads()

        assert threads_during([0, 10]) == 1  # step 10 not analysed yet: the follower is busy
        (run.path / "analysis" / "score" / snapshot_name(10)).write_bytes(b"")
        assert threads_during([0, 10]) == len(os.sched_getaffinity(0))  # it waits: its core is lent
        assert torch.get_num_threads() == 1  # and given back after the pass
        stand_in.kill()
        stand_in.wait()
        assert threads_during([0, 10]) == 1  # an ended follower lends nothing
        assert follow.probe_pass_threads(RunDir(tmp_path / "other"), [0]).__enter__().threads is None
    finally:
        follow._SPLIT.pop(str(run.path.resolve()), None)
        stand_in.kill()
        torch.set_num_threads(before)


def test_a_stopped_follower_is_forgotten_by_the_probe_pass(tmp_path):
    import subprocess

    from ftviz import follow

    stand_in = subprocess.Popen(["sleep", "60"])
    follow._SPLIT[str((tmp_path / "run").resolve())] = (stand_in, 1)
    follow.stop_follower(stand_in)
    assert all(entry is not stand_in for entry, _ in follow._SPLIT.values())
    assert stand_in.poll() is not None
