"""The self-contained animation page (``animation.html``).

The page embeds plotly.js, so it opens offline from the file, and shows, frame by frame
(one frame per snapshot step):

- a WebGL scatter of the probe set on fixed axes, coloured by given label, prediction,
  outlier score, label-issue flag, injected noise or label suspicion, with a thumbnail
  tooltip per point, and the projection it shows (PCA, t-SNE or UMAP);
- the loss curve (train and eval loss, eval accuracy) as a control: a marker follows the
  frame and a click on a step jumps to its frame;
- cards: the frame's top outliers, or (with ``suspicion.parquet``) the most suspicious
  labels with their rank and the detector that ranks them highest;
- the projection diagnostics (Procrustes disparity to the previous frame, kNN overlap,
  explained variance), to tell real change from projection artefacts;
- the detector table (with ``detectors.parquet``: noise was injected);
- the generated-sample grid of the frame, where the run has ``generated/step-XXXXXXX.png``;
- the training set's most suspicious labels (with ``train_suspicion.parquet``): a static panel
  of cards with thumbnail (``train_images.npy``), id, given and suggested label, suspicion.

Per-point data is packed by :mod:`ftviz.render.codec`. Thumbnails are one sprite sheet
(PNG or JPEG, whichever is smaller), cropped on a canvas when shown; the training panel's few
thumbnails are a second, small sheet made the same way.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any, NamedTuple

import numpy as np

from ftviz.errors import FtvizError
from ftviz.palette import FLAG_COLORS, FLAG_NAMES, OUTLIER_COLORSCALE, SUSPICION_COLORSCALE, class_colours
from ftviz.render.codec import (
    COORDINATE_BITS,
    encode_blob,
    frame_fits,
    label_dtype,
    quantise_coordinates,
    quantise_unit,
)
from ftviz.render.data import AnimationData, suspicion_order
from ftviz.render.options import COLOR_MODES, available_modes, render_options

THUMBNAIL_BUDGET_PIXELS = 6_000_000  # thumbnail area over the whole probe (10,000 x 24 px squared)
# Per-point, per-frame scores are quantised to what they are used for. The outlier score
# colours points on a 5-stop scale (16 levels show no banding there; the cards read the top
# scores exactly from the metadata); label quality reads as 2 decimals in the tooltip.
# Measured on the default run: 0.63 + 0.55 bytes per point-frame against 1.19 + 1.11 at 255.
OUTLIER_LEVELS = 16
QUALITY_LEVELS = 16
DETECTOR_METRICS = ("auroc", "average_precision", "precision", "recall", "f1", "n_flagged")
# Values the page prints rounded (the cards' suspicion, the detector table) travel unrounded
# (12 digits): rounding to 4 digits first printed 0.78451 as 0.784 (0.7845, then 3 places).
SHOWN_EXACTLY = 12


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
    # Grey images (digits, MNIST-like probes) as one channel: the PNG a third of the size and
    # time, the page draws them the same.
    grey = bool((sheet[..., 0] == sheet[..., 1]).all() and (sheet[..., 1] == sheet[..., 2]).all())
    picture = Image.fromarray(np.ascontiguousarray(sheet[..., 0]) if grey else sheet)
    encoded = {}
    if image_format in ("auto", "png"):
        buffer = io.BytesIO()
        # Level 3: within 2 % of level 6's size on the digits sheet at half its time (the
        # render is on the path from training's last snapshot to the finished page).
        picture.save(buffer, format="PNG", compress_level=3)
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


# Characters that HTML parsing of a <script> element reacts to ("</script>", "<!--" that
# starts its script-data escape states) or that an entity could start, as JSON escapes.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _json_for_script(value: Any) -> str:
    """JSON safe inside <script>: no "<", ">" or "&" at all, so no name can end or change it.

    >>> _json_for_script({"name": "<!--<script>"})
    '{"name":"\\\\u003c!--\\\\u003cscript\\\\u003e"}'
    """
    return json.dumps(value, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_SAFE)


def _finite_list(values: np.ndarray, digits: int = 6) -> list:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in np.asarray(values, dtype=float)]


def _finite(value, digits: int = 4) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, digits) if math.isfinite(value) else None


def _rounded(value, digits: int = 6):
    """Floats in nested lists/dicts to ``digits`` significant digits (display transforms only)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


