"""The animation of a run: one self-contained HTML page, or a GIF/MP4 for slides.

The page (``animation.html``) embeds plotly.js, so it opens offline from the file, and
shows, frame by frame (one frame per snapshot step):

- a WebGL scatter of the probe set on fixed axes, coloured by given label, prediction,
  outlier score, label-issue flag or injected noise, with a thumbnail tooltip per point;
- the loss curve (train and eval loss, eval accuracy) as a control: a marker follows the
  frame and a click on a step jumps to its frame;
- the frame's top outliers (highest ``outlier_score``) with thumbnails and labels;
- the projection diagnostics (Procrustes disparity to the previous frame, kNN overlap,
  explained variance), to tell real change from projection artefacts;
- the generated-sample grid of the frame, where the run has ``generated/step-XXXXXXX.png``.

Size
----
Everything per point and frame travels in one binary blob, one deflated (``zlib``) stream
per array, base64-encoded; the page's script inflates it with the browser's
``DecompressionStream``. Coordinates are quantised to 14-bit codes on each frame's
bounding box, held in uint16 (4 bytes per point per frame before compression); outlier
score and label quality to uint8 over their range; prediction as uint8 (uint16 past 254
classes) and the label-issue flag as uint8. Coordinates and scores are stored as zigzag
differences to the previous frame, predictions and flags point by point over time, and
every array's bytes in planes (see :func:`encode_blob`). On the default run that is about
4.4 bytes per point per frame for the coordinates (never above 5.4) and 7 for everything.
Thumbnails are one sprite sheet (PNG or JPEG, whichever is smaller), cropped on a canvas
when shown.

Video
-----
GIF and MP4 are drawn with Pillow from the same frames (the scatter, a small loss-curve
panel, the legend and the frame's top outliers), with ``video_tween`` eased in-between
images per transition. The GIF is written by Pillow with one palette for every image (no
flicker); the MP4 is piped to the ffmpeg binary that ``imageio-ffmpeg`` ships.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ftviz.errors import FtvizError

OUTPUT_FORMATS = ("html", "gif", "mp4")
COLOR_MODES = {
    "label": "given label",
    "prediction": "prediction",
    "outlier_score": "outlier score",
    "label_issue": "label-issue flag",
    "noise": "injected noise",
}
# Tableau 10, then its light partners: readable on white, distinct for the usual <= 20 classes.
PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#a0cbe8", "#ffbe7d", "#ff9d9a", "#86bcb6", "#8cd17d",
    "#f1ce63", "#d4a6c8", "#fabfd2", "#d7b5a6", "#79706e",
]
# Low outlier scores recede (pale blue), high ones stand out (dark red).
OUTLIER_COLORSCALE = [
    [0.0, "#d4e4f4"], [0.35, "#9ecae1"], [0.6, "#fdae6b"], [0.8, "#e6550d"], [1.0, "#7f0000"],
]
FLAG_COLORS = {"label_issue": ("#c4c4c4", "#d62728"), "noise": ("#c4c4c4", "#ff7f0e")}
FLAG_NAMES = {"label_issue": ("no issue", "label issue"), "noise": ("clean label", "injected noise")}
MISSING_U8 = 255  # a score missing at a frame (quantised scores use 0..254)
# 14 bits per axis per frame: 1/16383 of the frame's extent, ~20 steps per screen pixel on a
# full-size plot (sharp even zoomed in 10x), at ~0.6 bytes per point per frame less than 16.
COORDINATE_BITS = 14
THUMBNAIL_BUDGET_PIXELS = 6_000_000  # thumbnail area over the whole probe (10,000 x 24 px squared)


# ---------------------------------------------------------------------------------------
# Loading a run
# ---------------------------------------------------------------------------------------
@dataclass
class AnimationData:
    """Everything the renderers show, loaded from one run directory.

    Attributes
    ----------
    steps : (T,) int, the snapshot step of each frame.
    frames : (T, N, 2) float32 aligned coordinates.
    given_labels, true_labels : (N,) int (``true_labels`` None where the run does not know).
    is_noisy : (N,) bool or None, given label differs from the true one (injected noise).
    outlier, quality : (T, N) float64, NaN where a score is missing.
    issue : (T, N) bool; predicted : (T, N) int (-1 where missing).
    top : (T, k) int, ids of the k highest outlier scores per frame.
    train_metrics, eval_metrics : dict of column -> list (NaN as None), sorted by step.
    disparity, knn_overlap, explained_variance : (T,) float (NaN where unknown).
    images : (N, H, W, 3) uint8 probe images or None.
    generated : {frame index: PNG path} for the frames with a generated-sample grid.
    """

    name: str
    model: str
    dataset: str
    class_names: list[str]
    steps: np.ndarray
    epochs: np.ndarray
    frames: np.ndarray
    given_labels: np.ndarray
    true_labels: np.ndarray | None
    is_noisy: np.ndarray | None
    outlier: np.ndarray
    quality: np.ndarray
    issue: np.ndarray
    predicted: np.ndarray
    top: np.ndarray
    train_metrics: dict
    eval_metrics: dict
    disparity: np.ndarray
    knn_overlap: np.ndarray
    explained_variance: np.ndarray
    images: np.ndarray | None = None
    generated: dict[int, Path] = field(default_factory=dict)
    noise_rate: float = 0.0

    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def n_points(self) -> int:
        return self.frames.shape[1]

    @property
    def has_noise(self) -> bool:
        return self.is_noisy is not None and bool(self.is_noisy.any())

    @property
    def title(self) -> str:
        return f"{self.name} — {self.model} on {self.dataset}"

    @property
    def subtitle(self) -> str:
        parts = [f"{self.n_points:,} probe samples", f"{self.n_frames} snapshots",
                 f"{len(self.class_names)} classes"]
        if self.noise_rate:
            parts.append(f"{self.noise_rate:.0%} labels flipped")
        return " · ".join(parts)


def load_animation_data(run, *, top: int | None = None, with_images: bool = True) -> AnimationData:
    """Read what the animation shows from ``run`` (a :class:`ftviz.rundir.RunDir`).

    Needs the train, score and project stages; raises :class:`MissingStageError` naming the
    command to run otherwise, and :class:`FtvizError` if the files disagree in shape.
    """
    manifest = run.manifest()
    run.require("score")
    frames = np.asarray(run.frames(), dtype=np.float32)
    projection = run.projection()
    samples = run.samples()
    metrics = run.metrics()
    scores = run.scores()
    if frames.ndim != 3 or frames.shape[2] != 2:
        raise FtvizError(f"{run.path}/frames.npy must be (T, N, 2), got {frames.shape}; rerun ftviz project {run.path}")
    n_frames, n_points = frames.shape[:2]
    if len(projection) != n_frames:
        raise FtvizError(
            f"{run.path}: frames.npy has {n_frames} frames but projection.parquet {len(projection)} rows; "
            f"rerun ftviz project {run.path}"
        )
    if len(samples) != n_points:
        raise FtvizError(
            f"{run.path}: frames.npy has {n_points} points but samples.parquet {len(samples)} rows; "
            "the run is inconsistent, rerun it"
        )
    if not np.isfinite(frames).all():
        raise FtvizError(f"{run.path}/frames.npy holds NaN or infinite coordinates; rerun ftviz project {run.path}")

    steps = projection["step"].to_numpy().astype(np.int64)
    samples = samples.sort_values("id")
    ids = samples["id"].to_numpy()
    if not np.array_equal(ids, np.arange(n_points)):
        raise FtvizError(f"{run.path}/samples.parquet ids must be 0..N-1; rerun training")
    given = samples["given_label"].to_numpy().astype(np.int64)
    true = samples["true_label"].to_numpy().astype(np.int64) if "true_label" in samples else None
    noisy = samples["is_noisy"].to_numpy().astype(bool) if "is_noisy" in samples else None
    if noisy is None and true is not None:
        noisy = given != true

    per_frame = _scores_per_frame(scores, steps, n_points)
    if top is None:
        top = int(manifest.get("config", {}).get("score", {}).get("top", 8))
    top = max(1, min(top, n_points))
    ranked = np.where(np.isnan(per_frame["outlier_score"]), -np.inf, per_frame["outlier_score"])
    top_ids = np.argsort(-ranked, axis=1, kind="stable")[:, :top]

    dataset = manifest.get("dataset", {})
    class_names = [str(c) for c in dataset.get("class_names") or []]
    n_classes = int(max(given.max(initial=0), np.nanmax(per_frame["predicted"], initial=0)) + 1)
    if len(class_names) < n_classes:
        from_samples = dict(zip(samples["given_label"], samples.get("class_name", samples["given_label"])))
        class_names = [str(from_samples.get(c, c)) for c in range(n_classes)]

    epochs = _epochs_at(metrics, steps)
    generated = {}
    folder = run.path / "generated"
    if folder.is_dir():
        for index, step in enumerate(steps):
            image = folder / f"step-{int(step):07d}.png"
            if image.is_file():
                generated[index] = image

    images = None
    if with_images:
        try:
            images = run.probe_images()
        except FtvizError:
            images = None
        if images is not None and (images.ndim != 4 or len(images) != n_points):
            images = None

    return AnimationData(
        name=str(manifest.get("name", run.path.name)),
        model=str(manifest.get("model", {}).get("name", "model")),
        dataset=str(dataset.get("name", "dataset")),
        class_names=class_names,
        steps=steps,
        epochs=epochs,
        frames=frames,
        given_labels=given,
        true_labels=true,
        is_noisy=noisy,
        outlier=per_frame["outlier_score"],
        quality=per_frame["label_quality"],
        issue=per_frame["is_label_issue"],
        predicted=per_frame["predicted"],
        top=top_ids,
        train_metrics=_metric_columns(metrics, "train"),
        eval_metrics=_metric_columns(metrics, "eval"),
        disparity=_column(projection, "disparity_to_previous", n_frames),
        knn_overlap=_column(projection, "knn_overlap", n_frames),
        explained_variance=_column(projection, "explained_variance", n_frames),
        images=images,
        generated=generated,
        noise_rate=float(manifest.get("noise_rate") or 0.0),
    )


def _scores_per_frame(scores, steps: np.ndarray, n_points: int) -> dict[str, np.ndarray]:
    """scores.parquet (long: step, id, ...) -> (T, N) arrays aligned with the frames."""
    n_frames = len(steps)
    out = {
        "outlier_score": np.full((n_frames, n_points), np.nan, dtype=np.float64),
        "label_quality": np.full((n_frames, n_points), np.nan, dtype=np.float64),
        "is_label_issue": np.zeros((n_frames, n_points), dtype=bool),
        "predicted": np.full((n_frames, n_points), -1, dtype=np.int64),
    }
    step_values = scores["step"].to_numpy().astype(np.int64)
    id_values = scores["id"].to_numpy().astype(np.int64)
    order = np.argsort(steps)
    position = np.searchsorted(steps[order], step_values)
    position = np.clip(position, 0, n_frames - 1)
    known = (steps[order][position] == step_values) & (id_values >= 0) & (id_values < n_points)
    rows = order[position[known]]
    cols = id_values[known]
    columns = {"outlier_score": "outlier_score", "label_quality": "label_quality",
               "is_label_issue": "is_label_issue", "predicted": "predicted_label"}
    for key, column in columns.items():
        if column in scores:
            out[key][rows, cols] = scores[column].to_numpy()[known]
    return out


def _metric_columns(metrics, split: str) -> dict[str, list]:
    table = metrics[metrics["split"] == split].sort_values("step") if "split" in metrics else metrics[:0]
    columns = {}
    for name in ("step", "loss", "accuracy", "true_accuracy"):
        if name in table:
            values = table[name].to_numpy(dtype=np.float64)
            columns[name] = [None if not math.isfinite(v) else (int(v) if name == "step" else float(v)) for v in values]
    return columns


def _epochs_at(metrics, steps: np.ndarray) -> np.ndarray:
    if "epoch" not in metrics or not len(metrics):
        return np.full(len(steps), np.nan)
    table = metrics.drop_duplicates("step").sort_values("step")
    return np.interp(steps, table["step"].to_numpy(dtype=float), table["epoch"].to_numpy(dtype=float))


def _column(table, name: str, length: int) -> np.ndarray:
    if name not in table:
        return np.full(length, np.nan)
    return table[name].to_numpy(dtype=np.float64)


# ---------------------------------------------------------------------------------------
# Encoding for the page
# ---------------------------------------------------------------------------------------
def quantise_coordinates(frames: np.ndarray, *, bits: int = COORDINATE_BITS,
                         padding: float = 0.04) -> tuple[np.ndarray, dict]:
    """Map (T, N, 2) float coordinates to integer codes on each frame's own bounding box.

    Each frame gets its own grid, so a frame that is small next to the others (early in
    training, or after a shrinking alignment) keeps full precision: the error is at most
    half a grid step, ``extent / (2 ** bits - 1) / 2`` of that frame, per axis.

    Returns
    -------
    codes : (T, N, 2) uint16 in [0, 2**bits - 1]; coordinate = origin[t] + code * scale[t].
    axes : {"origin": (T, 2) list, "scale": (T, 2) list, "range": [[xmin, xmax], [ymin, ymax]]};
        ``range`` covers every frame, padded by ``padding`` of the span on each side: the
        plot's fixed axes.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    frames = np.asarray(frames, dtype=np.float64)
    top = (1 << bits) - 1
    low, high = frames.min(axis=1), frames.max(axis=1)  # (T, 2)
    scale = np.where(high > low, (high - low) / top, 1.0)
    codes = np.rint((frames - low[:, None, :]) / scale[:, None, :]).clip(0, top).astype("<u2")
    everywhere_low, everywhere_high = low.min(axis=0), high.max(axis=0)
    span = np.where(everywhere_high > everywhere_low, everywhere_high - everywhere_low, 1.0)
    pad = span * padding
    axes = {
        "origin": low.tolist(),
        "scale": scale.tolist(),
        "range": [[float(everywhere_low[0] - pad[0]), float(everywhere_high[0] + pad[0])],
                  [float(everywhere_low[1] - pad[1]), float(everywhere_high[1] + pad[1])]],
    }
    return codes, axes


