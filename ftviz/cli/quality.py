"""``ftviz quality RUN``: the label-issue detectors' table and the most suspicious samples."""

from __future__ import annotations

import math
import re
import unicodedata

# Terminal escape sequences (CSI "ESC [ ... letter", OSC "ESC ] ... BEL or ESC \\", and
# two-character ones): a class name must not move the cursor, recolour or retitle the terminal.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]")
# Bidirectional overrides and isolates reorder what the terminal shows (they are format
# characters, not controls, but as misleading in a table).
_BIDI = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def register(add) -> None:
    p = add("quality", cmd_quality, "print the label-issue detectors of a run (AUROC, AP, P/R/F1 "
                                    "against the injected noise) and its most suspicious samples")
    p.add_argument("run", help="run directory (runs/<name>) with the detect stage done")
    p.add_argument("--top", type=int, default=10, metavar="N", help="suspicious samples to list (default 10)")
    p.add_argument("--frames", action="store_true", help="also list single-frame Cleanlab at every snapshot")
    p.add_argument("--export", metavar="FILE.csv",
                   help="write one row per examined sample (split, id, given_label, suggested_label, suspicion, "
                        "is_label_issue, fix: the recommended relabel or drop, suggested_probability, dataset) for "
                        "data.fixes in the next run")


def cmd_quality(args) -> None:
    from ftviz.detectors import RELABEL_PROBABILITY, load_detectors, load_suspicion
    from ftviz.errors import FtvizError
    from ftviz.render.data import read_training_suspicion
    from ftviz.rundir import RunDir

    if args.top < 0:
        raise FtvizError(f"--top must be >= 0 (got {args.top})")
    run = RunDir(args.run)
    suspicion = load_suspicion(run)
    detectors = load_detectors(run)
    flagged = int(suspicion["is_label_issue"].sum())
    print(f"{run.path}: {flagged} of {len(suspicion)} probe samples flagged as label issues")
    if detectors is None:
        print("(no injected noise in this run: no detector table to measure against)")
    else:
        rows = detectors if args.frames else detectors[detectors["detector"] != "cleanlab_frame"]
        print()
        print(format_detectors(rows))
    train_detectors = run.file("train_detectors.parquet")
    train = read_training_suspicion(run)
    if train is not None:
        import pandas as pd

        print()
        fix = recommended_fix(run.manifest())
        fixes = train["fix"].fillna("").astype(str) if "fix" in train else pd.Series([], dtype=str)
        extra = int((fixes != "").sum() - train["is_label_issue"].sum()) if len(fixes) else 0
        if fix == "mixed":  # per row: the confident suggestions taken, the rest dropped
            relabel, drop = int((fixes == "relabel").sum()), int((fixes == "drop").sum())
            advice = (f"; recommended fix: relabel {relabel} (the network gives the suggested label at least "
                      f"{RELABEL_PROBABILITY:g}), drop {drop} (the network is still weak and unsure of them)")
        else:
            advice = {"relabel": "; recommended fix: relabel (the network is still weak: its suggestions beat dropping)",
                      "drop": "; recommended fix: drop (the network has learnt its training set)"
                              + (f", with the {extra} next in line" if extra > 0 else "")}.get(fix, "")
        print(f"training set (from the training dynamics): {int(train['is_label_issue'].sum())} of {len(train)} "
              f"samples flagged{advice}")
        regime = regime_reason(run.manifest(), fix)
        if regime:
            print(regime)
        if train_detectors.is_file():
            table = pd.read_parquet(train_detectors)
            print(format_detectors(table if args.frames else table[table["detector"] != "cleanlab_frame"]))
    if args.top:
        print()
        print(format_top(run, suspicion, args.top))
    if args.export:
        rows = export_fixes(run, args.export)
        print(f"\nwrote {rows} rows to {args.export} (use it with --set data.fixes={args.export})")


def regime_reason(manifest: dict, fix: str | None) -> str:
    """Why the detect stage read the network as weak or learnt: how much its accuracy against the
    given labels still rose per pass (:func:`ftviz.detectors.accuracy_rise`); "" for runs
    detected before it was recorded."""
    from ftviz.detectors import STILL_LEARNING_RISE, TrainingRegime

    rise = manifest.get("stages", {}).get("detect", {}).get("train_accuracy_rise")
    regime = None if rise is None else TrainingRegime(accuracy_rise=rise)
    if regime is None or fix != regime.fix:  # an older run, or another reason (too few margins)
        return ""
    read = "still learning (weak)" if regime.weak else "done learning"
    return (f"(its accuracy on the given training labels rose by {100 * rise:.1f} points per pass over the last "
            f"two: {read}; {100 * STILL_LEARNING_RISE:g} or more reads as still learning)")


def recommended_fix(manifest: dict) -> str | None:
    """The detect stage's fix for the flagged training labels ("mixed" | "drop"; "relabel" in
    runs detected before 2026-12-06), None when it recorded none (a run from before the
    recommendation, or without training dynamics)."""
    return manifest.get("stages", {}).get("detect", {}).get("train_fix")


EXPORT_COLUMNS = ["split", "id", "given_label", "suggested_label", "suspicion", "is_label_issue", "fix",
                  "suggested_probability", "dataset"]


