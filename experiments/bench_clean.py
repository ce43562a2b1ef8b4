"""Find -> fix -> retrain on the digits, against Cleanlab's CleanLearning procedure in the same run.

Held-out probe (``data.probe = "test"``: 20% of the digits, stratified, never trained on), symmetric
label flips in the training labels (``--noise``, default 0.2). Every arm trains the default
experiment's model for the same epochs; test accuracy is against the TRUE test labels:

  (a) noisy      the noisy training labels (1 training; ftviz's find run: its detect stage reads
                 the training dynamics and `ftviz quality --export` writes the fixes)
  (b) oracle     the true training labels (1 training)
  (c) ftviz      retrained on the noisy labels with ftviz's fixes: drop, relabel, auto (the
                 export's row-by-row recommendation) (1 more each)
  (d) peer       CleanLearning as Cleanlab does it: K = 5 cross-validated pred_probs (5 trainings,
                 each probing its held-out fold), find_label_issues, prune, retrain (6 in all)

Detection of the training-set flags (AUROC, AP, F1 against the injected flips): ftviz's
``suspicion`` / ``is_label_issue`` from the training dynamics of (a), and the peer's
``find_label_issues`` on its cross-validated pred_probs.

    python experiments/bench_clean.py                  # 6 epochs, 20% symmetric
    python experiments/bench_clean.py --epochs 40 --noise 0.1
    python experiments/bench_clean.py --cost           # recording cost: dynamics on against off
    python experiments/bench_clean.py --epochs 20 --train-seeds 3 --skip-peer
                                                       # (a)-(c) each trained 3 times on the same labels

One training per arm on 360 test images (one image = 0.003) leaves each accuracy with a spread
as large as the differences between arms; ``--train-seeds N`` trains each arm N times
(``train.seed`` 0..N-1: other initial weights and batch orders, the same split and flips; the
peer's whole procedure N times; detection reads the first training of each) and reports the
mean and range. ``--fixes drop`` leaves out the relabel arm; ``--fixes drop,relabel,auto`` adds
the row-by-row one. ``--ceiling`` adds (e): the true
labels with the flagged rows dropped, and with as many random rows dropped, which split the
drop arm's remaining gap into the flips its flags missed and the rows it dropped.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def base_config(out_dir: Path, name: str, *, epochs: float, noise: float, kind: str, seed: int, extra=()):
    from ftviz.config import load_config

    return load_config(ROOT / "experiments" / "default.toml", [
        f"name={name}", f"out_dir={out_dir}", f"seed={seed}", f"train.epochs={epochs}", "data.probe=test",
        f"data.noise_rate={noise}", f"data.noise={kind}", "project.method=pca", "train.follow=false",
        "train.save_weights=none", *extra])


def final_true_accuracy(run) -> float:
    metrics = run.metrics()
    return float(metrics[metrics["split"] == "eval"].sort_values("step")["true_accuracy"].iloc[-1])


def train_on(config, splits):
    """Train ``config``'s model on ``splits`` (no later stage); returns the run directory."""
    import torch

    from ftviz.models import create_model
    from ftviz.runs import Probe, new_run_manifest, open_run, run_path
    from ftviz.rundir import RunDir
    from ftviz.train import train

    torch.manual_seed(config.training_seed)
    model = create_model(config.model.name, num_classes=splits.num_classes, image_size=config.data.image_size,
                         pretrained=config.model.pretrained, **config.model.options)
    probe = Probe.from_splits(splits)
    open_run(run_path(config.out_dir, config.name), config=config, probe=probe, force=True,
             force_hint="", manifest=lambda: new_run_manifest(config, probe, model, train_size=len(splits.train)))
    run = RunDir(config.run_dir)
    train(run, config, splits, model, progress=False)
    return run


def full_run(config):
    from ftviz.pipeline import run_experiment

    return run_experiment(config, force=True, progress=False, log=lambda *_: None)


def clean_learning(config, splits, *, folds: int = 5):
    """CleanLearning's procedure with ftviz's trainer: K-fold out-of-sample pred_probs of the
    training set, Cleanlab's find_label_issues, prune, retrain. Returns (issues (N,) bool,
    pred_probs (N, C), test accuracy, trainings)."""
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold

    from ftviz.data import ImageSet, Splits
    from ftviz.numerics import softmax

    labels = splits.train.labels
    pred_probs = np.zeros((len(labels), splits.num_classes))
    trainings = 0
    for fold, (fit, held) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=config.seed)
                                       .split(np.zeros(len(labels)), labels)):
        fold_splits = Splits(dataset=splits.dataset, train=splits.train.subset(fit),
                             probe=splits.train.subset(held), train_true_labels=splits.train_true_labels[fit],
                             probe_true_labels=splits.train_true_labels[held])
        fold_config = config.from_dict({**config.to_dict(), "name": f"{config.name}-fold{fold}"})
        fold_config.train.dynamics = False  # the peer reads only its held-out folds
        run = train_on(fold_config, fold_splits)
        pred_probs[held] = softmax(run.load_logits(run.snapshot_steps()[-1]).astype(np.float64))
        trainings += 1
        shutil.rmtree(run.path)
    issues = find_label_issues(labels, pred_probs, n_jobs=1)
    keep = np.flatnonzero(~issues)
    pruned = Splits(dataset=splits.dataset, train=splits.train.subset(keep), probe=splits.probe,
                    train_true_labels=splits.train_true_labels[keep], probe_true_labels=splits.probe_true_labels)
    final_config = config.from_dict({**config.to_dict(), "name": f"{config.name}-pruned"})
    final_config.train.dynamics = False
    run = train_on(final_config, pruned)
    trainings += 1
    return issues, pred_probs, final_true_accuracy(run), trainings


