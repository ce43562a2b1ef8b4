"""The animation of a run: one self-contained HTML page, or a GIF/MP4 for slides, or a PNG panel.

A module per job:

- :mod:`ftviz.render.data`: loading a run (:func:`load_animation_data`) and the one reader
  of per-frame score arrays (:func:`scores_per_frame`, used by Spotlight and compare too);
- :mod:`ftviz.render.codec`: the page's binary format (its JS twin: ``assets/animation.js``);
- :mod:`ftviz.render.page`: the HTML page (:func:`build_page`);
- :mod:`ftviz.render.painter`: GIF, MP4 and the PNG panel with Pillow;
- :mod:`ftviz.render.options`: settings shared by the page and the painter.

Importing this package costs numpy only: plotly and Pillow load when a page or image is made.
"""

from __future__ import annotations

from pathlib import Path

from ftviz.errors import FtvizError
from ftviz.render.codec import encode_blob, frame_fits, quantise_coordinates, quantise_unit
from ftviz.render.data import AnimationData, load_animation_data, scores_per_frame
from ftviz.render.options import COLOR_MODES, OUTPUT_FORMATS, render_options
from ftviz.render.page import build_page, measure_page, sprite_sheet
from ftviz.render.painter import (
    FramePainter,
    iter_video_frames,
    paint_panel,
    panel_frames,
    video_positions,
    write_gif,
    write_mp4,
    write_png,
)
from ftviz.render.painter import _import_imageio_ffmpeg

__all__ = [
    "AnimationData", "COLOR_MODES", "FramePainter", "OUTPUT_FORMATS", "build_page", "encode_blob",
    "frame_fits", "iter_video_frames", "load_animation_data", "measure_page", "paint_panel", "panel_frames",
    "quantise_coordinates", "quantise_unit", "render_options", "render_run", "scores_per_frame",
    "sprite_sheet", "video_positions", "write_gif", "write_mp4", "write_png",
]


def render_run(run, config=None, *, output_format: str = "html", out=None, progress: bool = True,
               steps=None) -> Path:
    """Render ``run`` (a :class:`ftviz.rundir.RunDir`) as ``animation.html`` (or .gif/.mp4/.png).

    Parameters
    ----------
    config : :class:`ftviz.config.RenderConfig` or None for the defaults.
    output_format : "html" | "gif" | "mp4" | "png" (a first-vs-last panel for papers).
    out : output file; default ``animation.<format>`` inside the run.
    steps : PNG only: the training steps to show, "0,100,last" or a list (default first,last).

    Returns the path written. Writing the run's own ``animation.html`` is the render stage
    (recorded in run.json); any other file leaves the stage's record alone.
    """
    if output_format not in OUTPUT_FORMATS:
        raise FtvizError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if steps is not None and output_format != "png":
        raise FtvizError("--steps chooses the frames of a PNG panel: add --format png")
    render_options(config)  # bad settings fail before any work
    path = Path(out) if out else run.file(f"animation.{output_format}")
    if path.is_dir():
        raise FtvizError(f"--out {path} is a folder; give a file name such as {path / ('animation.' + output_format)}")
    if output_format == "mp4":
        _import_imageio_ffmpeg()  # fail before loading anything
    if output_format != "html" or path.resolve() != run.file("animation.html").resolve():
        # An extra file: the render stage's record is unchanged. Slides and panels show the
        # probe alone, so the training set's files are not read for them.
        data = load_animation_data(run, with_training=output_format == "html")
        if output_format == "png":
            panel_frames(data, steps)  # bad --steps fail before drawing
            return write_png(data, path, config, steps=steps)
        writer = {"gif": write_gif, "mp4": write_mp4}.get(output_format)
        return writer(data, path, config) if writer else _write_page(data, path, config)[0]
    with run.stage("render") as record:
        path, sizes = _write_page(load_animation_data(run), path, config)
        record.update(path=str(path), bytes=sizes["total"],
                      bytes_per_point_frame=round(sizes["bytes_per_point_frame"], 3))
    return path


def _write_page(data: AnimationData, path: Path, config) -> tuple[Path, dict]:
    from ftviz.rundir import atomic_path

    page, sizes = build_page(data, config)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path, sizes