def frame_fits(frames: np.ndarray, *, quantile: float = 0.99, padding: float = 0.06) -> dict:
    """Per-frame centre and scale that make every frame fill the plot (the "per_frame" axes).

    A fitted frame is ``(frames[t] - centre[t]) / scale[t]``: centred on its mean, and
    scaled so that ``quantile`` of its points lie within 1 of the centre in both x and y.

    Returns {"centre": (T, 2) list, "scale": (T,) list, "range": [[x0, x1], [y0, y1]]}; the
    range covers the fitted frames (capped at 2.5 so a far outlier cannot shrink the rest).
    """
    frames = np.asarray(frames, dtype=np.float64)
    centre = frames.mean(axis=1)
    reach = np.abs(frames - centre[:, None, :]).max(axis=2)
    scale = np.quantile(reach, quantile, axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    fitted = (frames - centre[:, None, :]) / scale[:, None, None]
    low = np.maximum(fitted.reshape(-1, 2).min(axis=0), -2.5)
    high = np.minimum(fitted.reshape(-1, 2).max(axis=0), 2.5)
    pad = (high - low) * padding
    return {
        "centre": centre.tolist(),
        "scale": scale.tolist(),
        "range": [[float(low[0] - pad[0]), float(high[0] + pad[0])], [float(low[1] - pad[1]), float(high[1] + pad[1])]],
    }


def quantise_unit(values: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Floats (NaN = missing) -> uint8 0..254 over their own [min, max]; 255 marks missing.

    Returns (codes, [low, high]); value = low + code * (high - low) / 254.
    """
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(values.shape, MISSING_U8, dtype=np.uint8), [0.0, 1.0]
    low, high = float(values[finite].min()), float(values[finite].max())
    span = high - low if high > low else 1.0
    codes = np.full(values.shape, MISSING_U8, dtype=np.uint8)
    codes[finite] = np.rint((values[finite] - low) / span * 254).astype(np.uint8)
    return codes, [low, high]


def _label_dtype(n_classes: int) -> str:
    return "uint8" if n_classes < 255 else "uint16"


def _zigzag(signed: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers -> unsigned, small magnitudes first (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...)."""
    wide = signed.astype(np.int64)
    return ((wide << 1) ^ (wide >> (bits - 1))) & ((1 << bits) - 1)


def encode_blob(arrays: list[tuple[str, np.ndarray, str]], *, level: int = 6) -> tuple[bytes, list[dict]]:
    """Pack arrays into one buffer of deflated streams that the page's script unpacks.

    Parameters
    ----------
    arrays : (name, array, layout) triples, ``layout`` one of

        - "plain": the array as it is;
        - "delta": frames on axis 0, stored as the first frame and then the zigzag-coded
          difference to the previous frame (slow change becomes small numbers);
        - "points": a (T, N) array stored transposed, each point's values over time side
          by side (labels that rarely change compress to almost nothing).

        Every array's bytes are then split into planes (all low bytes, then all high
        bytes), which deflate compresses far better than interleaved bytes.
    level : zlib level; 6 is within 1 % of 9's size at a tenth of its time.

    Returns
    -------
    blob : the zlib streams, one per array, back to back.
    descriptors : per array {"name", "dtype", "shape" (as given), "layout", "offset",
        "bytes" (of the stream in ``blob``), "raw_bytes" (inflated)}.
    """
    parts, descriptors, offset = [], [], 0
    for name, array, layout in arrays:
        if layout not in ("plain", "delta", "points"):
            raise ValueError(f"{name}: layout must be plain, delta or points, got {layout!r}")
        array = np.ascontiguousarray(array)
        if array.dtype.kind != "u":
            raise ValueError(f"{name}: only unsigned integer arrays are packed, got {array.dtype}")
        if array.dtype.itemsize > 1:
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        if layout == "delta" and array.ndim >= 1 and len(array) > 1:
            bits = 8 * array.dtype.itemsize
            signed = np.dtype(f"<i{array.dtype.itemsize}")
            stored = array.copy()
            difference = (array[1:] - array[:-1]).view(signed)  # wraps: unsigned arithmetic
            stored[1:] = _zigzag(difference, bits).astype(array.dtype)
        elif layout == "points":
            if array.ndim != 2:
                raise ValueError(f"{name}: the points layout wants a (T, N) array, got {array.shape}")
            stored = np.ascontiguousarray(array.T)
        else:
            layout = "plain"  # a single frame has nothing to difference
            stored = array
        planes = np.ascontiguousarray(stored.view(np.uint8).reshape(-1, array.dtype.itemsize).T).tobytes()
        packed = zlib.compress(planes, level)
        descriptors.append({
            "name": name, "dtype": array.dtype.name, "shape": list(array.shape), "layout": layout,
            "offset": offset, "bytes": len(packed), "raw_bytes": len(planes),
        })
        parts.append(packed)
        offset += len(packed)
    return b"".join(parts), descriptors


def sprite_sheet(images: np.ndarray, *, max_size: int = 32, image_format: str = "auto",
                 budget_pixels: int = THUMBNAIL_BUDGET_PIXELS) -> tuple[bytes, dict]:
    """All thumbnails in one image, row-major in square cells of ``cell`` pixels.

    Parameters
    ----------
    images : (N, H, W, 3) uint8 (or (N, H, W) grey).
    max_size : longest thumbnail side in pixels; larger images are downscaled.
    image_format : "png", "jpeg" or "auto" (PNG unless JPEG is under 3/4 of its size).
    budget_pixels : big probes get smaller thumbnails so that N * side**2 stays under this
        (never below 12 px), which keeps the page a few MB for 10,000 images.

    Returns
    -------
    data : the encoded sheet.
    info : {"mime", "cell", "width", "height", "columns", "count"}; thumbnail i is the
        ``width`` x ``height`` box at (i % columns * cell, i // columns * cell).
    """
    from PIL import Image

    if image_format not in ("auto", "png", "jpeg"):
        raise FtvizError(f"render.thumbnail_format must be auto, png or jpeg, got {image_format!r}")
    images = np.asarray(images)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] < 3:
        raise FtvizError(f"probe images must be (N, H, W, 3), got {images.shape}; rerun training")
    if images.dtype != np.uint8:
        images = np.clip(images, 0, 255).astype(np.uint8)
    count, height, width = images.shape[:3]
    side = min(max_size, max(height, width), max(12, int(math.sqrt(budget_pixels / max(count, 1)))))
    factor = side / max(height, width)
    thumb_w, thumb_h = max(1, round(width * factor)), max(1, round(height * factor))
    # Cells of a multiple of 16 px keep JPEG blocks (4:2:0) from bleeding between thumbnails.
    cell = int(math.ceil(max(thumb_w, thumb_h) / 16) * 16)
    columns = max(1, int(math.ceil(math.sqrt(count))))
    rows = int(math.ceil(count / columns))
    sheet = np.full((rows * cell, columns * cell, 3), 255, dtype=np.uint8)
    for index in range(count):
        tile = images[index, ..., :3]
        if (thumb_w, thumb_h) != (width, height):
            tile = np.asarray(Image.fromarray(tile).resize((thumb_w, thumb_h), Image.Resampling.LANCZOS))
        r, c = divmod(index, columns)
        sheet[r * cell : r * cell + thumb_h, c * cell : c * cell + thumb_w] = tile
    picture = Image.fromarray(sheet)
    encoded = {}
    if image_format in ("auto", "png"):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=6)
        encoded["png"] = buffer.getvalue()
    if image_format in ("auto", "jpeg"):
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        encoded["jpeg"] = buffer.getvalue()
    if image_format == "auto":
        chosen = "jpeg" if len(encoded["jpeg"]) < 0.75 * len(encoded["png"]) else "png"
    else:
        chosen = image_format
    info = {"mime": f"image/{chosen}", "cell": cell, "width": thumb_w, "height": thumb_h,
            "columns": columns, "count": int(count)}
    return encoded[chosen], info


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _json_for_script(value: Any) -> str:
    """JSON safe inside <script>: no "</" can close the tag early."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _finite_list(values: np.ndarray, digits: int = 6) -> list:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in np.asarray(values, dtype=float)]


def _palette(n: int) -> list[str]:
    colours = list(PALETTE)
    for index in range(len(colours), n):
        # Past 20 classes: hues spread by the golden angle, mid lightness.
        hue = (index * 137.508) % 360
        colours.append(f"hsl({hue:.0f},55%,52%)")
    return colours[:max(n, 1)]


def _render_options(config) -> dict:
    """RenderConfig (or None) -> plain options with defaults, validated."""
    options = {
        "color_by": "label", "point_size": 5.0, "frame_ms": 400, "thumbnails": True,
        "transition_ms": 300, "thumbnail_size": 32, "thumbnail_format": "auto",
        "video_width": 1280, "video_height": 720, "video_tween": 3, "axes": "fixed",
    }
    if config is not None:
        for key in options:
            if hasattr(config, key):
                options[key] = getattr(config, key)
    if options["color_by"] not in COLOR_MODES:
        raise FtvizError(f"render.color_by must be one of {', '.join(COLOR_MODES)}; got {options['color_by']!r}")
    if options["frame_ms"] <= 0 or options["point_size"] <= 0:
        raise FtvizError("render.frame_ms and render.point_size must be > 0")
    if options["axes"] not in ("fixed", "per_frame"):
        raise FtvizError(f"render.axes must be fixed or per_frame, got {options['axes']!r}")
    if options["video_tween"] < 0:
        raise FtvizError("render.video_tween must be >= 0")
    if options["video_width"] < 320 or options["video_height"] < 240:
        raise FtvizError("render.video_width x video_height must be at least 320 x 240")
    return options


def build_page(data: AnimationData, config=None) -> tuple[str, dict]:
    """The self-contained HTML page for ``data``.

    Returns
    -------
    page : the HTML text.
    sizes : bytes of each part: {"total", "plotlyjs", "points" (the per-point blob, base64),
        "thumbnails", "generated", "other"} and "bytes_per_point_frame" (points / (N T)).
    """
    from importlib.resources import files

    from plotly.offline import get_plotlyjs

    options = _render_options(config)
    n_frames, n_points = data.n_frames, data.n_points
    codes, axes = quantise_coordinates(data.frames)
    outlier_codes, outlier_range = quantise_unit(data.outlier)
    quality_codes, quality_range = quantise_unit(data.quality)
    n_classes = len(data.class_names)
    label_dtype = _label_dtype(n_classes)
    predicted = np.where(data.predicted < 0, np.iinfo(label_dtype).max, data.predicted).astype(label_dtype)
    # Layouts chosen by measurement on real runs (see encode_blob): coordinates and scores
    # drift from frame to frame, predictions and flags mostly stay put per point.
    arrays = [
        ("coords", codes, "delta"),
        ("outlier", outlier_codes, "delta"),
        ("quality", quality_codes, "delta"),
        ("predicted", predicted, "points"),
        ("issue", data.issue.astype(np.uint8), "points"),
        ("given", data.given_labels.astype(label_dtype), "plain"),
    ]
    if data.true_labels is not None:
        arrays.append(("true", data.true_labels.astype(label_dtype), "plain"))
    if data.is_noisy is not None:
        arrays.append(("noisy", data.is_noisy.astype(np.uint8), "plain"))
    blob, descriptors = encode_blob(arrays)
    blob_text = base64.b64encode(blob).decode("ascii")

    thumbnails = None
    thumbnail_text = ""
    if options["thumbnails"] and data.images is not None:
        sheet, info = sprite_sheet(data.images, max_size=int(options["thumbnail_size"]),
                                   image_format=str(options["thumbnail_format"]))
        thumbnails = info
        thumbnail_text = _data_url(sheet, info["mime"])
    generated_urls = {str(i): _data_url(p.read_bytes(), "image/png") for i, p in sorted(data.generated.items())}

    outlier_finite = data.outlier[np.isfinite(data.outlier)]
    color_range = ([float(np.percentile(outlier_finite, 1)), float(np.percentile(outlier_finite, 99.5))]
                   if outlier_finite.size else [0.0, 1.0])
    modes = [m for m in COLOR_MODES if m != "noise" or data.has_noise]
    color_by = options["color_by"] if options["color_by"] in modes else "label"
    meta = {
        "title": data.title,
        "subtitle": data.subtitle,
        "name": data.name, "model": data.model, "dataset": data.dataset,
        "T": n_frames, "N": n_points,
        "steps": [int(s) for s in data.steps],
        "epochs": _finite_list(data.epochs, 4),
        "classNames": data.class_names,
        "axes": axes,
        "fit": frame_fits(data.frames),
        "axesMode": options["axes"],
        "outlierRange": outlier_range, "qualityRange": quality_range, "colorRange": color_range,
        "arrays": descriptors,
        "missingLabel": int(np.iinfo(label_dtype).max),
        "metrics": {"train": data.train_metrics, "eval": data.eval_metrics},
        "diagnostics": {
            "disparity": _finite_list(data.disparity),
            "knn_overlap": _finite_list(data.knn_overlap),
            "explained_variance": _finite_list(data.explained_variance),
        },
        "top": data.top.astype(int).tolist(),
        "thumbnails": thumbnails,
        "palette": _palette(n_classes),
        "outlierColorscale": OUTLIER_COLORSCALE,
        "flagColors": {k: list(v) for k, v in FLAG_COLORS.items()},
        "flagNames": {k: list(v) for k, v in FLAG_NAMES.items()},
        "colorModes": [[m, COLOR_MODES[m]] for m in modes],
        "colorBy": color_by,
        "hasNoise": data.has_noise,
        "generatedFrames": sorted(int(i) for i in data.generated),
        "pointSize": float(options["point_size"]),
        "frameMs": int(options["frame_ms"]),
        "transitionMs": int(options["transition_ms"]),
    }

    assets = files("ftviz") / "assets"
    template = (assets / "animation.html").read_text(encoding="utf-8")
    plotly_js = get_plotlyjs()
    pieces = {
        "{{TITLE}}": html.escape(data.title),
        "{{HEADING}}": html.escape(data.title),
        "{{SUBTITLE}}": html.escape(data.subtitle),
        "/*{{CSS}}*/": (assets / "animation.css").read_text(encoding="utf-8"),
        "{{META}}": _json_for_script(meta),
        "{{POINTS}}": blob_text,
        "{{THUMBNAILS}}": thumbnail_text,
        "{{GENERATED}}": _json_for_script(generated_urls),
        "/*{{APP}}*/": (assets / "animation.js").read_text(encoding="utf-8"),
    }
    page = _fill_template(template, {**pieces, "/*{{PLOTLYJS}}*/": plotly_js})
    total = len(page.encode("utf-8"))
    sizes = {
        "total": total,
        "plotlyjs": len(plotly_js.encode("utf-8")),
        "points": len(blob_text),
        "thumbnails": len(thumbnail_text),
        "generated": sum(len(u) for u in generated_urls.values()),
        "bytes_per_point_frame": len(blob_text) / max(1, n_points * n_frames),
        # base64 turns 3 bytes into 4: the coordinates' share of the embedded text.
        "coordinate_bytes_per_point_frame": descriptors[0]["bytes"] * 4 / 3 / max(1, n_points * n_frames),
    }
    sizes["other"] = total - sizes["plotlyjs"] - sizes["points"] - sizes["thumbnails"] - sizes["generated"]
    return page, sizes


def _fill_template(template: str, pieces: dict[str, str]) -> str:
    """Replace each marker once, in one pass: inserted text is never searched for markers."""
    import re

    pattern = re.compile("|".join(re.escape(marker) for marker in pieces))
    found = pattern.findall(template)
    if sorted(found) != sorted(pieces):
        raise RuntimeError(f"the page template's markers {found} do not match {sorted(pieces)}")
    return pattern.sub(lambda match: pieces[match.group(0)], template)


# ---------------------------------------------------------------------------------------
# Video (GIF / MP4) with Pillow
# ---------------------------------------------------------------------------------------
def _hex_rgb(colour: str) -> tuple[int, int, int]:
    if colour.startswith("hsl"):
        import colorsys

        hue, sat, light = (float(v.strip("%")) for v in colour[4:-1].split(","))
        r, g, b = colorsys.hls_to_rgb(hue / 360, light / 100, sat / 100)
        return round(r * 255), round(g * 255), round(b * 255)
    colour = colour.lstrip("#")
    return tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))


def _colorscale_rgb(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(M,) floats -> (M, 3) uint8 colours on OUTLIER_COLORSCALE."""
    stops = np.array([s for s, _ in OUTLIER_COLORSCALE])
    colours = np.array([_hex_rgb(c) for _, c in OUTLIER_COLORSCALE], dtype=np.float64)
    u = np.clip((values - low) / ((high - low) or 1.0), 0, 1)
    u = np.where(np.isfinite(u), u, 0)
    return np.stack([np.interp(u, stops, colours[:, k]) for k in range(3)], axis=1).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                 "LiberationSans-Regular.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _ease(u: float) -> float:
    """Cubic ease-in-out, as the page uses: frames settle instead of drifting."""
    return 4 * u**3 if u < 0.5 else 1 - (-2 * u + 2) ** 3 / 2


