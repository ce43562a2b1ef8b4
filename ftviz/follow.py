"""The follower: analysis that keeps pace with training, in a process of its own.

While a route trains (``ftviz run``, ``FtvizCallback``, ``ftviz embed``), rank 0 starts
``python -m ftviz.follow RUN``. It watches ``run.json`` for snapshot steps and analyses each
frame as it lands, with the same per-frame functions the stages use after training
(:func:`ftviz.quality.score_frames`, :func:`ftviz.project.project_frames`), recording each
frame's results under ``analysis/`` (see :mod:`ftviz.framecache`). When training is done it
finishes the frames left and exits; the training process then runs the stages of the table,
which find every frame already made and only assemble, detect and render.

Why a process apart: a crash or a slow frame in the analysis never stops training, and the
analysis uses cores training leaves idle. A follower that dies costs nothing but time: the
stages make the frames it did not. Killed anywhere, it loses at most the frame in progress.

Frames go one at a time, and each frame's exact neighbour search is made once for both its
score and its projection (:class:`FrameNeighbours`); ``analysis/follower.log`` has one line a
frame with its seconds by part (neighbours, score, project, detect).

How the cores are shared (``start_follower``'s ``share``):

- "split", training on the CPU: :func:`thread_split` gives training half (at least one) and
  the follower the rest, fixed. Measured on 2 cores (``make animate``'s run): two processes
  left to their own thread counts gained nothing; training on 2 threads beside a follower
  niced to 19 on the idle share took 48 s to train instead of 37.5 s on 1 thread (torch's
  threads wait for the one the follower delays); one thread each is the fastest. A follower
  under SCHED_IDLE (it runs only where no other task wants a core, and yields at each wake-up)
  beside training on 2 threads was worse still: training took 52.6 s against 40.1 s split
  (27.6 s alone; two runs each alternated, 2026-12-02). Nor did training on 2 threads while
  the follower slept and 1 while it worked (read from /proc at each step): 39.9 s to train
  against 36.8 s split, one run each, and its numbers would change with the timing. Once
  training is done the follower takes every core for the frames left and the last frame's
  settle: on a 2-core AMX Xeon the last frame took 0.70-0.88 s on two threads against
  1.36-1.39 s on one, and the page was complete 1.8 s after the last snapshot instead of 2.8
  (on the Zen 3 EPYC of 2026-12-02 the last frame alone gained nothing: 1.60 and 1.72 s
  against 1.49 s, training's process scoring and detecting beside it).
  A probe pass that comes while the follower waits for it (every frame so far analysed)
  takes every core for its duration (:class:`probe_pass_threads`): with PCA frames, where the
  follower mostly waits, the default run took 0.94x the time of the same run without
  (median of 5 pairs, AMX Xeon); with t-SNE frames on that machine the follower was busy at
  34 of 35 passes, so nothing changed there (1.00x over 5 pairs with fp32 probe passes too).
- "idle", training on a GPU: training keeps a core or so busy feeding it, and its data
  workers some more; the follower takes, frame by frame, the cores nobody else used during
  the frame before (:class:`IdleCores`, from ``/proc/stat``).

A frame's threads reach its neighbour search and t-SNE through ``FTVIZ_THREADS``
(:func:`ftviz.numerics.cpu_threads`) and the BLAS through threadpoolctl; neither changes the
numbers, only how soon they are ready.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ftviz.numerics import available_cores
from ftviz.rundir import RunDir, snapshot_name

STARTED = time.perf_counter()  # the follower's process: imported first thing (python -m ftviz.follow)
POLL_S = 0.2  # how often run.json is read while waiting for a snapshot
DETECT_EVERY = 5  # frames between the follower's interim suspicion tables (the detect stage makes the final one)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def thread_split(cores: int | None = None) -> tuple[int, int]:
    """(training threads, follower threads) for ``cores`` CPU cores, training on the CPU: half each."""
    cores = max(1, cores or available_cores())
    if cores == 1:
        return 1, 1
    training = max(1, cores // 2)
    return training, max(1, cores - training)


class IdleCores:
    """The follower's threads for its next frame: the cores nobody else used of late.

    Reads ``/proc/stat`` (busy time of each core this process may run on) and
    ``/proc/self/stat`` (the follower's own time): idle = cores - (busy - own) / elapsed,
    rounded to the nearest core, at least one and at most ``most``, over the last frame, or
    over the last WINDOW_S seconds when the follower was waiting (:meth:`note` while it
    waits; a shorter window reads one write of a snapshot as a core taken). Where ``/proc``
    is not there (macOS), ``most``. The follower also runs niced (``start_follower``), so
    where both want a core, training wins.
    """

    WINDOW_S = 1.5

    def __init__(self, most: int):
        self.most = max(1, most)
        try:
            self.cpus = {f"cpu{index}" for index in os.sched_getaffinity(0)}
        except AttributeError:
            self.cpus = set()
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._samples: list[tuple[float, float, float]] = []
        self.note()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            busy = 0
            with open("/proc/stat") as stat:
                for line in stat:
                    name, *fields = line.split()
                    if name in self.cpus:  # user nice system idle iowait irq softirq steal ...
                        values = [int(value) for value in fields[:8]]
                        busy += sum(values) - values[3] - values[4]
            with open("/proc/self/stat") as stat:
                own = stat.read().rsplit(")", 1)[1].split()  # after the command name: state is field 3
            return time.monotonic(), busy / self.ticks, (int(own[11]) + int(own[12])) / self.ticks
        except (OSError, ValueError, IndexError):
            return None

    def note(self) -> None:
        """Take a sample now (the follower waits between frames); keeps the last WINDOW_S seconds' worth."""
        sample = self._sample()
        if sample is None:
            return
        self._samples.append(sample)
        recent = [t for t, entry in enumerate(self._samples) if entry[0] >= sample[0] - self.WINDOW_S]
        self._samples = self._samples[max(0, recent[0] - 1):]  # and the one just before the window

    def __call__(self) -> int:
        now = self._sample()
        if now is None or not self._samples or not self.cpus:
            return self.most
        # The latest sample at least WINDOW_S old (else the oldest): the window just ended.
        base = next((entry for entry in reversed(self._samples) if entry[0] <= now[0] - self.WINDOW_S),
                    self._samples[0])
        self._samples = [now]
        if now[0] - base[0] < 0.05:
            return self.most
        others = max(0.0, (now[1] - base[1]) - (now[2] - base[2])) / (now[0] - base[0])
        return max(1, min(self.most, int(len(self.cpus) - others + 0.5)))


def start_follower(run: RunDir, *, device: str = "cpu", share: str | None = None, log=None) -> subprocess.Popen | None:
    """Start the follower of ``run`` (rank 0 only); returns its process, or None when off.

    ``device`` is where training runs ("cpu", "cuda", ...). ``share``: how the cores are
    shared, "split" or "idle" (the module's docstring); default "split" when training runs on
    the CPU, else "idle". With "split" the training process's own torch threads are set here.
    """
    from ftviz.config import config_from_manifest

    config = config_from_manifest(run.manifest())
    if not config.train.follow:
        return None
    gpu = not str(device).startswith("cpu")
    share = share or ("idle" if gpu else "split")
    if share not in ("split", "idle"):
        raise ValueError(f"share must be 'split' or 'idle', got {share!r}")
    if share == "split":
        training_threads, follower_threads = thread_split()
        try:
            import torch

            torch.set_num_threads(training_threads)
        except ImportError:
            pass
    else:  # the most it may take; each frame takes what was idle (IdleCores)
        follower_threads = max(1, available_cores())
    env = dict(os.environ, **{name: str(follower_threads) for name in THREAD_VARIABLES})
    env["FTVIZ_FOLLOWER_SHARE"] = share
    # Sharing cores it measures as idle, the follower yields to training at once when training
    # wants one back (a GPU's feeding loop waits for no analysis).
    nice = (lambda: os.nice(10)) if share == "idle" and hasattr(os, "nice") else None
    env.pop("FTVIZ_TEST_KILL_AT", None)  # a test's stop point is training's, not the follower's
    # Training on the CPU: so is the analysis ([score] device "auto" would import torch, ~2 s of
    # the follower's start, only to find no GPU). Training on a GPU: the analysis may use it too.
    env["FTVIZ_FOLLOWER_DEVICE"] = "auto" if gpu else "cpu"
    env["FTVIZ_FOLLOWER_PARENT"] = str(os.getpid())
    log_path = run.path / "analysis" / "follower.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "ftviz.follow", str(run.path)],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env,
            start_new_session=True,  # Ctrl-C in the terminal stops training; training stops the follower
            preexec_fn=nice,
        )
    if share == "split":
        _SPLIT[str(Path(run.path).resolve())] = (process, training_threads)
    if log is not None:
        threads = f"{follower_threads} thread(s)" if share == "split" else f"the idle cores of {follower_threads}"
        log(f"ftviz: following the run as it trains (pid {process.pid}, {threads})")
    _import_later_stages()
    return process


