"""Analysis that follows training: followed runs against the same runs analysed after training.

Two measurements, both ways in one run (run it on a quiet machine):

1. ``make animate``'s run (experiments/default.toml) with ``train.follow`` on and off, pairs
   alternated: wall time of the whole command, and how long after training's last snapshot the
   page is complete (animation.html's write time minus the last snapshot file's).
2. The article's probe scale: snapshots of 10,000 x 768 float16 written into a run one every
   ``--every`` seconds (as training on a GPU would: no CPU training lands them this fast), with
   the follower started as a route training on a GPU starts it (``share="idle"``: each frame
   takes the cores nobody else used during the last): per-frame seconds by part (neighbours,
   score, projection) and threads, and the follower's lag in frames when each snapshot lands.
   ``--busy-core`` keeps one core busy meanwhile, as GPU training's feeding loop does; ``--split``
   gives the follower the fixed half of the cores of CPU training instead.

    python experiments/bench_live.py                 # both, 2 pairs, then the scale run
    python experiments/bench_live.py --pairs 3 --skip-scale
    python experiments/bench_live.py --skip-default --frames 12 --every 3 --method tsne
    python experiments/bench_live.py --skip-default --busy-core

Prints markdown tables (for the README).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import shutil
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


def bench_scale(frames: int, every: float, n: int, d: int, method: str, schedule: str = "", lead_in: float = 0.0,
                share: str = "idle", busy_core: bool = False, device: str = "cpu") -> None:
    from ftviz.config import ExperimentConfig, load_config
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
        # The default experiment's projection settings (its t-SNE schedule), then the method asked.
        config.project = load_config(ROOT / "experiments" / "default.toml").project
        config.project.method = method
        if schedule:  # "first/iter/last", e.g. 750/50/0 (the config's own defaults)
            config.project.first_iter, config.project.iter, config.project.last_iter = map(int, schedule.split("/"))
        config.data.dataset = "arrays"
        probe = Probe(np.zeros((n, 2, 2, 3), np.uint8), given, labels, [str(c) for c in range(10)])
        run, _ = open_run(Path(scratch) / "scale", config=config, probe=probe,
                          manifest=lambda: {"name": "scale", "config": config.to_dict()})
        run.mark_stage("train", "running")
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy_core else None
        # "cuda": as a route training on a GPU starts it (the follower may search on the GPU too).
        follower = start_follower(run, device=device, share=share)
        landed, steps = {}, []
        # Training's time before its first snapshot (loading the model and data, the step-0
        # probe pass): 0 writes the first snapshot as the follower starts.
        time.sleep(lead_in)
        begin = time.time()
        for t in range(frames):
            time.sleep(max(0.0, begin + t * every - time.time()))  # one every `every` s, however long writing took
            embedding, logits = synthetic_snapshot(rng, centres, labels, t / max(1, frames - 1))
            step = t * 20
            run.write_snapshot(step, embedding, logits)
            steps.append(step)
            run.update_manifest(snapshot_steps=steps)
            landed[step] = time.time()
        time.sleep(max(0.0, begin + frames * every - time.time()))
        run.mark_stage("train", "done")
        wait_for_follower(follower)
        if busy is not None:
            busy.kill()
            busy.wait()
        analysis = Path(run.path) / "analysis"

        def made(stage, step):
            path = analysis / stage / f"step-{step:07d}.npz"
            return path.stat().st_mtime if path.is_file() else float("nan")

        done_at = {s: max(made("score", s), made("project", s)) for s in steps}
        lag_frames = []
        for s in steps:  # frames landed but not analysed when snapshot s lands
            lag_frames.append(sum(1 for r in steps if landed[r] <= landed[s] and done_at[r] > landed[s]) - 1)
        parts = follower_parts(analysis / "follower.log")
        ready = [line for line in (analysis / "follower.log").read_text().splitlines() if "ready after" in line]
    iterations = (f" (t-SNE iterations {config.project.first_iter} / {config.project.iter} / "
                  f"+{config.project.last_iter})" if method == "tsne" else "")
    print(f"\n{frames} snapshots of {n:,} x {d} landing every {every:g} s, project.method={method}{iterations} "
          f"({cpu_name()}, {os.cpu_count()} cores, " + ("one kept busy, " if busy_core else "")
          + (f"the follower on the idle cores: {', '.join(str(row['threads']) for row in parts)} thread(s) by frame, "
             if share == "idle" else f"the follower on the fixed half of the cores, {parts[0]['threads']} thread(s), ")
          + f"first snapshot {lead_in:g} s after the follower's start"
          + (f", training's device {device}" if device != "cpu" else "") + ")\n")
    names = list(dict.fromkeys(name for row in parts for name in row if name not in ("total", "threads")))
    print("| | total | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, rows in (("first frame (s)", parts[:1]), ("later frames, median (s)", parts[1:])):
        cells = [statistics.median(row.get(name, 0.0) for row in rows) for name in ["total", *names]]
        print(f"| {label} | " + " | ".join(f"{cell:.2f}" for cell in cells) + " |")
    print(f"\nlag (frames landed, not yet analysed, when a snapshot lands): max {max(lag_frames)}, "
          f"median {statistics.median(lag_frames):.0f}; the follower finished "
          f"{max(done_at.values()) - landed[steps[-1]]:.1f} s after the last snapshot landed")
    if ready:
        print(ready[0].replace("follow: ", "the follower was "))


def follower_parts(log: Path) -> list[dict]:
    """Per-frame threads and seconds by part from follower.log ("follow: frame to step S on N thread(s) in T s (part x, ...)")."""
    import re

    rows = []
    for line in log.read_text().splitlines():
        found = re.match(r"follow: frame to step \d+ on ([\d/]+) thread\(s\) in ([\d.]+) s \((.*)\)", line)
        if found:
            row = {"threads": found.group(1), "total": float(found.group(2))}
            row.update({name: float(value) for name, value in
                        (part.rsplit(" ", 1) for part in found.group(3).split(", "))})
            rows.append(row)
    return rows


# ---- 3. the served page in a real browser while the default run trains ----------------------
def bench_browser(chromium: str) -> None:
    """``ftviz run`` (followed) and ``ftviz serve`` side by side, the run's page open in headless
    Chromium: for every frame, the seconds from its snapshot file landing to the page showing
    it (the page's ``meta.T`` growing, read every 0.1 s); and the index's live/finished states."""
    import socket
    import urllib.request

    from playwright.sync_api import sync_playwright

    out = Path(tempfile.mkdtemp(prefix="bench-live-browser-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"

    def status():
        try:
            with urllib.request.urlopen(url + "api/runs/browser", timeout=5) as response:
                return json.load(response)
        except OSError:
            return None

    server = subprocess.Popen([sys.executable, "-m", "ftviz.cli", "serve", str(out), "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    training = subprocess.Popen([sys.executable, "-m", "ftviz.cli", "run", "experiments/default.toml", "-q",
                                 "--set", f"out_dir={out}", "--set", "name=browser"], cwd=ROOT,
                                stdout=subprocess.DEVNULL)
    seen: dict[int, float] = {}  # frame index -> wall time the page first showed it
    states: list[str] = []
    try:
        while not (status() or {}).get("frames"):
            time.sleep(0.2)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(url + "runs/browser/")
            page.wait_for_function("window.ftviz && window.ftviz.ready", timeout=120_000)
            last_state_check = 0.0
            while True:
                now = time.time()
                shown = page.evaluate("window.ftviz.meta.T")
                for t in range(shown):
                    seen.setdefault(t, now)
                if now - last_state_check > 1.0:
                    last_state_check = now
                    current = status() or {}
                    state = "live" if current.get("live") else current.get("state", "?")
                    if not states or states[-1] != state:
                        states.append(state)
                    if training.poll() is not None and page.evaluate("window.ftviz.live && window.ftviz.live.state") \
                            == "finished":
                        break
                time.sleep(0.1)
            steps = page.evaluate("window.ftviz.meta.steps")
            browser.close()
    finally:
        training.wait()
        server.terminate()
        server.wait(timeout=30)
    run = out / "browser"
    latencies = []
    for t, shown_at in sorted(seen.items()):
        landed = (run / "snapshots" / f"step-{steps[t]:07d}.npz").stat().st_mtime
        if shown_at - landed > 0 and t > 0:  # frame 0 was there before the page opened
            latencies.append(shown_at - landed)
    latencies = np.array(latencies)
    print(f"\nserved page in headless Chromium while `make animate`'s run trains ({cpu_name()}, "
          f"{os.cpu_count()} cores): {len(steps)} frames, {len(latencies)} seen arriving\n")
    print("| snapshot landed -> frame on the page | median (s) | 90th percentile (s) | max (s) |")
    print("|---|---:|---:|---:|")
    print(f"| followed run, page polling twice a second | {np.median(latencies):.2f} | "
          f"{np.percentile(latencies, 90):.2f} | {latencies.max():.2f} |")
    print(f"\nthe run's state on the index (/api/runs/browser), in order: {' -> '.join(states)}")
    shutil.rmtree(out, ignore_errors=True)


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
    parser.add_argument("--schedule", default="", help="t-SNE iterations first/iter/last (default: default.toml's)")
    parser.add_argument("--lead-in", type=float, default=0.0,
                        help="seconds from the follower's start to the first snapshot (training's model load and step-0 probe)")
    parser.add_argument("--busy-core", action="store_true", help="keep one core busy, as GPU training's feeding loop does")
    parser.add_argument("--split", action="store_true", help="the follower on the fixed half of the cores (CPU training's share)")
    parser.add_argument("--device", default="cpu", help="where the writer's training would run: cpu, or cuda "
                        "(the follower then searches neighbours on the GPU; experiments/device_check.sh)")
    parser.add_argument("--browser", action="store_true", help="only the served page in Chromium (section 3)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if args.browser:
        bench_browser(args.chromium)
        return
    if not args.skip_default:
        bench_default(args.pairs)
    if not args.skip_scale:
        bench_scale(args.frames, args.every, args.n, args.d, args.method, args.schedule, args.lead_in,
                    share="split" if args.split else "idle", busy_core=args.busy_core, device=args.device)


if __name__ == "__main__":
    main()
