"""Per-frame analysis files: each stage's result for one snapshot, recorded as it is made.

A stage whose work splits by frame (score, project) keeps one immutable file per snapshot
step under ``analysis/<stage>/``, beside a ``settings.json`` naming the config it was made
with. The follower fills them while training runs, and the stage itself reads and fills
them when it runs after training, so both routes give the same numbers and a stop loses at
most the frame in progress::

    runs/<name>/analysis/score/step-XXXXXXX.npz     (N,) arrays: the scores.parquet columns
    runs/<name>/analysis/project/step-XXXXXXX.npz   xy (N, 2) aligned, layout (N, 2), the row
    runs/<name>/analysis/<stage>/settings.json      the section the files were made with

Files made with other settings are removed when the stage opens its cache; nothing else
in the run folder is touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ftviz.rundir import atomic_path, snapshot_name, write_json


class FrameCache:
    """One stage's per-frame files in a run.

    Parameters
    ----------
    run : the :class:`ftviz.rundir.RunDir`.
    stage : the stage's name ("score", "project").
    settings : JSON-able dict of everything the frames' numbers depend on.
    """

    def __init__(self, run, stage: str, settings: dict):
        self.run = run
        self.stage = stage
        self.settings = json.loads(json.dumps(settings, default=str))
        self.folder = Path(run.path) / "analysis" / stage

    def open(self) -> "FrameCache":
        """Make the folder; drop frames made with other settings. Returns self."""
        settings_file = self.folder / "settings.json"
        if self.folder.is_dir():
            try:
                kept = json.loads(settings_file.read_text())
            except (OSError, ValueError):
                kept = None
            if kept != self.settings:
                for path in self.folder.glob("step-*.npz"):
                    path.unlink(missing_ok=True)
        if not settings_file.is_file() or json.loads(settings_file.read_text()) != self.settings:
            write_json(settings_file, self.settings)
        return self

    def path(self, step: int, variant: str = "") -> Path:
        """``step-XXXXXXX.npz``, or ``step-XXXXXXX<variant>.npz`` for another version of the frame."""
        name = snapshot_name(int(step))
        return self.folder / (name[: -len(".npz")] + variant + ".npz")

    def has(self, step: int, variant: str = "") -> bool:
        """Whether ``step`` has a frame made from its snapshot as it is now."""
        try:
            made = self.path(step, variant).stat().st_mtime_ns
        except OSError:
            return False
        try:  # a snapshot written (or changed by hand) after the frame was made voids it
            return made >= (Path(self.run.path) / "snapshots" / snapshot_name(int(step))).stat().st_mtime_ns
        except OSError:
            return True

    def get(self, step: int, variant: str = "") -> dict | None:
        """The arrays recorded for ``step``, or None (absent, stale, or damaged by a kill from outside)."""
        if not self.has(step, variant):
            return None
        try:
            with np.load(self.path(step, variant)) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, KeyError, EOFError):
            return None
        except Exception:  # a damaged zip: the frame is simply made again
            return None

    def put(self, step: int, arrays: dict, variant: str = "") -> None:
        """Record ``step``'s arrays (atomically: a file that exists is complete)."""
        with atomic_path(self.path(step, variant)) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **{key: np.asarray(value) for key, value in arrays.items()})

    def steps(self) -> list[int]:
        """Steps with a recorded frame, ascending."""
        found = []
        for path in self.folder.glob("step-*.npz"):
            try:
                found.append(int(path.stem.split("-", 1)[1]))
            except ValueError:
                continue
        return sorted(found)


def forget_frame(run, step: int) -> None:
    """Remove every stage's recorded frame for ``step`` (its snapshot was just written anew,
    e.g. by a training resumed from an earlier step)."""
    analysis = Path(run.path) / "analysis"
    if not analysis.is_dir():
        return
    stem = snapshot_name(int(step))[: -len(".npz")]
    for path in analysis.glob(f"*/{stem}*.npz"):
        path.unlink(missing_ok=True)