# Followers started here on the "split" share: run folder -> (process, training's threads).
_SPLIT: dict[str, tuple[subprocess.Popen, int]] = {}


class probe_pass_threads:
    """``with probe_pass_threads(run, steps):`` around a probe pass of training on the CPU.

    On the split share, training has half the cores and the follower the rest. A probe pass
    comes every ``snapshot_every`` steps; when the follower has already analysed every
    snapshot in ``steps`` it sits waiting for this one, so the pass takes every core for its
    duration, then training's share is set back. Otherwise (no follower of this process, on
    another share, still busy, or ended) nothing changes. Only the pass's speed changes:
    the training steps keep their threads, so their numbers do not depend on the follower's
    timing, and the pass's own outputs were bitwise the same on 1 and 2 threads (the default
    run's model, all 1,797 digits, fp32 and bf16 autocast, AMX Xeon).
    """

    def __init__(self, run, steps):
        self.entry = _SPLIT.get(str(Path(run.path).resolve()))
        self.run, self.steps, self.threads = run, list(steps), None

    def __enter__(self) -> "probe_pass_threads":
        if self.entry is None or self.entry[0].poll() is not None:
            return self
        # The follower scores a frame last: its score file for the latest snapshot means it is done.
        latest = Path(self.run.path) / "analysis" / "score" / snapshot_name(max(self.steps)) if self.steps else None
        waiting = latest is None or latest.is_file()
        cores = available_cores()
        if waiting and cores > self.entry[1]:
            import torch

            self.threads = torch.get_num_threads()
            torch.set_num_threads(cores)
        return self

    def __exit__(self, *exc) -> None:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)