def suspicion_meta(data: AnimationData, top: int) -> dict | None:
    """What the page shows of ``suspicion.parquet``: ranges, and the ``top`` most suspicious samples.

    Each listed sample: id, rank (1 = most suspicious), suspicion, flagged, issue_step (None if
    never) and ``detector``, the detector column that ranks it highest, with that rank.
    """
    table = data.suspicion
    if table is None:
        return None
    suspicion = table["suspicion"].to_numpy(dtype=np.float64)
    order = suspicion_order(suspicion)
    reserved = {"id", "suspicion", "is_label_issue", "issue_step"}
    detectors = [c for c in table.columns if c not in reserved and table[c].dtype.kind == "f"]
    ranks = {}
    for name in detectors:
        values = table[name].to_numpy(dtype=np.float64)
        ranked = np.argsort(-np.where(np.isfinite(values), values, -np.inf), kind="stable")
        position = np.empty(len(values), dtype=np.int64)
        position[ranked] = np.arange(1, len(values) + 1)
        ranks[name] = position
    flagged = table["is_label_issue"].to_numpy(dtype=bool) if "is_label_issue" in table else np.zeros(len(table), bool)
    issue_step = table["issue_step"].to_numpy() if "issue_step" in table else np.full(len(table), -1)
    listed = []
    for rank, index in enumerate(order[:top], start=1):
        best = min(detectors, key=lambda name: ranks[name][index]) if detectors else None
        step = issue_step[index]
        listed.append({
            "id": int(index), "rank": rank, "suspicion": _finite(suspicion[index], SHOWN_EXACTLY),
            "flagged": bool(flagged[index]),
            "issueStep": None if step is None or not np.isfinite(float(step)) or float(step) < 0 else int(step),
            "detector": best, "detectorRank": int(ranks[best][index]) if best else None,
        })
    return {"top": listed, "detectors": detectors, "flagged": int(flagged.sum())}


def _label(value) -> int:
    """A class label for the page: -1 where it is missing (the page shows "–")."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return -1
    return int(value) if math.isfinite(value) and value >= 0 else -1


def training_meta(data: AnimationData) -> dict | None:
    """What the page's training panel lists (``data.training``), or None: the run has no
    ``train_suspicion.parquet``.

    {"count": N training samples, "flagged": how many are flagged, "thumbnails": the panel's
    sprite sheet info (set by :func:`training_sheet`; None without images), "top": one dict
    per card, most suspicious first: id, rank, suspicion, flagged, given, suggested (class
    labels; -1 where unknown), true (-1 where unknown), noisy (None where unknown),
    issueStep (None if never), fix ("relabel", "drop" or "": what a retrain does with it)}.
    Labels travel as numbers: the page shows the class names as text (``classNamesText``).
    """
    training = data.training
    if training is None:
        return None
    table = training.table
    top = []
    for rank, record in enumerate(table.to_dict("records"), start=1):
        noisy = record.get("is_noisy")
        step = record.get("issue_step")
        top.append({
            "id": int(record["id"]), "rank": rank, "suspicion": _finite(record["suspicion"], SHOWN_EXACTLY),
            "flagged": bool(record.get("is_label_issue", False)),
            "given": _label(record.get("given_label")), "suggested": _label(record.get("suggested_label")),
            "true": _label(record.get("true_label")),
            "noisy": None if noisy is None or _label(noisy) < 0 else bool(noisy),
            "issueStep": None if _label(step) < 0 else int(step),
            "fix": _fix(record.get("fix")),
        })
    return {"count": int(training.count), "flagged": int(training.flagged), "thumbnails": None, "top": top}


def _fix(value) -> str:
    """A ``fix`` cell of train_suspicion.parquet as the page shows it: "relabel", "drop" or ""
    (blank, missing in runs detected before the column, or anything else)."""
    from ftviz.detectors import RETRAIN_FIXES

    return value if value in RETRAIN_FIXES else ""


def training_sheet(data: AnimationData, options: dict) -> tuple[dict | None, str]:
    """The training panel's thumbnails as one sprite sheet, thumbnail j = card j:
    (:func:`sprite_sheet` info, its data URL), or (None, "") without images or with
    thumbnails off."""
    training = data.training
    if not options["thumbnails"] or training is None or training.images is None or not len(training.images):
        return None, ""
    sheet, info = sprite_sheet(training.images, max_size=int(options["thumbnail_size"]),
                               image_format=str(options["thumbnail_format"]))
    return info, _data_url(sheet, info["mime"])


def detector_rows(data: AnimationData) -> list[dict] | None:
    """``detectors.parquet`` as rows for the page's table (step None for whole-history detectors)."""
    table = data.detectors
    if table is None or not len(table):
        return None
    rows = []
    for record in table.to_dict("records"):
        step = record.get("step")
        row = {"detector": str(record.get("detector", "?")),
               "step": None if step is None or (isinstance(step, float) and not math.isfinite(step)) else int(step)}
        for metric in DETECTOR_METRICS:
            row[metric] = _finite(record.get(metric), SHOWN_EXACTLY)
        rows.append(row)
    return rows


