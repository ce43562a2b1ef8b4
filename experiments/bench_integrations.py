"""Three routes to the same animation, one workload, one machine, one run of this script.

1. ftviz's own loop: ``ftviz run experiments/default.toml``.
2. ``transformers.Trainer`` + ``FtvizCallback``: the same model, data, batch, steps and
   schedule, snapshots in process every ``snapshot_every`` steps.
3. ``transformers.Trainer`` with a checkpoint every ``snapshot_every`` steps (``save_steps``,
   model + optimizer, as the article did), then ``ftviz embed`` on the checkpoint folder.

Each route runs in a fresh process (imports counted) and ends with scores, frames and the
animation. Prints a markdown table: seconds, disk written, frames, ratios to route 1.

    python experiments/bench_integrations.py [--experiment experiments/default.toml] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUTES = ("ftviz", "callback", "checkpoints")
LABELS = {
    "ftviz": "ftviz's loop (`ftviz run`)",
    "callback": "Trainer + `FtvizCallback`",
    "checkpoints": "Trainer + `save_steps` + `ftviz embed`",
}


def disk_bytes(*paths: Path) -> int:
    return sum(f.stat().st_size for path in paths if path.exists() for f in path.rglob("*") if f.is_file())


# ---- the routes (each in its own process) -------------------------------------------------
def load(experiment: str, out: Path, name: str, overrides: list[str]):
    from ftviz.config import load_config

    return load_config(experiment, [f"out_dir={out}", f"name={name}", *overrides])


def route_ftviz(config, out: Path) -> dict:
    from ftviz.pipeline import run_experiment

    run = run_experiment(config, force=True, progress=False, log=lambda *_: None)
    return {"paths": [run.path], "run": str(run.path)}


def _trainer_parts(config):
    """Splits, ftviz's model (its transformers module) and the Trainer arguments that match
    ftviz's loop: batch, steps, AdamW, warm-up + cosine, grad-norm clip, seed."""
    import math

    import torch

    from ftviz.data import load_splits
    from ftviz.models import create_model

    splits = load_splits(config.data, seed=config.seed)
    torch.manual_seed(config.seed)
    probe_model = create_model(config.model.name, num_classes=splits.num_classes, image_size=config.data.image_size,
                               pretrained=config.model.pretrained, **config.model.options)
    cfg = config.train
    steps_per_epoch = max(1, (len(splits.train) // cfg.batch_size) // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    arguments = dict(
        max_steps=total_steps, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=max(1, int(cfg.warmup_ratio * total_steps)),
        lr_scheduler_type="cosine", max_grad_norm=1.0, logging_steps=1, report_to=[], disable_tqdm=True,
        use_cpu=cfg.device == "cpu" or not torch.cuda.is_available(), seed=config.seed, dataloader_drop_last=True,
    )
    return splits, probe_model, arguments


class _PixelSet:
    """The training images as the image processor makes them (what a Trainer script feeds)."""

    def __init__(self, pixels, labels):
        self.pixels, self.labels = pixels, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": int(self.labels[index])}


def _train_set(splits, probe_model):
    from transformers import ViTImageProcessorPil

    mean = probe_model.pixel_mean.flatten().tolist()
    std = probe_model.pixel_std.flatten().tolist()
    processor = ViTImageProcessorPil(size={"height": probe_model.image_size, "width": probe_model.image_size},
                                     image_mean=mean, image_std=std)
    pixels = processor(list(splits.train.images), return_tensors="pt")["pixel_values"]
    return _PixelSet(pixels, splits.train.labels), processor


def route_callback(config, out: Path) -> dict:
    from transformers import Trainer, TrainingArguments

    from ftviz.integrations import FtvizCallback

    splits, probe_model, arguments = _trainer_parts(config)
    train_set, processor = _train_set(splits, probe_model)
    hf_out = out / f"{config.name}-trainer"
    callback = FtvizCallback(config.run_dir, probe_images=splits.probe.images, probe_labels=splits.probe.labels,
                             class_names=splits.class_names, probe_true_labels=splits.probe_true_labels,
                             every=config.train.snapshot_every, config=config, batch_size=config.train.eval_batch_size,
                             precision=config.train.embed_precision, overwrite=True)
    args = TrainingArguments(output_dir=str(hf_out), save_strategy="no", **arguments)
    Trainer(model=probe_model.hf_model, args=args, train_dataset=train_set, processing_class=processor,
            callbacks=[callback]).train()
    return {"paths": [config.run_dir, hf_out], "run": str(config.run_dir)}


def route_checkpoints(config, out: Path) -> dict:
    from transformers import Trainer, TrainingArguments

    from ftviz.ingest import ingest_checkpoints
    from ftviz.stages import continue_run

    splits, probe_model, arguments = _trainer_parts(config)
    train_set, processor = _train_set(splits, probe_model)
    hf_out = out / f"{config.name}-trainer"
    shutil.rmtree(hf_out, ignore_errors=True)
    args = TrainingArguments(output_dir=str(hf_out), save_strategy="steps", save_steps=config.train.snapshot_every,
                             **arguments)
    started = time.perf_counter()
    Trainer(model=probe_model.hf_model, args=args, train_dataset=train_set, processing_class=processor).train()
    trained = time.perf_counter() - started
    run = ingest_checkpoints(hf_out, config, force=True, progress=False, log=lambda *_: None)
    continue_run(run, config, progress=False, log=lambda *_: None)
    return {"paths": [run.path, hf_out], "run": str(run.path), "trainer_seconds": trained}


def worker(route: str, experiment: str, out: Path, overrides: list[str]) -> None:
    started = time.perf_counter()
    config = load(experiment, out, f"bench-{route}", overrides)
    result = {"ftviz": route_ftviz, "callback": route_callback, "checkpoints": route_checkpoints}[route](config, out)
    result["inner_seconds"] = time.perf_counter() - started
    result["paths"] = [str(p) for p in result["paths"]]
    print("RESULT " + json.dumps(result))


# ---- the comparison -------------------------------------------------------------------------
def measure(route: str, experiment: str, out: Path, overrides: list[str]) -> dict:
    started = time.perf_counter()
    command = [sys.executable, __file__, "--worker", route, "--experiment", experiment, "--out", str(out)]
    for text in overrides:
        command += ["--set", text]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"route {route} failed:\n{result.stderr[-3000:]}")
    line = next(l for l in reversed(result.stdout.splitlines()) if l.startswith("RESULT "))
    info = json.loads(line[len("RESULT "):])
    manifest = json.loads((Path(info["run"]) / "run.json").read_text())
    stages = manifest["stages"]
    return {
        "seconds": seconds,
        "train_seconds": info.get("trainer_seconds", stages["train"].get("seconds", float("nan"))),
        "embed_seconds": stages["train"].get("seconds", float("nan")) if route == "checkpoints" else 0.0,
        "bytes": disk_bytes(*(Path(p) for p in info["paths"])),
        "frames": len(manifest["snapshot_steps"]),
        "accuracy": stages["train"].get("final_true_accuracy"),
        "done": all(entry.get("status") == "done" for entry in stages.values()),
    }