def as_markdown(table) -> str:
    from ftviz.cli.quality import markdown

    return markdown([str(c) for c in table.columns], [[str(v) for v in row] for row in table.itertuples(index=False)])


def detection(score, flags, noisy) -> dict:
    from ftviz.detectors import detector_scores

    score = np.asarray(score, dtype=np.float64)
    seen = np.isfinite(score)  # a sample the shortest runs never trained on has no score
    return detector_scores(score=score[seen], flags=np.asarray(flags)[seen], is_noisy=np.asarray(noisy)[seen])


def bench(args) -> None:
    import pandas as pd

    from ftviz.cli.quality import export_fixes
    from ftviz.data import load_splits

    out = Path(tempfile.mkdtemp(prefix="bench-clean-"))
    common = dict(epochs=args.epochs, noise=args.noise, kind=args.kind, seed=args.seed)
    seeds = [()] if args.train_seeds <= 1 else [(f"train.seed={seed}",) for seed in range(args.train_seeds)]
    rows, started = [], time.perf_counter()

    def arm(name, accuracies, trainings, seconds):
        rows.append({"arm": name, "test_true_accuracy": round(float(np.mean(accuracies)), 4), "trainings": trainings,
                     "seconds": round(seconds, 1)})
        if len(accuracies) > 1:
            rows[-1]["range"] = f"{min(accuracies):.4f}-{max(accuracies):.4f}"
        print(rows[-1], flush=True)

    def trained(name, **options) -> tuple[list, list]:
        """Each training seed's run of one arm: (runs, final test accuracies against the true labels)."""
        extra = options.pop("extra", ())
        runs = [full_run(base_config(out, f"{name}{index}", **{**common, **options}, extra=(*extra, *seed)))
                for index, seed in enumerate(seeds)]
        return runs, [final_true_accuracy(run) for run in runs]

    t = time.perf_counter()
    noisy_runs, accuracies = trained("noisy")
    noisy_run = noisy_runs[0]
    arm("(a) noisy labels", accuracies, 1, time.perf_counter() - t)
    fixes = out / "fixes.csv"
    export_fixes(noisy_run, fixes)
    train_table = pd.read_parquet(noisy_run.file("train_suspicion.parquet")).sort_values("id")
    samples = pd.read_parquet(noisy_run.file("train_samples.parquet")).sort_values("id")
    noisy = samples["is_noisy"].to_numpy(bool)
    found = detection(train_table["suspicion"], train_table["is_label_issue"].to_numpy(bool), noisy)
    detect = noisy_run.manifest()["stages"]["detect"]  # the regime the fix was read from
    regime = f"{detect.get('train_fix')}, accuracy rise {detect.get('train_accuracy_rise')} per pass"

    t = time.perf_counter()
    arm("(b) oracle (true labels)", trained("oracle", noise=0.0)[1], 1, time.perf_counter() - t)
    for how in args.fixes.split(","):
        t = time.perf_counter()
        accuracies = trained(f"ftviz-{how}", extra=(f"data.fixes={fixes}", f"data.fix={how}"))[1]
        arm(f"(c) ftviz, {how}", accuracies, 2, time.perf_counter() - t)

    if args.ceiling:
        # What the rest of the gap is made of: the true labels with the flagged rows dropped
        # (what the drop arm would reach with every flip among its flags), and with as many
        # random rows dropped (the cost of the rows alone). The export's split fingerprint still
        # holds without the noise: it covers the images, not the labels.
        exported = pd.read_csv(fixes)
        train_rows = exported["split"] == "train"
        flagged = int(exported.loc[train_rows, "is_label_issue"].astype(bool).sum())
        ids = exported.loc[train_rows, "id"].to_numpy()
        chosen = np.random.default_rng(args.seed).choice(ids, flagged, replace=False)
        for name, marked in (("flagged", exported.loc[train_rows, "is_label_issue"].astype(bool)),
                             ("random", exported.loc[train_rows, "id"].isin(chosen))):
            variant = exported.copy()
            variant.loc[train_rows, "is_label_issue"] = marked.to_numpy()
            path = out / f"ceiling-{name}.csv"
            variant.to_csv(path, index=False)
            t = time.perf_counter()
            accuracies = trained(f"ceiling-{name}", noise=0.0, extra=(f"data.fixes={path}", "data.fix=drop"))[1]
            arm(f"(e) true labels, the {flagged} {name} rows dropped", accuracies, 2, time.perf_counter() - t)

    peer = None
    if not args.skip_peer:
        t = time.perf_counter()
        accuracies = []
        for index, seed in enumerate(seeds):  # the peer's trainings as the other arms': one per train.seed
            config = base_config(out, f"peer{index}", **common, extra=seed)
            splits = load_splits(config.data, seed=config.seed)
            found_issues, probs, accuracy, trainings = clean_learning(config, splits)
            accuracies.append(accuracy)
            if index == 0:
                issues, pred_probs = found_issues, probs
        arm("(d) CleanLearning (K=5, prune)", accuracies, trainings, time.perf_counter() - t)
        labels = splits.train.labels
        peer = detection(1.0 - pred_probs[np.arange(len(labels)), labels], issues,
                         splits.train.labels != splits.train_true_labels)

    table = pd.DataFrame(rows)
    gap = table.iloc[1]["test_true_accuracy"] - table.iloc[0]["test_true_accuracy"]
    table["gap_closed"] = ((table["test_true_accuracy"] - table.iloc[0]["test_true_accuracy"]) / gap).round(3) \
        if gap > 0 else np.nan
    trainings = f", each arm's mean over train.seed 0-{args.train_seeds - 1}" if args.train_seeds > 1 else ""
    print(f"\ndigits, held-out probe, {args.noise:.0%} {args.kind} flips, {args.epochs} epochs, seed {args.seed}"
          f"{trainings} ({time.perf_counter() - started:.0f} s in all)\n")
    print(as_markdown(table))
    print("\ntraining-set detection against the injected flips\n")
    methods = [{"method": f"ftviz (training dynamics of (a); {regime})", **found}]
    if peer is not None:
        methods.append({"method": "Cleanlab (K=5 cross-validated pred_probs)", **peer})
    print(as_markdown(pd.DataFrame(methods).round(4)))
    shutil.rmtree(out, ignore_errors=True)


