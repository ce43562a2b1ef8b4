"""Label-issue detectors against the injected noise, with Cleanlab's last frame as the peer.

Workloads (all the digits default of experiments/default.toml, 10% of the labels flipped):

- ``default``: the default run (6 epochs, a snapshot every 10 steps, 35 frames);
- ``e40``: trained until it fits the flipped labels (``train.epochs=40``, ``train.snapshot_every=40``);
- ``asym``: the default run with asymmetric noise (``data.noise=asymmetric``);
- ``clean_test``: a probe the network never trains on, clean labels (``data.probe=test``,
  ``data.noise_rate=0``): how many samples each detector flags, which should be few;
- ``seed1`` and ``noise20``: checks that the recommended rule was not fitted to the runs above,
  the default run with another seed (``seed=1``) and with 20% of the labels flipped.

Each run is trained once into ``--scratch`` (training the 40-epoch one takes minutes) and
reused; the detect stage reruns on it every time. Prints one markdown table per workload
(AUROC, AP, precision, recall, F1 and flags of each detector; Cleanlab at the last frame is the
row ``label_quality_last``), then the seconds of the detectors alone on the default run's
35 x 1,797 history and on a synthetic 80 x 10,000 one.

    python experiments/bench_detectors.py [--scratch DIR] [--workloads default,e40,asym,clean_test]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOADS = {
    "default": [],
    "e40": ["train.epochs=40", "train.snapshot_every=40"],
    "asym": ["data.noise=asymmetric"],
    "clean_test": ["data.probe=test", "data.noise_rate=0"],
    "seed1": ["seed=1"],
    "noise20": ["data.noise_rate=0.2"],
}
LABELS = {
    "label_quality_last": "Cleanlab, last frame (peer)",
    "label_quality_ensemble": "Cleanlab, snapshot-ensembled",
    "label_quality_knn": "Cleanlab, last frame, softmax + kNN labels",
    "aum": "area under the margin (< 0)",
    "confidence": "data-map confidence (< 0.5)",
    "variability": "data-map variability",
    "correctness": "data-map correctness (< 0.5)",
    "forgetting_events": "forgetting events (>= 1)",
    "outlier_score": "kNN outlier score",
    "suspicion": "**suspicion / is_label_issue**",
}


def ensure_run(name: str, overrides: list[str], scratch: Path):
    """The workload's run, trained once (reused when its training is done)."""
    from ftviz.config import load_config
    from ftviz.pipeline import run_experiment
    from ftviz.stages import continue_run
    from ftviz.rundir import RunDir

    config = load_config(ROOT / "experiments" / "default.toml",
                         [f"out_dir={scratch}", f"name={name}", *overrides])
    run = RunDir(config.run_dir)
    if run.exists() and run.stage_status("train") == "done":
        if run.stage_status("score") != "done":
            continue_run(run, config, progress=False, log=lambda *_: None)
        return run, config
    print(f"training {name} into {run.path} (once) ...", file=sys.stderr, flush=True)
    run_experiment(config, force=run.path.exists(), progress=False, log=lambda *_: None)
    return run, config