class PackedPoints(NamedTuple):
    """The per-point data of a page, packed by :func:`pack_points`.

    text : the blob, base64 (the #ftviz-points element).
    descriptors : one dict per array (name, layout, dtype, shape, offset, bytes, ...).
    axes : the coordinate grid of :func:`ftviz.render.codec.quantise_coordinates`.
    outlier_range, quality_range, suspicion_range : [low, high] of each quantised score.
    missing_label : the label code that means "no prediction".
    """

    text: str
    descriptors: list
    axes: dict
    outlier_range: list
    quality_range: list
    suspicion_range: list
    missing_label: int


def build_page(data: AnimationData, config=None) -> tuple[str, dict]:
    """The self-contained HTML page for ``data``.

    Returns
    -------
    page : the HTML text.
    sizes : bytes of each part, measured in the page text: {"total", "plotlyjs",
        "points" (the #ftviz-points element's text: per-point data, base64), "thumbnails",
        "train_thumbnails", "generated", "meta" (the #ftviz-meta JSON), "other"} and
        "bytes_per_point_frame" ((total - plotlyjs - thumbnails - train_thumbnails -
        generated) / (N T): the page's size budget), "coordinate_bytes_per_point_frame".
    """
    options = render_options(config)
    points = pack_points(data)
    thumbnails, thumbnail_text = _thumbnail_sheet(data, options)
    training_thumbnails, training_text = training_sheet(data, options)
    meta = page_meta(data, options, points, thumbnails, training_thumbnails)
    page = _fill_page(data, meta, points.text, thumbnail_text, training_text)
    return page, _page_sizes(page, points.descriptors, data.n_points * data.n_frames)


def pack_points(data: AnimationData) -> PackedPoints:
    """Every per-point array of the page, quantised and packed by :func:`encode_blob`."""
    codes, axes = quantise_coordinates(data.frames)
    outlier_codes, outlier_range = quantise_unit(data.outlier, levels=OUTLIER_LEVELS)
    quality_codes, quality_range = quantise_unit(data.quality, levels=QUALITY_LEVELS)
    labels = label_dtype(len(data.class_names))
    predicted = np.where(data.predicted < 0, np.iinfo(labels).max, data.predicted).astype(labels)
    # Layouts chosen by measurement on real runs (see encode_blob): coordinates and scores
    # drift from frame to frame, predictions and flags mostly stay put per point.
    arrays = [
        ("coords", codes, "delta"),
        ("outlier", outlier_codes, "delta"),
        ("quality", quality_codes, "delta"),
        ("predicted", predicted, "points"),
        ("issue", data.issue.astype(np.uint8), "points"),
        ("given", data.given_labels.astype(labels), "plain"),
    ]
    if data.true_labels is not None:
        arrays.append(("true", data.true_labels.astype(labels), "plain"))
    if data.is_noisy is not None:
        arrays.append(("noisy", data.is_noisy.astype(np.uint8), "plain"))
    suspicion_range = [0.0, 1.0]
    if data.suspicion is not None:
        suspicion_codes, suspicion_range = quantise_unit(data.suspicion["suspicion"].to_numpy(dtype=np.float64))
        arrays.append(("suspicion", suspicion_codes, "plain"))
        if "is_label_issue" in data.suspicion:
            arrays.append(("flagged", data.suspicion["is_label_issue"].to_numpy(dtype=bool).astype(np.uint8), "plain"))
    blob, descriptors = encode_blob(arrays)
    return PackedPoints(
        text=base64.b64encode(blob).decode("ascii"), descriptors=descriptors, axes=axes,
        outlier_range=outlier_range, quality_range=quality_range, suspicion_range=suspicion_range,
        missing_label=int(np.iinfo(labels).max),
    )