# What training's process runs once training ends (score, detect, render): imported while it
# trains, so the seconds between the last snapshot and the page are not spent on imports.
LATER_STAGE_MODULES = ("ftviz.quality", "ftviz.detectors", "cleanlab.filter", "cleanlab.count", "sklearn.mixture",
                       "ftviz.project", "ftviz.render.page")


def _import_later_stages() -> None:
    import threading

    threading.Thread(target=_import_quietly, args=(LATER_STAGE_MODULES,), name="ftviz-import-later-stages",
                     daemon=True).start()


def _import_quietly(names) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # an extra not installed: the stage says so when it runs
            pass


# What the follower's first frame needs beyond its own imports (cleanlab alone is ~1.5 s):
# imported as it starts, while training still loads the model and probes step 0.
FRAME_MODULES = ("cleanlab.filter", "cleanlab.rank", "cleanlab.internal.outlier", "scipy.spatial")
PROJECTION_MODULES = {"tsne": ("openTSNE",), "umap": ("umap",)}


def _import_frame_modules(config, device: str) -> None:
    # The projection's first: a frame is projected before it is scored.
    _import_quietly(PROJECTION_MODULES.get(config.project.method, ()) + FRAME_MODULES
                    + (("torch",) if device != "cpu" else ()))


def wait_for_follower(process: subprocess.Popen | None, *, timeout_s: float | None = None) -> bool:
    """Wait for the follower to finish the frames left (training is done); True if it did."""
    if process is None:
        return False
    _forget_split(process)  # training is done: no probe pass is left to lend a core to
    try:
        return process.wait(timeout=timeout_s) == 0
    except subprocess.TimeoutExpired:
        stop_follower(process)
        return False


def finish_after_training(run: RunDir, config, follower: subprocess.Popen | None, *, progress: bool = True,
                          log=print) -> None:
    """Training is marked done: the later stages, beside the follower while it ends.

    Score and detect read the snapshots and the per-frame scores only, so they run while the
    follower makes its last frame and settles it (a frame both score is the same file, written
    atomically); the projection waits for the follower's chain of frames, then render.
    """
    from ftviz.stages import continue_run

    if follower is not None:
        continue_run(run, config, progress=progress, log=log, before="project")
        if run.stage_status("project") != "done":
            # The follower's last frames are the projection's work: recorded as running (with
            # this pid), so `ftviz serve` reads "analysing", and "interrupted" if this dies.
            run.mark_stage("project", "running")
    wait_for_follower(follower)
    continue_run(run, config, progress=progress, log=log)