def table(results: dict) -> str:
    base = results["ftviz"]
    lines = [
        "| route | seconds (fresh process) | × ftviz's loop | disk MB | × ftviz's loop | frames | final probe accuracy (true labels) |",
        "|---|---|---|---|---|---|---|",
    ]
    for route, r in results.items():
        accuracy = f"{r['accuracy']:.3f}" if isinstance(r["accuracy"], float) else "—"
        lines.append(
            f"| {LABELS[route]} | {r['seconds']:.1f} | {r['seconds'] / base['seconds']:.2f} | {r['bytes'] / 1e6:.1f} | "
            f"{r['bytes'] / base['bytes']:.2f} | {r['frames']} | {accuracy} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "default.toml"))
    parser.add_argument("--out", default="", help="folder for the runs (default: a temporary folder, removed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of the workload (e.g. train.epochs=1 for a smoke test)")
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated subset of " + ", ".join(ROUTES))
    parser.add_argument("--worker", choices=ROUTES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.experiment, Path(args.out), args.set)
        return
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ftviz-bench-integrations-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        routes = [r for r in args.routes.split(",") if r]
        if "ftviz" not in routes:
            routes.insert(0, "ftviz")
        results = {}
        for route in routes:
            results[route] = measure(route, args.experiment, out, args.set)
            print(f"{route}: {results[route]['seconds']:.1f} s", file=sys.stderr)
        print(table(results))
        print()
        print("| route | training (s) | of which embedding checkpoints (s) |")
        print("|---|---|---|")
        for route, r in results.items():
            print(f"| {LABELS[route]} | {r['train_seconds']:.1f} | {r['embed_seconds']:.1f} |")
        if not all(r["done"] for r in results.values()):
            raise SystemExit("a route left a stage unfinished")
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