class FramePainter:
    """Draw video frames (H, W, 3) uint8: scatter on the left, loss panel and legend on the right.

    Parameters
    ----------
    data : what to draw. options : from :func:`_render_options`.
    """

    supersample = 2  # the scatter is drawn at 2x and downsampled: smooth discs for free

    def __init__(self, data: AnimationData, options: dict):
        from PIL import Image, ImageDraw

        self.data, self.options = data, options
        self.width, self.height = int(options["video_width"]), int(options["video_height"])
        self.color_by = options["color_by"] if options["color_by"] in COLOR_MODES else "label"
        if self.color_by == "noise" and not data.has_noise:
            self.color_by = "label"
        scale = self.height / 720
        self.fonts = {k: _font(max(9, round(v * scale))) for k, v in
                      {"title": 26, "text": 17, "small": 14}.items()}
        self.header = round(64 * scale)
        margin = round(16 * scale)
        side = min(self.width * 0.62, self.height - self.header - margin) // 1
        self.plot_box = (margin, self.header, margin + int(side), self.header + int(side))
        self.panel_left = self.plot_box[2] + 2 * margin
        self.panel_right = self.width - margin
        self.frames = data.frames
        if options["axes"] == "per_frame":
            fit = frame_fits(data.frames)
            centre, spread = np.asarray(fit["centre"]), np.asarray(fit["scale"])
            self.frames = ((data.frames - centre[:, None, :]) / spread[:, None, None]).astype(np.float32)
            (x0, x1), (y0, y1) = fit["range"]
        else:
            (x0, x1), (y0, y1) = quantise_coordinates(data.frames)[1]["range"]
        # Equal units on both axes (like the page): widen the shorter range.
        span = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        self.view = (cx - span / 2, cy - span / 2, span)
        self.palette = np.array([_hex_rgb(c) for c in _palette(len(data.class_names))], dtype=np.uint8)
        self.disc = self._disc_offsets(max(1.0, options["point_size"] * scale * self.supersample * 0.55))
        outlier_finite = data.outlier[np.isfinite(data.outlier)]
        self.outlier_range = ((float(np.percentile(outlier_finite, 1)), float(np.percentile(outlier_finite, 99.5)))
                              if outlier_finite.size else (0.0, 1.0))
        self.background = Image.new("RGB", (self.width, self.height), "white")
        draw = ImageDraw.Draw(self.background)
        draw.text((margin, round(14 * scale)), data.title, fill="#1f2430", font=self.fonts["title"])
        x0p, y0p, x1p, y1p = self.plot_box
        draw.rectangle((x0p, y0p, x1p, y1p), fill="#fafbfd", outline="#d9dde5")
        self.loss_box = (self.panel_left + round(50 * scale), self.header + round(40 * scale),
                         self.panel_right - round(44 * scale), self.header + round(250 * scale))
        self._draw_loss_axes(draw)
        self._draw_legend(draw, top=self.loss_box[3] + round(70 * scale))
        # The frame's top outliers along the bottom of the panel, as on the page.
        count = data.top.shape[1]
        gap = round(8 * scale)
        self.thumb = int(min(round(64 * scale), (self.panel_right - self.panel_left - gap * (count - 1)) // max(count, 1)))
        self.strip_top = self.plot_box[3] - self.thumb - round(40 * scale)
        self.thumb_gap = gap
        self._thumbs: dict[int, object] = {}
        if data.images is not None and count:
            draw.text((self.panel_left, self.strip_top - round(26 * scale)), "top outliers at this step",
                      fill="#1f2430", font=self.fonts["text"])

    @staticmethod
    def _disc_offsets(radius: float) -> np.ndarray:
        r = int(math.ceil(radius))
        dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
        inside = dx**2 + dy**2 <= radius**2
        return np.stack([dy[inside], dx[inside]], axis=1)

    # -- static parts --------------------------------------------------------------------
    def _loss_xy(self, steps, values, low, high):
        x0, y0, x1, y1 = self.loss_box
        s0, s1 = float(self.data.steps.min()), float(max(self.data.steps.max(), self.data.steps.min() + 1))
        xs = x0 + (np.asarray(steps, dtype=float) - s0) / (s1 - s0) * (x1 - x0)
        ys = y1 - (np.asarray(values, dtype=float) - low) / ((high - low) or 1.0) * (y1 - y0)
        return xs, ys

    def _loss_series(self):
        train, evaluation = self.data.train_metrics, self.data.eval_metrics
        series = []
        for table, colour, width in ((train, "#9ecae1", 1), (evaluation, "#1f5fa8", 2)):
            steps = np.array([np.nan if s is None else s for s in table.get("step", [])], dtype=float)
            loss = np.array([np.nan if v is None else v for v in table.get("loss", [])], dtype=float)
            keep = np.isfinite(steps) & np.isfinite(loss) if len(loss) else np.zeros(0, bool)
            series.append((steps[keep] if len(loss) else steps[:0], loss[keep] if len(loss) else loss, colour, width))
        return series

    def _draw_loss_axes(self, draw) -> None:
        x0, y0, x1, y1 = self.loss_box
        small, text = self.fonts["small"], self.fonts["text"]
        draw.text((self.panel_left, self.header), "loss", fill="#1f2430", font=text)
        draw.rectangle((x0, y0, x1, y1), outline="#d9dde5")
        series = self._loss_series()
        values = np.concatenate([s[1] for s in series]) if series else np.zeros(0)
        self.loss_low, self.loss_high = (0.0, float(values.max()) * 1.05) if values.size else (0.0, 1.0)
        for frac in (0.0, 0.5, 1.0):
            value = self.loss_low + frac * (self.loss_high - self.loss_low)
            y = y1 - frac * (y1 - y0)
            draw.line((x0, y, x1, y), fill="#eef0f4")
            draw.text((x0 - 6, y), f"{value:.2g}", fill="#5b6270", font=small, anchor="rm")
        draw.text((x0, y1 + 4), f"{int(self.data.steps.min())}", fill="#5b6270", font=small, anchor="lt")
        draw.text((x1, y1 + 4), f"step {int(self.data.steps.max())}", fill="#5b6270", font=small, anchor="rt")
        for steps, loss, colour, width in series:
            if len(steps) > 1:
                xs, ys = self._loss_xy(steps, loss, self.loss_low, self.loss_high)
                draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=width)
        accuracy = self.data.eval_metrics.get("accuracy", [])
        steps = self.data.eval_metrics.get("step", [])
        pairs = [(s, a) for s, a in zip(steps, accuracy) if s is not None and a is not None]
        if len(pairs) > 1:
            xs, ys = self._loss_xy([p[0] for p in pairs], [p[1] for p in pairs], 0.0, 1.0)
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill="#59a14f", width=2)
            draw.text((x1 + 4, y0), "100%", fill="#3d7a35", font=small, anchor="lm")
            draw.text((x1 + 4, y1), "0%", fill="#3d7a35", font=small, anchor="lm")
        key_y = y1 + round(26 * self.height / 720)
        x = x0
        for label, colour in (("train loss", "#9ecae1"), ("eval loss", "#1f5fa8"), ("eval accuracy", "#59a14f")):
            draw.line((x, key_y, x + 18, key_y), fill=colour, width=3)
            draw.text((x + 24, key_y), label, fill="#3a4150", font=small, anchor="lm")
            x += 24 + draw.textlength(label, font=small) + 18

    def _categories(self, frame: int) -> tuple[np.ndarray, np.ndarray, list[tuple[str, tuple]]]:
        """(category per point, RGB per category, legend entries) for ``frame``."""
        data, mode = self.data, self.color_by
        if mode in ("label", "prediction"):
            labels = data.given_labels if mode == "label" else data.predicted[frame]
            labels = np.where(labels < 0, 0, labels) % len(self.palette)
            legend = [(name, tuple(self.palette[i % len(self.palette)])) for i, name in enumerate(data.class_names)]
            return labels, self.palette, legend
        if mode in ("label_issue", "noise"):
            flags = data.issue[frame] if mode == "label_issue" else data.is_noisy
            colours = np.array([_hex_rgb(c) for c in FLAG_COLORS[mode]], dtype=np.uint8)
            legend = list(zip(FLAG_NAMES[mode], map(tuple, colours)))
            return flags.astype(np.int64), colours, legend
        raise AssertionError(mode)

    def _draw_legend(self, draw, top: int) -> None:
        small = self.fonts["small"]
        x, y = self.panel_left, top
        draw.text((x, y), f"colour: {COLOR_MODES[self.color_by]}", fill="#1f2430", font=self.fonts["text"])
        y += round(28 * self.height / 720)
        if self.color_by == "outlier_score":
            low, high = self.outlier_range
            width = self.panel_right - x - 80
            ramp = _colorscale_rgb(np.linspace(low, high, width), low, high)
            for i, colour in enumerate(ramp):
                draw.line((x + i, y, x + i, y + 14), fill=tuple(int(c) for c in colour))
            draw.text((x, y + 18), f"{low:.2f} typical", fill="#5b6270", font=small)
            draw.text((x + width, y + 18), f"atypical {high:.2f}", fill="#5b6270", font=small, anchor="ra")
            return
        _, _, legend = self._categories(0)
        columns = 2 if len(legend) > 6 else 1
        column_width = (self.panel_right - x) // columns
        line = round(22 * self.height / 720)
        for index, (name, colour) in enumerate(legend[:24]):
            cx = x + (index % columns) * column_width
            cy = y + (index // columns) * line
            draw.ellipse((cx, cy + 3, cx + 12, cy + 15), fill=tuple(int(c) for c in colour))
            draw.text((cx + 20, cy + 9), str(name)[:22], fill="#3a4150", font=small, anchor="lm")

    # -- per frame -----------------------------------------------------------------------
    def positions(self, position: float) -> np.ndarray:
        """(N, 2) coordinates at a fractional frame index, eased between whole frames."""
        frames = self.frames
        t0 = int(math.floor(position))
        t1 = min(t0 + 1, len(frames) - 1)
        u = _ease(position - t0)
        if t1 == t0 or u == 0:
            return frames[t0]
        return frames[t0] * (1 - u) + frames[t1] * u

    def _thumbnail(self, index: int):
        from PIL import Image

        if index not in self._thumbs:
            picture = Image.fromarray(np.ascontiguousarray(self.data.images[index, ..., :3]))
            # Small images are enlarged pixel by pixel (crisp), large ones smoothly reduced.
            resample = Image.Resampling.NEAREST if picture.width < self.thumb else Image.Resampling.LANCZOS
            height = max(1, round(self.thumb * picture.height / picture.width))
            self._thumbs[index] = picture.resize((self.thumb, min(height, self.thumb)), resample)
        return self._thumbs[index]

    def _draw_outliers(self, image, draw, frame: int) -> None:
        data = self.data
        if data.images is None:
            return
        small = self.fonts["small"]
        for j, index in enumerate(data.top[frame]):
            x = self.panel_left + j * (self.thumb + self.thumb_gap)
            y = self.strip_top
            image.paste(self._thumbnail(int(index)), (x, y))
            flagged = bool(data.issue[frame, index])
            draw.rectangle((x - 1, y - 1, x + self.thumb, y + self.thumb), outline="#d62728" if flagged else "#d9dde5",
                           width=2 if flagged else 1)
            score = data.outlier[frame, index]
            draw.text((x, y + self.thumb + 3), f"{score:.2f}" if math.isfinite(score) else "–", fill="#1f2430", font=small)
            given = data.class_names[data.given_labels[index]] if data.given_labels[index] < len(data.class_names) else "?"
            predicted = data.predicted[frame, index]
            predicted = data.class_names[predicted] if 0 <= predicted < len(data.class_names) else "–"
            text = f"{given[:6]}→{predicted[:6]}"
            draw.text((x, y + self.thumb + 3 + small.size + 2), text, fill="#5b6270", font=small)

    def paint(self, position: float) -> np.ndarray:
        """The frame at fractional frame index ``position`` as (H, W, 3) uint8."""
        from PIL import Image, ImageDraw

        frame = int(round(position))
        data = self.data
        x0, y0, x1, y1 = self.plot_box
        size = (x1 - x0 - 2) * self.supersample
        canvas = np.empty((size, size, 3), dtype=np.uint8)
        canvas[:] = (250, 251, 253)
        vx, vy, span = self.view
        points = self.positions(position)
        px = ((points[:, 0] - vx) / span * (size - 1)).astype(np.int64)
        py = ((1 - (points[:, 1] - vy) / span) * (size - 1)).astype(np.int64)
        if self.color_by == "outlier_score":
            values = data.outlier[frame]
            colours = _colorscale_rgb(values, *self.outlier_range)
            order = np.argsort(np.where(np.isfinite(values), values, -np.inf))  # atypical on top
        else:
            categories, palette, _ = self._categories(frame)
            colours = palette[categories]
            order = np.argsort(categories, kind="stable") if self.color_by in ("label_issue", "noise") \
                else np.arange(len(points))
        px, py, colours = px[order], py[order], colours[order]
        for dy, dx in self.disc:
            yy, xx = py + dy, px + dx
            inside = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
            canvas[yy[inside], xx[inside]] = colours[inside]
        scatter = Image.fromarray(canvas).resize((size // self.supersample,) * 2, Image.Resampling.BOX)
        image = self.background.copy()
        image.paste(scatter, (x0 + 1, y0 + 1))
        draw = ImageDraw.Draw(image)
        # Rings around the frame's top outliers, as on the page.
        top = data.top[frame]
        ring = max(4, self.options["point_size"] * 1.4) * self.height / 720
        for index in top:
            cx = x0 + 1 + (points[index, 0] - vx) / span * (size / self.supersample - 1)
            cy = y0 + 1 + (1 - (points[index, 1] - vy) / span) * (size / self.supersample - 1)
            draw.ellipse((cx - ring, cy - ring, cx + ring, cy + ring), outline="#111111", width=2)
        self._draw_outliers(image, draw, frame)
        step = int(data.steps[frame])
        label = f"step {step}  ·  frame {frame + 1}/{data.n_frames}"
        if math.isfinite(data.epochs[frame]):
            label += f"  ·  epoch {data.epochs[frame]:.2f}"
        draw.text((x0 + 10, y0 + 8), label, fill="#1f2430", font=self.fonts["text"])
        # The loss-curve marker follows the frame.
        lx0, ly0, lx1, ly1 = self.loss_box
        xs, _ = self._loss_xy([step], [0.0], self.loss_low, self.loss_high)
        draw.line((float(xs[0]), ly0, float(xs[0]), ly1), fill="#d62728", width=2)
        diagnostics = []
        if math.isfinite(data.disparity[frame]):
            diagnostics.append(f"disparity to previous {data.disparity[frame]:.3f}")
        if math.isfinite(data.knn_overlap[frame]):
            diagnostics.append(f"kNN overlap {data.knn_overlap[frame]:.2f}")
        if diagnostics:
            draw.text((x0 + 10, y1 - 10), "   ".join(diagnostics), fill="#5b6270",
                      font=self.fonts["small"], anchor="ld")
        return np.asarray(image)


def video_positions(n_frames: int, tween: int) -> list[float]:
    """Fractional frame indices to paint: every frame plus ``tween`` eased steps between."""
    positions = []
    for frame in range(n_frames):
        positions.append(float(frame))
        if frame < n_frames - 1:
            positions.extend(frame + (k + 1) / (tween + 1) for k in range(tween))
    return positions


def iter_video_frames(data: AnimationData, config=None) -> Iterator[np.ndarray]:
    """Yield the video's images (H, W, 3) uint8: every frame and its eased in-betweens."""
    painter = FramePainter(data, _render_options(config))
    for position in video_positions(data.n_frames, int(painter.options["video_tween"])):
        yield painter.paint(position)


def _hold_last_ms(options: dict) -> float:
    """How long the end state stays up before a GIF loops (or an MP4 ends)."""
    return 3 * options["frame_ms"]


def write_gif(data: AnimationData, path: Path, config=None) -> Path:
    """Animated GIF with one palette for every frame (steady colours), looping."""
    from PIL import Image

    from ftviz.rundir import atomic_path

    options = _render_options(config)
    step_ms = max(20, round(options["frame_ms"] / (options["video_tween"] + 1) / 10) * 10)
    painter = FramePainter(data, options)
    positions = video_positions(data.n_frames, int(options["video_tween"]))
    # One palette from the first, middle and last frames: steady colours, no flicker.
    picks = [Image.fromarray(painter.paint(positions[i])) for i in sorted({0, len(positions) // 2, len(positions) - 1})]
    montage = Image.new("RGB", (picks[0].width, picks[0].height * len(picks)))
    for i, picture in enumerate(picks):
        montage.paste(picture, (0, i * picture.height))
    palette = montage.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    # Quantised as they are painted: one byte per pixel held, not three.
    frames = [Image.fromarray(painter.paint(position)).quantize(palette=palette, dither=Image.Dither.NONE)
              for position in positions]
    durations = [step_ms] * len(frames)
    durations[-1] = step_ms + round(_hold_last_ms(options) / 10) * 10
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0, optimize=False)
    return path


def write_mp4(data: AnimationData, path: Path, config=None) -> Path:
    """H.264 MP4 through imageio-ffmpeg (which ships its own ffmpeg binary)."""
    imageio_ffmpeg = _import_imageio_ffmpeg()
    from ftviz.rundir import atomic_path

    options = _render_options(config)
    # yuv420p wants even sizes; multiples of 16 spare ffmpeg a rescale.
    width, height = (int(options["video_width"]) // 16) * 16, (int(options["video_height"]) // 16) * 16
    options = {**options, "video_width": width, "video_height": height}
    fps = 1000.0 / (options["frame_ms"] / (options["video_tween"] + 1))
    hold = int(round(_hold_last_ms(options) / 1000 * fps))
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            quality=8, macro_block_size=16, output_params=["-f", "mp4", "-movflags", "+faststart"],
        )
        writer.send(None)  # start ffmpeg
        try:
            painter = FramePainter(data, options)
            image = None
            for position in video_positions(data.n_frames, int(options["video_tween"])):
                image = painter.paint(position)
                writer.send(np.ascontiguousarray(image))
            for _ in range(hold):
                writer.send(np.ascontiguousarray(image))
        finally:
            writer.close()
    return path


def _import_imageio_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError:
        raise FtvizError(
            "MP4 export needs imageio-ffmpeg: pip install imageio-ffmpeg (or pip install 'ftviz[export]'), "
            "or use --format gif"
        ) from None
    return imageio_ffmpeg


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------
def render_run(run, config=None, *, output_format: str = "html", out=None, progress: bool = True) -> Path:
    """Render ``run`` (a :class:`ftviz.rundir.RunDir`) as ``animation.html`` (or .gif/.mp4).

    Parameters
    ----------
    config : :class:`ftviz.config.RenderConfig` or None for the defaults.
    output_format : "html" | "gif" | "mp4".
    out : output file; default ``animation.<format>`` inside the run.

    Returns the path written. The HTML marks the run's render stage done.
    """
    if output_format not in OUTPUT_FORMATS:
        raise FtvizError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    _render_options(config)  # bad settings fail before any work
    path = Path(out) if out else run.file(f"animation.{output_format}")
    if path.is_dir():
        raise FtvizError(f"--out {path} is a folder; give a file name such as {path / ('animation.' + output_format)}")
    if output_format == "mp4":
        _import_imageio_ffmpeg()  # fail before loading anything
    if output_format != "html" or path.resolve() != run.file("animation.html").resolve():
        data = load_animation_data(run)  # an extra file: the render stage's record is unchanged
        writer = {"gif": write_gif, "mp4": write_mp4}.get(output_format)
        return writer(data, path, config) if writer else _write_page(data, path, config)[0]
    with run.stage("render") as record:
        path, sizes = _write_page(load_animation_data(run), path, config)
        record.update(path=str(path), bytes=sizes["total"])
    return path


def _write_page(data: AnimationData, path: Path, config) -> tuple[Path, dict]:
    from ftviz.rundir import atomic_path

    page, sizes = build_page(data, config)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path, sizes
