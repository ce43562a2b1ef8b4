"""`make compare` timed: ViT, Swin and the DDPM on the offline default, then `ftviz compare`.

Each step runs as a fresh process (imports counted), as the make target runs them, into a
temporary folder. The goal is under 5 minutes in all on a 2-core CPU, and for the DDPM run a
sample accuracy >= 0.7 (the share of its last snapshot's generated samples that the ViT run's
final model puts in their conditioning class, from compare.parquet). The machine may be
shared: the load average before and after, and each step's CPU seconds (user + system of the
process, which load does not inflate as much as wall time), are printed beside the times.

    python experiments/bench_compare.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


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
    total = sum(s for _, (s, _) in rows)
    total_cpu = sum(c for _, (_, c) in rows)

    import pandas as pd

    table = pd.read_parquet(out / "compare" / "compare.parquet")
    last = table[(table["frame"] == table["frame"].max()) & table["sample_accuracy"].notna()]

    import torch

    print(f"\n### `make compare` on {cpu_name()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print("| step | seconds | CPU seconds |\n|---|---:|---:|")
    for name, (s, c) in rows:
        print(f"| {name} | {s:.1f} | {c:.1f} |")
    print(f"| **total** (goal < {GOAL_S:.0f}) | **{total:.1f}** | {total_cpu:.1f} |")
    for row in last.itertuples():
        print(f"\nsample accuracy of {row.run} at step {row.step} (judged by {row.sample_classifier}): "
              f"{row.sample_accuracy:.3f} (goal >= 0.7)")
    columns = ["run", "model", "step", "knn_accuracy", "silhouette", "label_issue_auroc", "sample_accuracy",
               *[c for c in table.columns if c.startswith("cka_")]]
    print("\nlast frame of compare.parquet:\n")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for _, row in table[table["frame"] == table["frame"].max()].iterrows():
        print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")
    if holder is not None:
        holder.cleanup()


if __name__ == "__main__":
    main()
