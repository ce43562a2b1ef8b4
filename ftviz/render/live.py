"""The page of a run that is still being analysed: the frames analysed so far, for ``ftviz serve``.

While training runs, the follower writes each frame's results as soon as it has them, one
immutable file per frame and stage (written atomically)::

    analysis/score/step-XXXXXXX.npz     outlier_score, label_quality, is_label_issue,
                                        predicted_label, confidence: (N,) each
    analysis/project/step-XXXXXXX.npz   xy (N, 2) aligned coordinates, layout (N, 2),
                                        explained_variance, disparity_to_previous, knn_overlap (0-d)

A frame is analysed when both of its files exist. :func:`live_animation_data` reads those
frames (in snapshot order), with ``metrics.parquet``, ``samples.parquet``,
``probe_images.npy``, ``suspicion.parquet`` and the training set's ``train_suspicion.parquet``
(with ``train_images.npy``) as far as they exist, into the same
:class:`~ftviz.render.data.AnimationData` the final page is made from; :func:`page_payload`
is that page's data without the page (what a live page fetches to grow in place).

Nothing here writes into the run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ftviz.errors import FtvizError
from ftviz.rundir import INTERIM_SUSPICION, snapshot_name
from ftviz.render.data import (AnimationData, _epochs_at, _metric_columns, generated_images, probe_labels,
                               projection_info, top_count, top_outlier_ids, training_labels, training_suspects)

ANALYSIS_DIR = "analysis"
STEP_FILE = re.compile(r"^step-(\d{7})\.npz$")
SCORE_KEYS = ("outlier_score", "label_quality", "is_label_issue", "predicted_label")
DIAGNOSTIC_KEYS = ("explained_variance", "knn_overlap")
LIVE_ANCHOR = '<script type="application/json" id="ftviz-meta">'


def analysis_file(run, stage: str, step: int) -> Path:
    """``analysis/<stage>/step-XXXXXXX.npz`` of ``run`` (a :class:`ftviz.rundir.RunDir`)."""
    return run.path / ANALYSIS_DIR / stage / snapshot_name(step)


def analysed_steps(run, steps) -> list[int]:
    """The steps of ``steps`` whose score and project files both exist, in the order given."""
    scored = _steps_in(run.path / ANALYSIS_DIR / "score")
    projected = _steps_in(run.path / ANALYSIS_DIR / "project")
    return [int(step) for step in steps if int(step) in scored and int(step) in projected]


def _steps_in(folder: Path) -> set[int]:
    try:
        names = os.listdir(folder)
    except OSError:  # not made yet, or being redone
        return set()
    return {int(match.group(1)) for match in map(STEP_FILE.match, names) if match}


def live_animation_data(run, manifest: dict | None = None, *, with_images: bool = True) -> AnimationData | None:
    """What the page shows of ``run`` from its per-frame analysis files; None before the first frame.

    Parameters
    ----------
    run : :class:`ftviz.rundir.RunDir`, typically still training.
    manifest : its run.json, if already read.
    with_images : read ``probe_images.npy`` (the thumbnails).

    Returns
    -------
    AnimationData with T = the analysed frames so far (a frame whose files cannot be read,
    e.g. because the follower is redoing its folder, is left out until they can), or None
    when no frame is analysed yet or ``samples.parquet`` is not written yet.
    """
    if manifest is None:
        manifest = run.manifest()
    if not run.file("samples.parquet").is_file():
        return None
    samples = run.read_parquet("samples.parquet").sort_values("id")
    n_points = len(samples)
    if not np.array_equal(samples["id"].to_numpy(), np.arange(n_points)):
        raise FtvizError(f"{run.path}/samples.parquet ids must be 0..N-1; rerun training")
    recorded = [int(step) for step in manifest.get("snapshot_steps", [])]
    frames = [frame for frame in map(lambda step: _read_frame(run, step, n_points), analysed_steps(run, recorded))
              if frame is not None]
    if not frames:
        return None

    steps = np.array([frame["step"] for frame in frames], dtype=np.int64)
    outlier = np.stack([frame["outlier_score"] for frame in frames]).astype(np.float64)
    predicted = np.stack([frame["predicted_label"] for frame in frames]).astype(np.int64)
    given, true, noisy = probe_labels(samples)
    top_ids = top_outlier_ids(outlier, manifest)

    dataset = manifest.get("dataset", {})
    # The training set's panel as far as the detect stage has made it (tolerant: the files
    # may be mid-write or mid-redo; the panel appears at the next look).
    training = training_suspects(run, top_count(manifest), tolerant=True)
    class_names = run.class_names(max(int(predicted.max(initial=0)) + 1, training_labels(training)), samples=samples)

    metrics = _metrics_so_far(run)
    diagnostics = {key: np.array([frame[key] for frame in frames], dtype=np.float64) for key in DIAGNOSTIC_KEYS}
    xy = np.stack([frame["xy"] for frame in frames]).astype(np.float32)
    return AnimationData(
        name=str(manifest.get("name", run.path.name)),
        model=str(manifest.get("model", {}).get("name", "model")),
        dataset=str(dataset.get("name", "dataset")),
        class_names=class_names,
        steps=steps,
        epochs=_epochs_at(metrics, steps),
        frames=xy,
        given_labels=given,
        true_labels=true,
        is_noisy=noisy,
        outlier=outlier,
        quality=np.stack([frame["label_quality"] for frame in frames]).astype(np.float64),
        issue=np.stack([frame["is_label_issue"] for frame in frames]).astype(bool),
        predicted=predicted,
        top=top_ids,
        train_metrics=_metric_columns(metrics, "train"),
        eval_metrics=_metric_columns(metrics, "eval"),
        disparity=_disparities(xy),
        knn_overlap=diagnostics["knn_overlap"],
        explained_variance=diagnostics["explained_variance"],
        projection=projection_info(manifest),
        images=_probe_images(run, n_points) if with_images else None,
        generated=generated_images(run, steps),
        noise_rate=float(manifest.get("noise_rate") or 0.0),
        suspicion=_suspicion_so_far(run, n_points),
        detectors=_detectors_so_far(run),
        training=training,
    )


def _disparities(frames: np.ndarray) -> np.ndarray:
    """(T,) Procrustes disparity of each frame to the one before (NaN for the first), as the
    project stage writes it to projection.parquet."""
    from ftviz.align import disparity

    return np.array([np.nan] + [disparity(frames[t - 1], frames[t]) for t in range(1, len(frames))])


def _read_frame(run, step: int, n_points: int) -> dict | None:
    """One analysed frame's arrays, or None if its files are unreadable or of another probe size."""
    try:
        with np.load(analysis_file(run, "score", step)) as score, np.load(analysis_file(run, "project", step)) as project:
            frame = {key: np.asarray(score[key]) for key in SCORE_KEYS}
            frame["xy"] = np.asarray(project["xy"], dtype=np.float32)
            for key in DIAGNOSTIC_KEYS:
                frame[key] = float(project[key]) if key in project else np.nan
    except Exception:  # removed or replaced between the listing and the read: shown at the next look
        return None
    if frame["xy"].shape != (n_points, 2) or not np.isfinite(frame["xy"]).all():
        return None
    if any(frame[key].shape != (n_points,) for key in SCORE_KEYS):
        return None
    frame["step"] = int(step)
    return frame