def _forget_split(process: subprocess.Popen) -> None:
    """Drop ``process`` from the split followers (a notebook may train many runs in one process)."""
    for key in [key for key, (entry, _) in _SPLIT.items() if entry is process]:
        del _SPLIT[key]


def stop_follower(process: subprocess.Popen | None) -> None:
    """End the follower now (training stopped); its recorded frames stay."""
    if process is not None:
        _forget_split(process)
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def ready_steps(run: RunDir) -> list[int]:
    """Snapshot steps listed in run.json whose files exist (the recorder writes the file first)."""
    steps = [int(step) for step in run.manifest().get("snapshot_steps", [])]
    return [step for step in steps if (run.snapshots_dir / snapshot_name(step)).is_file()]


def follow(path, *, poll_s: float = POLL_S, log=print) -> int:
    """Analyse ``path``'s frames as they land until training ends; returns an exit code.

    0: training is done and every frame is analysed. 1: training stopped unfinished
    (interrupted or failed): the frames made so far stay for the rerun.
    """
    from ftviz.config import config_from_manifest
    from ftviz.detectors import interim_suspicion
    from ftviz.project import project_frames
    from ftviz.quality import score_frames

    run = RunDir(path)
    config = config_from_manifest(run.manifest())
    device = config.score.device
    if device == "auto":
        device = os.environ.get("FTVIZ_FOLLOWER_DEVICE", "auto")
    # Imported beside the wait for the first snapshot and its neighbour search (numpy, which
    # releases the interpreter while it multiplies): a frame's first use of cleanlab waits
    # for its import to finish, never repeats it.
    import threading

    def import_frame_modules() -> None:
        _import_frame_modules(config, device)
        log(f"follow: ready after {time.perf_counter() - STARTED:.2f} s of imports")

    threading.Thread(target=import_frame_modules, name="ftviz-follower-imports", daemon=True).start()
    most = int(os.environ.get("OMP_NUM_THREADS") or available_cores())
    idle = IdleCores(most) if os.environ.get("FTVIZ_FOLLOWER_SHARE") == "idle" else (lambda: most)
    ended = False  # training is done: once read, it stays so (run.json is not read again for it)

    def training_done() -> bool:  # asked at each frame: the frames left may be several
        nonlocal ended
        ended = ended or run.stage_status("train") == "done"
        return ended

    def share() -> int:
        # Once training is done its cores are free (its process only scores and detects, ~0.5 s):
        # the frames left and the last frame's settle take them all.
        return available_cores() if training_done() else idle()

    # A frame's share is asked as it starts and again after its neighbour search (a first
    # frame's search can outlast training's start-up, which held a core).
    neighbours = FrameNeighbours(config, device, after_search=lambda: _use_threads(share()))
    scored: set[int] = set()
    following_projection = True
    detected_at = 0
    while True:
        status = run.stage_status("train")  # read before the steps: a step listed by then is final
        ended = ended or status == "done"
        steps = ready_steps(run)
        new = [step for step in steps if step not in scored]
        for step in new:  # a frame at a time: its projection and score share one neighbour search
            neighbours.threads = [_use_threads(share())]
            clock = _PartClock(neighbours)
            # The projection first: the score's cleanlab may still be importing (the first
            # frame, when it lands as the follower starts) and finishes meanwhile.
            if following_projection:
                # Training was done before the steps were read: these are all of them, so the
                # last frame's settle (project.last_iter) is made here too, not in the stage after.
                upto = steps[: steps.index(step) + 1]
                following_projection = project_frames(run, config.project, upto, collect=False,
                                                      final=status == "done" and step == steps[-1],
                                                      neighbours=neighbours) is not None
                clock.lap("project")
            score_frames(run, config.score, [step], neighbours=neighbours)
            scored.add(step)
            clock.lap("score")
            # The suspicion cards, refreshed now and then while training runs; once it is done
            # the detect stage writes the final ones (beside this process: never overwrite them).
            if len(scored) - detected_at >= DETECT_EVERY and not training_done():
                if interim_suspicion(run, config.detect, config.score, sorted(scored)):
                    detected_at = len(scored)
                clock.lap("detect")
            threads = "/".join(map(str, dict.fromkeys(neighbours.threads)))  # "2", or "1/2" where it changed
            log(f"follow: frame to step {step} on {threads} thread(s) in {clock.describe()}")
        if new:
            continue
        if status == "done":
            return 0
        if status not in ("running", "pending") or not _parent_alive():
            return 1
        if isinstance(idle, IdleCores):
            idle.note()  # waiting: the next frame's share is what the others use meanwhile
        time.sleep(poll_s)