def _thumbnail_sheet(data: AnimationData, options: dict) -> tuple[dict | None, str]:
    """(sprite sheet info, its data URL), or (None, "") without images or with thumbnails off."""
    if not options["thumbnails"] or data.images is None:
        return None, ""
    sheet, info = sprite_sheet(data.images, max_size=int(options["thumbnail_size"]),
                               image_format=str(options["thumbnail_format"]))
    return info, _data_url(sheet, info["mime"])


def page_meta(data: AnimationData, options: dict, points: PackedPoints, thumbnails: dict | None,
              training_thumbnails: dict | None = None) -> dict:
    """The #ftviz-meta JSON: everything the page's script reads besides the packed points.

    Names people chose (class names) come twice: ``classNames`` HTML-escaped, for plotly,
    which reads tags in its labels (a class named ``<a href=...>`` would become a live link in
    the legend), and ``classNamesText`` as they are, for text nodes (the cards, the tooltip
    and the training panel, whose labels travel as class numbers).
    ``training_thumbnails`` : the training panel's sheet info (:func:`training_sheet`).
    """
    n_classes = len(data.class_names)
    outlier_finite = data.outlier[np.isfinite(data.outlier)]
    color_range = ([float(np.percentile(outlier_finite, 1)), float(np.percentile(outlier_finite, 99.5))]
                   if outlier_finite.size else [0.0, 1.0])
    modes = available_modes(data)
    color_by = options["color_by"] if options["color_by"] in modes else "label"
    top = int(data.top.shape[1])
    training = training_meta(data)
    if training is not None:
        training["thumbnails"] = training_thumbnails
    return {
        "title": data.title,
        "subtitle": data.subtitle,
        "name": data.name, "model": data.model, "dataset": data.dataset,
        "T": data.n_frames, "N": data.n_points,
        "steps": [int(s) for s in data.steps],
        "epochs": _finite_list(data.epochs, 4),
        "classNames": [plotly_text(name) for name in data.class_names],
        "classNamesText": list(data.class_names),
        "axes": points.axes,
        "fit": _rounded(frame_fits(data.frames)),
        "axesMode": options["axes"],
        "projection": data.projection,
        "outlierRange": points.outlier_range, "outlierLevels": OUTLIER_LEVELS,
        "qualityRange": points.quality_range, "qualityLevels": QUALITY_LEVELS, "colorRange": color_range,
        "suspicionRange": points.suspicion_range,
        "arrays": points.descriptors,
        "missingLabel": points.missing_label,
        "metrics": {"train": data.train_metrics, "eval": data.eval_metrics},
        "diagnostics": {
            "disparity": _finite_list(data.disparity, 4),
            "knn_overlap": _finite_list(data.knn_overlap, 4),
            "explained_variance": _finite_list(data.explained_variance, 4),
        },
        "top": data.top.astype(int).tolist(),
        "topScores": [_finite_list(data.outlier[t, data.top[t]], 4) for t in range(data.n_frames)],
        "coordinateBits": COORDINATE_BITS,
        "suspicion": suspicion_meta(data, top),
        "detectors": detector_rows(data),
        "training": training,
        "thumbnails": thumbnails,
        "palette": class_colours(n_classes),
        "outlierColorscale": [list(stop) for stop in OUTLIER_COLORSCALE],
        "suspicionColorscale": [list(stop) for stop in SUSPICION_COLORSCALE],
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


def plotly_text(name: str) -> str:
    """``name`` as plotly shows it literally: ``&``, ``<`` and ``>`` as HTML entities.

    Plotly reads a subset of HTML in trace names, titles, hover texts and table cells (``<a
    href>``, ``<b>``, ``<br>``...) and decodes entities, so escaped text reads as typed.

    >>> plotly_text('<a href="x">cat</a> & dog')
    '&lt;a href="x"&gt;cat&lt;/a&gt; &amp; dog'
    """
    return html.escape(str(name), quote=False)


def _fill_page(data: AnimationData, meta: dict, points_text: str, thumbnail_text: str,
               training_text: str = "") -> str:
    """The template with every marker replaced: markup escaped, JSON made safe for <script>."""
    from importlib.resources import files

    from plotly.offline import get_plotlyjs

    assets = files("ftviz") / "assets"
    template = (assets / "animation.html").read_text(encoding="utf-8")
    generated_urls = {str(i): _data_url(p.read_bytes(), "image/png") for i, p in sorted(data.generated.items())}
    pieces = {
        "{{TITLE}}": html.escape(data.title),
        "{{HEADING}}": html.escape(data.title),
        "{{SUBTITLE}}": html.escape(data.subtitle),
        "/*{{CSS}}*/": (assets / "animation.css").read_text(encoding="utf-8"),
        "{{META}}": _json_for_script(meta),
        "{{POINTS}}": points_text,
        "{{THUMBNAILS}}": thumbnail_text,
        "{{TRAIN_THUMBNAILS}}": training_text,
        "{{GENERATED}}": _json_for_script(generated_urls),
        "/*{{APP}}*/": compact_script((assets / "animation.js").read_text(encoding="utf-8")),
        "/*{{PLOTLYJS}}*/": get_plotlyjs(),
    }
    return _fill_template(template, pieces)


def _page_sizes(page: str, descriptors: list, point_frames: int) -> dict:
    """:func:`measure_page` plus the page's budget per point and frame (N T = ``point_frames``)."""
    sizes = measure_page(page)
    point_frames = max(1, point_frames)
    # The page's budget: everything but plotly.js and the images, per point and frame.
    sizes["bytes_per_point_frame"] = (sizes["total"] - sizes["plotlyjs"] - sizes["thumbnails"]
                                      - sizes["train_thumbnails"] - sizes["generated"]) / point_frames
    # base64 turns 3 bytes into 4: the coordinates' share of the embedded text.
    sizes["coordinate_bytes_per_point_frame"] = descriptors[0]["bytes"] * 4 / 3 / point_frames
    return sizes


def measure_page(page: str) -> dict:
    """Bytes (UTF-8) of a page's parts, found in the page text itself.

    {"total", "plotlyjs", "points", "meta", "thumbnails", "train_thumbnails", "generated",
    "other"}; "other" is what is left (markup, CSS, the page's script), so the parts add up to
    the total.
    """
    def element(opening: str, closing: str = "</script>") -> int:
        # str.find, not a regular expression: a lazy match over a page of megabytes took
        # 0.15 s of the render.
        start = page.find(opening)
        if start < 0:
            return 0
        start += len(opening)
        end = page.find(closing, start)
        return len(page[start:end].encode("utf-8")) if end >= 0 else 0

    sizes = {
        "total": len(page.encode("utf-8")),
        "points": element('<script type="application/octet-stream" id="ftviz-points">'),
        "meta": element('<script type="application/json" id="ftviz-meta">'),
        "thumbnails": element('<script type="text/plain" id="ftviz-thumbnails">'),
        "train_thumbnails": element('<script type="text/plain" id="ftviz-train-thumbnails">'),
        "generated": element('<script type="application/json" id="ftviz-generated">'),
        "plotlyjs": element('<script id="ftviz-plotlyjs">\n', "\n</script>"),
    }
    sizes["other"] = sizes["total"] - sum(v for k, v in sizes.items() if k != "total")
    return sizes


def compact_script(source: str) -> str:
    """The page's script without indentation and whole-line ``//`` comments (~7 kB less).

    Safe for animation.js as written: no multi-line strings or template literals, and
    newlines are kept, so automatic semicolon insertion sees the same lines.
    """
    lines = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("//"):
            lines.append(stripped)
    return "\n".join(lines)


def _fill_template(template: str, pieces: dict[str, str]) -> str:
    """Replace each marker once, in one pass: inserted text is never searched for markers."""
    import re

    pattern = re.compile("|".join(re.escape(marker) for marker in pieces))
    found = pattern.findall(template)
    if sorted(found) != sorted(pieces):
        raise RuntimeError(f"the page template's markers {found} do not match {sorted(pieces)}")
    return pattern.sub(lambda match: pieces[match.group(0)], template)