def export_table(run):
    """One row per examined sample, probe then training set (when the run recorded dynamics).

    ``dataset`` is the training split's fingerprint (run.json ``train_split``), which
    ``data.fixes`` checks; "" where the run did not record it. ``fix`` is, on each training
    row a retrain should change, what ``data.fix = "auto"`` does with it: the detect stage's
    recommendation (:func:`ftviz.detectors.retrain_fixes`): while the network is weak, "relabel"
    on the flagged rows whose suggestion it is confident of and "drop" on the others; once it has
    learnt, "drop" on the flagged rows and on the unflagged rows next in line that a retrain is
    better without (:func:`ftviz.detectors.retrain_drop_count`); blank elsewhere. Edit it row by
    row if you like. ``suggested_probability`` is the network's probability of the suggested
    label (:func:`ftviz.detectors.suggestions`), what the recommendation weighed; blank for
    training rows of runs detected before it was recorded.
    """
    import numpy as np
    import pandas as pd

    from ftviz.detectors import learnt_from, load_logits, probe_is_trained_on, suggestions
    from ftviz.render.data import read_training_suspicion

    manifest = run.manifest()
    fingerprint = str(manifest.get("train_split", {}).get("fingerprint", ""))
    suspicion = run.suspicion()
    samples = run.samples().sort_values("id").reset_index(drop=True)
    labels = samples["given_label"].to_numpy(np.int64)
    steps = run.snapshot_steps()
    history = load_logits(run, steps if probe_is_trained_on(manifest) else steps[-1:])
    start = learnt_from(logits=history, labels=labels) if len(history) > 1 else 0
    suggested, probability = suggestions(logits=history, labels=labels,
                                         flags=suspicion["is_label_issue"].to_numpy(bool), start=start)
    probe = pd.DataFrame({
        "split": "probe", "id": samples["id"].to_numpy(np.int64), "given_label": labels,
        "suggested_label": suggested,
        "suspicion": suspicion["suspicion"].to_numpy(np.float64),
        "is_label_issue": suspicion["is_label_issue"].to_numpy(bool),
        "fix": "",  # data.fixes reads training rows only
        "suggested_probability": probability,
    })
    parts = [probe]
    train = read_training_suspicion(run)
    if train is not None:
        flagged = train["is_label_issue"].to_numpy(bool)
        if "fix" in train:  # the detect stage's own, row by row
            fix = train["fix"].fillna("").astype(str).to_numpy()
        else:  # a run detected before 2026-12-05: its run-wide recommendation on the flagged rows
            fix = np.where(flagged, recommended_fix(manifest) or "relabel", "")
        parts.append(pd.DataFrame({
            "split": "train", "id": train["id"].to_numpy(np.int64), "given_label": train["given_label"].to_numpy(np.int64),
            "suggested_label": train["suggested_label"].to_numpy(np.int64),
            "suspicion": train["suspicion"].to_numpy(np.float64),
            "is_label_issue": flagged,
            "fix": fix,
            # runs detected before 2026-12-06 have no probability: blank
            "suggested_probability": train["suggested_probability"].to_numpy(np.float64)
            if "suggested_probability" in train else np.nan,
        }))
    table = pd.concat(parts, ignore_index=True)
    table["dataset"] = fingerprint
    return table[EXPORT_COLUMNS]


def export_fixes(run, path) -> int:
    """Write :func:`export_table` to ``path`` (CSV, atomically); returns the number of rows."""
    from pathlib import Path

    from ftviz.errors import FtvizError
    from ftviz.rundir import atomic_path

    path = Path(path)
    if not path.parent.is_dir():
        raise FtvizError(f"--export {path}: the folder {path.parent} does not exist; create it or choose another path")
    table = export_table(run)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return len(table)


def _cell(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def terminal_text(text: str) -> str:
    """``text`` safe to print in a markdown table cell on a terminal.

    Escape sequences and control characters (newlines and tabs included) are removed, and
    ``|`` is escaped as ``\\|``, so a cell is one cell of one row, shown as plain text.

    >>> terminal_text("cat\\x1b[31m|dog\\n")
    'cat\\\\|dog'
    """
    text = _ESCAPES.sub("", str(text))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc" and ch not in _BIDI)
    return text.replace("|", "\\|")


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; numbers (everything but the first column) right-aligned.

    Every cell goes through :func:`terminal_text`: names come from folders and users.
    """
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(terminal_text(cell) for cell in cells) + " |"

    lines = [line(header), "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def format_detectors(table) -> str:
    """detectors.parquet rows as a markdown table."""
    import pandas as pd

    header = ["detector", "step", "AUROC", "AP", "precision", "recall", "F1", "flagged"]
    rows = []
    for row in table.itertuples(index=False):
        rows.append([
            row.detector,
            "–" if pd.isna(row.step) else str(int(row.step)),
            *(_cell(float(getattr(row, name))) for name in ("auroc", "average_precision", "precision", "recall", "f1")),
            "–" if pd.isna(row.n_flagged) else str(int(row.n_flagged)),
        ])
    return markdown(header, rows)


def format_top(run, suspicion, top: int) -> str:
    """The ``top`` most suspicious samples, with their labels (and the true one under noise)."""
    import pandas as pd

    samples = run.samples().set_index("id")
    manifest = run.manifest()
    names = [str(n) for n in manifest.get("dataset", {}).get("class_names") or []]

    def name(label) -> str:
        return names[int(label)] if int(label) < len(names) else str(int(label))

    noisy = bool(samples["is_noisy"].any()) if "is_noisy" in samples else False
    header = ["rank", "id", "given", *(["true"] if noisy else []), "suspicion", "AUM", "flagged", "issue step"]
    rows = []
    for row in suspicion.sort_values("suspicion_rank").head(top).itertuples(index=False):
        sample = samples.loc[row.id]
        rows.append([
            str(int(row.suspicion_rank)), str(int(row.id)), name(sample["given_label"]),
            *([name(sample["true_label"])] if noisy else []),
            _cell(float(row.suspicion)), _cell(float(row.aum), 2), "yes" if row.is_label_issue else "no",
            "–" if pd.isna(row.issue_step) else str(int(row.issue_step)),
        ])
    return f"Top {len(rows)} suspicious samples\n\n" + markdown(header, rows)
