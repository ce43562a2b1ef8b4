"""End to end: ftviz's default experiment against the article's pipeline, same run, same machine.

Both run as fresh processes (imports counted) on the same workload: digits as 32x32 RGB with
10% flipped labels, the same ViT and training recipe (the experiment's epochs, batch size,
learning rate and warmup), a frame (the peer: a checkpoint) every ``snapshot_every`` steps, every
image embedded at every frame. Before 2026-12-05 the peer trained its own defaults (3 epochs at
batch 32, a checkpoint every 5 steps: the same number of frames, half the training). Prints a
markdown table with seconds, disk written and ratios.

    python experiments/bench_pipeline.py [--skip-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_ftviz(out: Path, experiment: Path) -> dict:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ftviz.cli", "run", str(experiment), "-q", "--force", "--set", f"out_dir={out}"],
        check=True, cwd=ROOT,
    )
    total = time.perf_counter() - start
    run = next(p for p in out.iterdir() if (p / "run.json").is_file())
    manifest = json.loads((run / "run.json").read_text())
    stages = {name: info.get("seconds", float("nan")) for name, info in manifest["stages"].items()}
    return {"total": total, "bytes": disk_bytes(run), "frames": len(manifest["snapshot_steps"]),
            "accuracy": manifest["stages"]["train"].get("final_true_accuracy"), **stages}


def run_peer(out: Path, model: dict, train) -> dict:
    """The article's pipeline on the same model and training recipe as ftviz's run (``train``:
    the experiment's [train] section), a checkpoint at each of ftviz's snapshot intervals."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "peer_pipeline.py"), str(out),
         "--epochs", str(train.epochs), "--batch-size", str(train.batch_size), "--lr", str(train.lr),
         "--warmup-ratio", str(train.warmup_ratio), "--save-steps", str(train.snapshot_every),
         "--patch", str(model.get("patch_size", 4)), "--hidden", str(model.get("hidden_size", 128)),
         "--layers", str(model.get("num_hidden_layers", 4)), "--mlp", str(model.get("intermediate_size", 512)),
         "--heads", str(model.get("num_attention_heads", 4))],
        check=True, cwd=ROOT, capture_output=True, text=True,
    )
    total = time.perf_counter() - start
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    return {**timings, "total": total, "bytes": disk_bytes(out)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "default.toml"))
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from ftviz.config import load_config
    from ftviz.models import create_model

    config = load_config(args.experiment)
    probe = create_model(config.model.name, num_classes=10, image_size=32, **config.model.options)
    vit = probe.hf_model.config
    model = {k: getattr(vit, k) for k in ("patch_size", "hidden_size", "num_hidden_layers",
                                          "intermediate_size", "num_attention_heads")}

    work = Path(tempfile.mkdtemp(prefix="ftviz-bench-"))
    try:
        ours = run_ftviz(work / "ftviz", Path(args.experiment))
        peer = None if args.skip_peer else run_peer(work / "peer", model, config.train)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cpu = platform.processor() or platform.machine()
    print(f"\nMachine: {os.cpu_count()} cores ({cpu}), {platform.system()}, Python {platform.python_version()}")
    print(f"Workload: digits 1,797 x 32x32 RGB, 10% noise, ViT {model}, "
          f"{config.train.epochs:g} epochs, batch {config.train.batch_size}, frame every {config.train.snapshot_every} steps\n")
    print("| | ftviz | article's pipeline | ratio |")
    print("|---|---:|---:|---:|")
    if peer:
        print(f"| end to end, imports included (s) | {ours['total']:.1f} | {peer['total']:.1f} | {peer['total'] / ours['total']:.1f}x faster |")
        print(f"| disk written (MB) | {ours['bytes'] / 1e6:.1f} | {peer['bytes'] / 1e6:.1f} | {peer['bytes'] / ours['bytes']:.0f}x less |")
        print(f"| frames | {ours['frames']} | {peer['frames']} | |")
        print(f"| train + snapshots (s) | {ours['train']:.1f} | {peer['train'] + peer['embed']:.1f} | |")
        print(f"| scores (s) | {ours['score']:.1f} | {peer['cleanlab']:.1f} | |")
        print(f"| projection + alignment (s) | {ours['project']:.1f} | {peer['project']:.1f} | |")
        print(f"| render (s) | {ours['render']:.1f} | {peer['render']:.1f} | |")
    else:
        for key in ("total", "train", "score", "project", "render"):
            print(f"| {key} (s) | {ours[key]:.1f} | | |")
        print(f"| disk written (MB) | {ours['bytes'] / 1e6:.1f} | | |")
    print(f"\nftviz final probe accuracy against the true labels: {ours['accuracy']:.3f}")


if __name__ == "__main__":
    main()