def cost(args) -> None:
    """Training seconds with dynamics recorded against not, same config, alternated; and the
    recording's own seconds (its methods timed from outside while they run), which the
    on-against-off difference of two noisy wall times can only bound."""
    from ftviz import dynamics, train
    from ftviz.data import load_splits

    spent = [0.0]

    def timed(function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started
        return wrapper

    recording = [(dynamics.DynamicsLog, "record"), (dynamics.DynamicsLog, "flush"), (train._Loop, "write_train_samples")]
    originals = [getattr(owner, name) for owner, name in recording]
    for (owner, name), function in zip(recording, originals):
        setattr(owner, name, timed(function))
    out = Path(tempfile.mkdtemp(prefix="bench-dynamics-"))
    seconds, own = {True: [], False: []}, []
    try:
        for repeat in range(args.repeats):
            for on in (False, True) if repeat % 2 == 0 else (True, False):
                config = base_config(out, f"cost-{on}-{repeat}", epochs=args.epochs, noise=0.1, kind="symmetric",
                                     seed=0, extra=(f"train.dynamics={str(on).lower()}", "train.snapshot_every=1000"))
                splits = load_splits(config.data, seed=config.seed)
                spent[0] = 0.0
                run = train_on(config, splits)
                seconds[on].append(float(run.manifest()["stages"]["train"]["seconds"]))
                if on:
                    own.append(spent[0] / seconds[on][-1])
                shutil.rmtree(run.path)
    finally:
        for (owner, name), function in zip(recording, originals):
            setattr(owner, name, function)
    on, off = np.median(seconds[True]), np.median(seconds[False])
    print(f"train seconds, median of {args.repeats}: dynamics on {on:.2f}, off {off:.2f} "
          f"-> {100 * (on / off - 1):+.1f}% (on {seconds[True]}, off {seconds[False]})")
    print(f"the recording's own time (record, flush, train_samples + train_images): median "
          f"{100 * np.median(own):.2f}% of the training stage (runs: {[round(100 * v, 2) for v in own]})")
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--kind", default="symmetric", choices=("symmetric", "asymmetric"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cost", action="store_true", help="measure the recording cost instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-seeds", type=int, default=1, help="train (a)-(c) this many times each (train.seed 0..N-1)")
    parser.add_argument("--skip-peer", action="store_true", help="leave out CleanLearning's 6 trainings")
    parser.add_argument("--fixes", default="drop,relabel", help="the ftviz arms, comma-separated: drop, relabel, auto")
    parser.add_argument("--ceiling", action="store_true",
                        help="add the true labels with the flagged rows dropped, and with as many random rows dropped")
    args = parser.parse_args()
    cost(args) if args.cost else bench(args)


if __name__ == "__main__":
    main()