class _PartClock:
    """Seconds of one frame by part, the shared neighbour search counted apart (for follower.log)."""

    def __init__(self, neighbours: "FrameNeighbours"):
        self.neighbours, self.parts = neighbours, {"neighbours": 0.0}
        self.started = self.mark = time.perf_counter()
        self.searched = neighbours.seconds

    def lap(self, part: str) -> None:
        now, searched = time.perf_counter(), self.neighbours.seconds
        self.parts["neighbours"] += searched - self.searched
        self.parts[part] = now - self.mark - (searched - self.searched)
        self.mark, self.searched = now, searched

    def describe(self) -> str:
        parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in self.parts.items())
        return f"{time.perf_counter() - self.started:.2f} s ({parts})"


class FrameNeighbours:
    """The frame's one neighbour search, shared by its score and its projection.

    Called as ``neighbours(step, X)`` by :func:`ftviz.quality.score_frames` and
    :func:`ftviz.project.project_frames`: the first call for a step searches every set both
    stages need at once (:class:`ftviz.numerics.NeighbourSearch`: the cosine neighbours of the
    outlier score, t-SNE's Euclidean ones, the overlap diagnostic's), later calls for that step
    reuse it. The stages after training search each for itself: the same neighbours.
    """

    def __init__(self, config, device: str, after_search=None):
        self.config, self.device, self.after_search = config, device, after_search
        self.step: int | None = None
        self.search = None
        self.seconds = 0.0  # spent searching, for the log's parts
        self.threads: list[int] = []  # the threads of each frame's parts (for the log)

    def __call__(self, step: int, X):
        if step != self.step:
            from ftviz.numerics import NeighbourSearch
            from ftviz.project import neighbour_queries as projection_queries
            from ftviz.quality import neighbour_queries as score_queries

            queries = score_queries(self.config.score, X.shape) + projection_queries(self.config.project, len(X))
            self.step, self.search = None, None  # a failed search is not kept for the next step
            started = time.perf_counter()
            self.search = NeighbourSearch(X, queries, device=self.device, search="auto")
            self.seconds += time.perf_counter() - started
            self.step = step
            if self.after_search is not None:  # the share asked again for the rest of the frame
                self.threads.append(self.after_search())
        return self.search


def _use_threads(threads: int) -> int:
    """This frame's threads: for the neighbour search and t-SNE (FTVIZ_THREADS) and the BLAS."""
    os.environ["FTVIZ_THREADS"] = str(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
    except ImportError:
        pass
    return threads


def _parent_alive() -> bool:
    """Whether the training process that started this follower still runs."""
    parent = os.environ.get("FTVIZ_FOLLOWER_PARENT")
    if not parent:
        return True
    try:
        os.kill(int(parent), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _without_hf_datasets() -> None:
    """Make ``import datasets`` fail in this process (unless something imported it already).

    The follower reads snapshots, never a Hugging Face dataset; but ``import cleanlab`` imports
    its Datalab, which imports ``datasets`` (and pyarrow's compute, dill, multiprocess), and
    falls back to a stub when that import fails. At 10,000 x 768 snapshots every 3 s (Zen 3,
    alternated pairs) the follower was ready after 1.75-2.85 s against 2.14-3.44 s, and its
    t-SNE max lag was 1, 1 and 3 (the first snapshot as it starts) against 2, 2 and 4.
    """
    sys.modules.setdefault("datasets", None)  # None in sys.modules: the import raises ImportError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ftviz.follow RUN", file=sys.stderr)
        return 2
    from ftviz.rundir import KILL_AT_ENV

    # Test hook (tests/test_follow.py): stop the follower, not training, at a point.
    if os.environ.get("FTVIZ_TEST_FOLLOWER_KILL_AT"):
        os.environ[KILL_AT_ENV] = os.environ["FTVIZ_TEST_FOLLOWER_KILL_AT"]
    # The follower's threads reach numpy's BLAS, openTSNE and torch (where it is imported at
    # all) through OMP_NUM_THREADS and its kin, which start_follower sets.
    _without_hf_datasets()
    try:
        return follow(Path(argv[0]))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    code = main()
    # Every file is written and closed (atomic renames): skip the interpreter's teardown of
    # torch, openTSNE and cleanlab (about a second) that training's process would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
