"""`make compare` timed: ViT, Swin and the DDPM on the offline default, then `ftviz compare`.

Each step runs as a fresh process (imports counted), as the make target runs them, into a
temporary folder. The goal is under 5 minutes in all on a 2-core CPU. The machine may be
shared: the load average before and after is printed beside the times.

    python experiments/bench_compare.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("default.toml", "swin_digits.toml", "ddpm_digits.toml")
GOAL_S = 300.0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write the runs here (default: a temporary folder, removed)")
    args = parser.parse_args()
    holder = None
    if args.keep:
        out = Path(args.keep)
    else:
        holder = tempfile.TemporaryDirectory(prefix="ftviz-bench-compare-")
        out = Path(holder.name)
    from ftviz.config import load_config

    ftviz = [sys.executable, "-m", "ftviz.cli"]
    load_before = os.getloadavg()
    rows, runs = [], []
    for experiment in EXPERIMENTS:
        seconds = timed([*ftviz, "run", str(ROOT / "experiments" / experiment), "-q", "--force",
                         "--set", f"out_dir={out}"])
        run = out / load_config(ROOT / "experiments" / experiment).name
        manifest = json.loads((run / "run.json").read_text())
        runs.append(run)
        train = manifest["stages"]["train"]
        label = (f"`ftviz run experiments/{experiment}` ({manifest['model']['name']}, "
                 f"{train.get('total_steps')} steps, {len(manifest['snapshot_steps'])} frames, "
                 f"true accuracy {train.get('final_true_accuracy', float('nan')):.3f})")
        rows.append((label, seconds))
    seconds = timed([*ftviz, "compare", *map(str, runs), "--out", str(out / "compare"), "-q"])
    rows.append((f"`ftviz compare` ({len(runs)} runs)", seconds))
    load_after = os.getloadavg()
    total = sum(s for _, s in rows)

    import torch

    print(f"\n### `make compare` on {cpu_name()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print("| step | seconds |\n|---|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.1f} |")
    print(f"| **total** (goal < {GOAL_S:.0f}) | **{total:.1f}** |")
    if holder is not None:
        holder.cleanup()


if __name__ == "__main__":
    main()
