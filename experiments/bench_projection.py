"""Benchmark: which projection shows the clusters, how still it stays, and what it costs.

On one run's snapshots (default: the default experiment, ``make animate``'s run), project
every frame with each method and report

- the last frame's kNN-10 overlap (share of each point's 10 nearest neighbours in the full
  embedding that stay among its 10 nearest in 2-D; the page's "kNN overlap");
- frame-to-frame stability: mean and max Procrustes disparity between consecutive frames
  (scipy's definition, as on the page);
- projection seconds (wall and CPU of this process) and the page's bytes per point-frame
  with those frames (plotly.js and thumbnails excluded);
- ``make animate`` seconds per method: the run's other stages (train, score, detect, render,
  from run.json) plus this method's projection.

Usage::

    python experiments/bench_projection.py                     # trains the default run in a temp dir
    python experiments/bench_projection.py --run runs/vit-digits
    python experiments/bench_projection.py --run runs/vit-digits --methods pca tsne

Timings depend on the machine's load: quality figures (overlap, disparity) do not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The schedules compared: each method as `ftviz project` runs it with these settings.
METHODS = {
    "pca": {"method": "pca"},
    "tsne": {"method": "tsne", "first_iter": 300, "iter": 30, "last_iter": 100},  # experiments/default.toml
    "tsne-long": {"method": "tsne", "first_iter": 500, "iter": 50},
    "umap": {"method": "umap", "first_iter": 200, "iter": 30},
}


def project_with(run, options: dict) -> tuple[np.ndarray, object, float, float]:
    from ftviz.project import FrameProjector, RunSnapshots

    snapshots = RunSnapshots(run, run.snapshot_steps())
    projector = FrameProjector(**options, knn=10, knn_sample=2000)
    wall, cpu = time.perf_counter(), time.process_time()
    frames = projector.fit_transform(snapshots)
    return frames, projector, time.perf_counter() - wall, time.process_time() - cpu


def page_bytes_per_point_frame(run, frames: np.ndarray, projection: dict) -> float:
    from ftviz.render import build_page, load_animation_data

    data = load_animation_data(run)
    data.frames = frames
    data.projection = projection
    _, sizes = build_page(data)
    return sizes["bytes_per_point_frame"]


def other_stage_seconds(run) -> float:
    stages = run.manifest().get("stages", {})
    return sum(float(entry.get("seconds") or 0) for name, entry in stages.items() if name != "project")


def train_default(folder: Path) -> tuple[Path, float]:
    """``make animate``'s run into ``folder``; returns (run path, wall seconds of ftviz run)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftviz.cli", "run", str(ROOT / "experiments/default.toml"),
                    "--set", f"out_dir={folder}", "-q"], check=True, cwd=ROOT)
    return folder / "vit-digits", time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an existing run directory (default: train the default experiment)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()

    from ftviz.align import disparity
    from ftviz.project import METHOD_NAMES
    from ftviz.rundir import RunDir

    folder = None
    animate_s = None
    if args.run:
        path = Path(args.run)
    else:
        folder = Path(tempfile.mkdtemp(prefix="ftviz-bench-projection-"))
        path, animate_s = train_default(folder)
    try:
        run = RunDir(path)
        steps = run.snapshot_steps()
        first = run.load_snapshot(steps[0])[0]
        others = other_stage_seconds(run)
        load = os.getloadavg()[0]
        print(f"\n### Projection of {path.name}: {len(steps)} frames x {first.shape[0]:,} points x {first.shape[1]} dims "
              f"({os.cpu_count()} CPUs, load average {load:.1f} at the start)\n")
        if animate_s is not None:
            print(f"`ftviz run experiments/default.toml` (make animate, as configured): {animate_s:.1f} s wall\n")
        print("| method | schedule | last-frame kNN-10 overlap | mean / max disparity | project s (wall / CPU) "
              "| page B/point-frame | make animate s |")
        print("|---|---|---|---|---|---|---|")
        for name in args.methods:
            options = METHODS[name]
            try:
                frames, projector, wall, cpu = project_with(run, options)
            except Exception as error:  # a missing optional library: report, go on
                print(f"| {name} | failed: {str(error).splitlines()[0]} | | | | | |")
                continue
            moves = [disparity(frames[t - 1], frames[t]) for t in range(1, len(frames))]
            method = options["method"]
            per_point = page_bytes_per_point_frame(run, frames, {"method": method, "name": METHOD_NAMES[method]})
            schedule = ", ".join(f"{k}={v}" for k, v in options.items() if k != "method") or "per-frame PCA"
            print(f"| {name} | {schedule} | {projector.knn_overlap_[-1]:.3f} | {np.mean(moves):.4f} / {np.max(moves):.3f} "
                  f"| {wall:.1f} / {cpu:.1f} | {per_point:.2f} | {others + wall:.1f} |")
        print("\nmake animate s = the run's train, score, detect and render seconds (run.json) + this projection's wall seconds.")
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
