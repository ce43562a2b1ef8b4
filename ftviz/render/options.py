"""Render settings shared by the page and the painter: output formats, colour modes, checks."""

from __future__ import annotations

from ftviz.errors import FtvizError

OUTPUT_FORMATS = ("html", "gif", "mp4", "png")
COLOR_MODES = {
    "label": "given label",
    "prediction": "prediction",
    "outlier_score": "outlier score",
    "label_issue": "label-issue flag",
    "noise": "injected noise",
    "suspicion": "label suspicion",
}
DEFAULTS = {
    "color_by": "label", "point_size": 5.0, "frame_ms": 400, "thumbnails": True,
    "transition_ms": 300, "thumbnail_size": 32, "thumbnail_format": "auto",
    "video_width": 1280, "video_height": 720, "video_tween": 3, "axes": "fixed",
}


def render_options(config) -> dict:
    """RenderConfig (or None) -> plain options with defaults, validated (one-line errors)."""
    options = dict(DEFAULTS)
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
    if options["thumbnail_format"] not in ("auto", "png", "jpeg"):
        raise FtvizError(f"render.thumbnail_format must be auto, png or jpeg, got {options['thumbnail_format']!r}")
    return options


def available_modes(data) -> list[str]:
    """The colour modes ``data`` (an AnimationData) can show, in menu order."""
    modes = []
    for mode in COLOR_MODES:
        if mode == "noise" and not data.has_noise:
            continue
        if mode == "suspicion" and data.suspicion is None:
            continue
        modes.append(mode)
    return modes