def _metrics_so_far(run):
    import pandas as pd

    if not run.file("metrics.parquet").is_file():
        return pd.DataFrame({"step": [], "split": []})
    return run.read_parquet("metrics.parquet")


def _probe_images(run, n_points: int) -> np.ndarray | None:
    try:
        images = np.load(run.file("probe_images.npy"))
    except Exception:  # absent or unreadable: the page shows grey thumbnails
        return None
    return images if images.ndim == 4 and len(images) == n_points else None


def _suspicion_so_far(run, n_points: int):
    """The detect stage's ``suspicion.parquet`` once it is done, else the follower's latest
    interim table (else an earlier ``suspicion.parquet``); None: not yet, or not of this probe."""
    try:
        if run.stage_status("detect") != "done" and run.file(INTERIM_SUSPICION).is_file():
            return run.suspicion(optional=True, count=n_points, name=INTERIM_SUSPICION)
        return run.suspicion(optional=True, count=n_points)
    except FtvizError:
        return None


def _detectors_so_far(run):
    try:
        return run.detectors()
    except FtvizError:
        return None


def render_config(manifest: dict):
    """The run's :class:`ftviz.config.RenderConfig` from run.json (None, the defaults, if unreadable)."""
    from ftviz.config import config_from_manifest

    try:
        return config_from_manifest(manifest).render
    except FtvizError:  # a run.json from another ftviz, or edited: show it with the defaults
        return None


def page_payload(data: AnimationData, config=None) -> dict:
    """The page's data without the page: {"meta": dict, "points": base64 str, "generated": dict,
    "train_thumbnails": data URL or ""}.

    The same codec and metadata as :func:`ftviz.render.page.build_page`, without the probe's
    thumbnails: a live page keeps the sprite sheet it loaded with (the probe does not change).
    The training panel's few thumbnails do come along (``train_thumbnails``): which training
    samples it lists can change until the detect stage is done.
    Coordinates are quantised afresh over the frames so far on every call (the grid of the
    codec covers all of them), so each payload stands alone.
    """
    from ftviz.render.options import render_options
    from ftviz.render.page import _data_url, pack_points, page_meta, training_sheet

    options = render_options(config)
    points = pack_points(data)
    training_thumbnails, training_text = training_sheet(data, options)
    return {
        "meta": page_meta(data, options, points, None, training_thumbnails),
        "points": points.text,
        "generated": {str(i): _data_url(path.read_bytes(), "image/png") for i, path in sorted(data.generated.items())},
        "train_thumbnails": training_text,
    }


def live_page(data: AnimationData, config=None, *, live: dict) -> str:
    """The animation page of ``data`` that keeps itself up to date from the server.

    ``live`` (JSON-able: "api", the run's status URL, plus the status itself) goes into an
    ``#ftviz-live`` element; the page's script polls ``live["api"]`` while the run is live
    and fetches ``<api>/data`` when its ``revision`` changes. A page without that element
    (``animation.html``) never polls.
    """
    from ftviz.render.page import _json_for_script, build_page

    page, _ = build_page(data, config)
    element = f'<script type="application/json" id="ftviz-live">{_json_for_script(live)}</script>\n'
    if page.count(LIVE_ANCHOR) != 1:
        raise RuntimeError("the page template lost its #ftviz-meta element")
    return page.replace(LIVE_ANCHOR, element + LIVE_ANCHOR)