def cell(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def noisy_table(run) -> str:
    import pandas as pd

    from ftviz.detectors import load_detectors

    table = load_detectors(run)
    lines = ["| detector | AUROC | AP | precision | recall | F1 | flagged |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in table[table["detector"] != "cleanlab_frame"].itertuples(index=False):
        lines.append(f"| {LABELS.get(row.detector, row.detector)} | {cell(row.auroc)} | "
                     f"{cell(row.average_precision)} | "
                     f"{cell(row.precision)} | {cell(row.recall)} | {cell(row.f1)} | "
                     f"{'–' if pd.isna(row.n_flagged) else int(row.n_flagged)} |")
    return "\n".join(lines)


def clean_table(run) -> str:
    from ftviz.detectors import load_suspicion

    suspicion = load_suspicion(run)
    scores = run.scores()
    last = scores[scores["step"] == run.snapshot_steps()[-1]]
    count = len(suspicion)
    rows = [("Cleanlab, last frame (peer)", int(last["is_label_issue"].sum())),
            ("**is_label_issue**", int(suspicion["is_label_issue"].sum()))]
    lines = ["| detector | flagged | share of the probe |", "|---|---:|---:|"]
    lines += [f"| {name} | {n} of {count} | {n / count:.1%} |" for name, n in rows]
    return "\n".join(lines)


def time_detectors(*, logits, labels, quality, flags, outlier, embedding, repeat: int = 3) -> float:
    from ftviz.detectors import detect

    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        detect(logits=logits, labels=labels, steps=np.arange(len(logits)), frame_quality=quality,
               frame_flags=flags, outlier_score=outlier, embedding=embedding)
        best = min(best, time.perf_counter() - start)
    return best


def synthetic_history(frames: int, samples: int, classes: int = 10, seed: int = 0):
    """A learning curve: logits drift from noise towards the true class; 10% of labels flipped,
    memorised in the last third; Cleanlab-style frame flags where another class leads by 2; a
    128-d last embedding clustered by true class."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, samples)
    given = true.copy()
    flipped = rng.choice(samples, samples // 10, replace=False)
    given[flipped] = (given[flipped] + rng.integers(1, classes, len(flipped))) % classes
    progress = np.linspace(0, 1, frames)[:, None]
    logits = rng.normal(size=(frames, samples, classes)).astype(np.float32)
    logits[:, np.arange(samples), true] += 6 * progress
    memorised = np.clip(3 * progress - 2, 0, None) * 8
    logits[:, flipped, given[flipped]] += memorised
    probs = np.exp(logits - logits.max(2, keepdims=True))
    probs /= probs.sum(2, keepdims=True)
    quality = probs[:, np.arange(samples), given]
    others = logits.copy()
    others[:, np.arange(samples), given] = -np.inf
    flags = others.max(2) - logits[:, np.arange(samples), given] > 2
    centres = rng.normal(size=(classes, 128))
    embedding = (centres[true] + rng.normal(size=(samples, 128))).astype(np.float32)
    return logits, given, quality, flags, rng.uniform(size=samples), embedding


def main() -> None:
    parser = argparse.ArgumentParser()
    default_scratch = os.path.join(tempfile.gettempdir(), "ftviz-bench-detectors")
    parser.add_argument("--scratch", default=os.environ.get("FTVIZ_BENCH_SCRATCH", default_scratch),
                        help="folder for the workload runs (kept and reused)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()

    from ftviz.detectors import detect_run, frame_scores, load_logits

    scratch = Path(args.scratch)
    print(f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}); runs in {scratch}")
    default_run = None
    for name in args.workloads.split(","):
        run, config = ensure_run(name, WORKLOADS[name], scratch)
        started = time.perf_counter()
        detect_run(run, config.detect, progress=False)
        seconds = time.perf_counter() - started
        if name == "default":
            default_run = run
        manifest = run.manifest()
        metrics = run.metrics()
        probe = metrics[metrics["split"] == "eval"].sort_values("step").iloc[-1]
        print(f"\n### {name}: {' '.join('--set ' + o for o in WORKLOADS[name]) or 'experiments/default.toml'}")
        print(f"\n{len(run.snapshot_steps())} frames x {manifest['probe_size']} probe samples; "
              f"last-frame probe accuracy "
              f"{probe['accuracy']:.3f} against the given labels, {probe['true_accuracy']:.3f} against the true ones; "
              f"detect stage {seconds:.2f} s (files included)\n")
        print(noisy_table(run) if manifest.get("noisy_probe_samples") else clean_table(run))

    if args.no_timing:
        return
    print("\n### Detectors alone (ftviz.detectors.detect), best of 3\n")
    print("| history | seconds |\n|---|---:|")
    if default_run is not None:
        steps = default_run.snapshot_steps()
        logits = load_logits(default_run, steps)
        samples = default_run.samples()
        quality, flags, outlier = frame_scores(default_run, default_run.scores(), steps, len(samples))
        embedding = default_run.load_snapshot(steps[-1])[0].astype(np.float32)
        seconds = time_detectors(logits=logits, labels=samples["given_label"].to_numpy(), quality=quality,
                                 flags=flags, outlier=outlier, embedding=embedding)
        print(f"| default run, {len(steps)} x {len(samples):,} x {logits.shape[2]} | {seconds:.2f} |")
    logits, given, quality, flags, outlier, embedding = synthetic_history(80, 10_000)
    seconds = time_detectors(logits=logits, labels=given, quality=quality, flags=flags, outlier=outlier,
                             embedding=embedding)
    print(f"| synthetic, 80 x 10,000 x 10 | {seconds:.2f} |")


if __name__ == "__main__":
    main()
