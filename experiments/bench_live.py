"""Analysis that follows training: followed runs against the same runs analysed after training.

Two measurements, both ways in one run (run it on a quiet machine):

1. ``make animate``'s run (experiments/default.toml) with ``train.follow`` on and off, pairs
   alternated: wall time of the whole command, and how long after training's last snapshot the
   page is complete (animation.html's write time minus the last snapshot file's).
2. The article's probe scale: snapshots of 10,000 x 768 float16 written into a run one every
   ``--every`` seconds (as training would), with the follower started as a route starts it:
   per-frame seconds by part (score, projection), and the follower's lag in frames when each
   snapshot lands.

    python experiments/bench_live.py                 # both, 2 pairs, then the scale run
    python experiments/bench_live.py --pairs 3 --skip-scale
    python experiments/bench_live.py --skip-default --frames 12 --every 3 --method tsne

Prints markdown tables (for the README).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---- 1. the default run, followed and not ----------------------------------------------------
def default_run(out_dir: Path, name: str, follow: bool) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftviz.cli", "run", "experiments/default.toml", "-q", "--force",
                    "--set", f"out_dir={out_dir}", "--set", f"name={name}",
                    "--set", f"train.follow={'true' if follow else 'false'}"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    run = out_dir / name
    manifest = json.loads((run / "run.json").read_text())
    last = max(manifest["snapshot_steps"])
    last_snapshot = (run / "snapshots" / f"step-{last:07d}.npz").stat().st_mtime
    page = (run / "animation.html").stat().st_mtime
    stages = manifest["stages"]
    return {"wall": wall, "after_last_snapshot": page - last_snapshot,
            "train": stages["train"].get("seconds", float("nan")),
            "overlap": manifest["stages"]["project"].get("last_knn_overlap", float("nan"))}


def bench_default(pairs: int) -> None:
    rows = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="ftviz-bench-live-") as scratch:
        for index in range(pairs):
            for follow in ((False, True) if index % 2 == 0 else (True, False)):
                rows[follow].append(default_run(Path(scratch), f"{'followed' if follow else 'after'}", follow))
                print(f"pair {index + 1}, follow={follow}: {rows[follow][-1]}", file=sys.stderr)
    median = {follow: {key: statistics.median(r[key] for r in rows[follow]) for key in rows[follow][0]}
              for follow in rows}
    print(f"\n`make animate`'s run, {pairs} pairs alternated, medians ({cpu_name()}, {os.cpu_count()} cores)\n")
    print("| | whole command (s) | training stage (s) | page complete after the last snapshot (s) | last-frame kNN overlap |")
    print("|---|---|---|---|---|")
    for follow, label in ((False, "`train.follow=false` (stages after training)"), (True, "followed (default)")):
        m = median[follow]
        print(f"| {label} | {m['wall']:.1f} | {m['train']:.1f} | {m['after_last_snapshot']:.1f} | {m['overlap']:.3f} |")
    print(f"| ratio followed / after | {median[True]['wall'] / median[False]['wall']:.2f}x | | | |")


# ---- 2. the article's probe scale -----------------------------------------------------------
def synthetic_snapshot(rng, centres, labels, progress: float) -> tuple[np.ndarray, np.ndarray]:
    """10 clusters emerging from noise as ``progress`` goes 0 -> 1: (N, D) and logits (N, C)."""
    noise = rng.normal(size=(len(labels), centres.shape[1])).astype(np.float32)
    embedding = (progress * 3.0) * centres[labels] + noise
    logits = (progress * 4.0) * np.eye(centres.shape[0], dtype=np.float32)[labels] + rng.normal(
        size=(len(labels), centres.shape[0])).astype(np.float32)
    return embedding.astype(np.float16), logits.astype(np.float16)


def bench_scale(frames: int, every: float, n: int, d: int, method: str) -> None:
    from ftviz.config import ExperimentConfig
    from ftviz.follow import start_follower, wait_for_follower
    from ftviz.runs import Probe, open_run

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    given = labels.copy()
    flip = rng.random(n) < 0.1
    given[flip] = (labels[flip] + 1 + rng.integers(0, 9, flip.sum())) % 10
    centres = rng.normal(size=(10, d)).astype(np.float32) / np.sqrt(d) * 8
    with tempfile.TemporaryDirectory(prefix="ftviz-bench-scale-") as scratch:
        config = ExperimentConfig(name="scale", out_dir=scratch)
        config.project.method = method
        config.data.dataset = "arrays"
        probe = Probe(np.zeros((n, 2, 2, 3), np.uint8), given, labels, [str(c) for c in range(10)])
        run, _ = open_run(Path(scratch) / "scale", config=config, probe=probe,
                          manifest=lambda: {"name": "scale", "config": config.to_dict()})
        run.mark_stage("train", "running")
        follower = start_follower(run, device="cuda" if "--gpu" in sys.argv else "cpu")
        landed, steps = {}, []
        for t in range(frames):
            embedding, logits = synthetic_snapshot(rng, centres, labels, t / max(1, frames - 1))
            step = t * 20
            run.write_snapshot(step, embedding, logits)
            steps.append(step)
            run.update_manifest(snapshot_steps=steps)
            landed[step] = time.time()
            time.sleep(every)
        run.mark_stage("train", "done")
        training_end = time.time()
        wait_for_follower(follower)
        analysis = Path(run.path) / "analysis"

        def made(stage, step):
            path = analysis / stage / f"step-{step:07d}.npz"
            return path.stat().st_mtime if path.is_file() else float("nan")

        done_at = {s: max(made("score", s), made("project", s)) for s in steps}
        lag_frames = []
        for s in steps:  # frames landed but not analysed when snapshot s lands
            lag_frames.append(sum(1 for r in steps if landed[r] <= landed[s] and done_at[r] > landed[s]) - 1)
        seconds = []
        previous = None
        for s in steps:
            entry = np.load(analysis / "project" / f"step-{s:07d}.npz")
            score_s = made("score", s) - (previous if previous is not None else landed[s])
            seconds.append((float(entry["seconds"]), score_s))
            previous = done_at[s]
    project_s = [p for p, _ in seconds]
    print(f"\n{frames} snapshots of {n:,} x {d} landing every {every:g} s, project.method={method} "
          f"({cpu_name()}, {os.cpu_count()} cores)\n")
    print("| | first frame | later frames (median) | max lag (frames) | median lag | follower done after training (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| projection (s/frame) | {project_s[0]:.1f} | {statistics.median(project_s[1:]):.2f} | "
          f"{max(lag_frames)} | {statistics.median(lag_frames):.0f} | "
          f"{max(done_at.values()) - training_end:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--skip-default", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--every", type=float, default=3.0)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--method", default="tsne", choices=("pca", "tsne"))
    parser.add_argument("--gpu", action="store_true", help="split cores as for GPU training")
    args = parser.parse_args()
    if not args.skip_default:
        bench_default(args.pairs)
    if not args.skip_scale:
        bench_scale(args.frames, args.every, args.n, args.d, args.method)


if __name__ == "__main__":
    main()
