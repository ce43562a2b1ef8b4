"""GIF, MP4 and PNG with Pillow, from the same frames as the page.

:class:`FramePainter` draws one image per (fractional) frame: the scatter, a small
loss-curve panel, the legend and the frame's top outliers. GIF and MP4 add ``video_tween``
eased in-between images per transition; the GIF is written by Pillow with one palette for
every image (no flicker); the MP4 is piped to the ffmpeg binary that ``imageio-ffmpeg``
ships. :func:`write_png` lays chosen frames side by side: a panel for papers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np

from ftviz.errors import FtvizError
from ftviz.palette import FLAG_COLORS, FLAG_NAMES, OUTLIER_COLORSCALE, SUSPICION_COLORSCALE, class_colours, colorscale_rgb, hex_rgb
from ftviz.render.codec import frame_fits, quantise_coordinates
from ftviz.render.data import AnimationData
from ftviz.render.options import COLOR_MODES, render_options


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
    data : what to draw. options : from :func:`ftviz.render.options.render_options`.
    """

    supersample = 2  # the scatter is drawn at 2x and downsampled: smooth discs for free

    def __init__(self, data: AnimationData, options: dict):
        from PIL import Image, ImageDraw

        self.data, self.options = data, options
        self.width, self.height = int(options["video_width"]), int(options["video_height"])
        self.color_by = options["color_by"] if options["color_by"] in COLOR_MODES else "label"
        if (self.color_by == "noise" and not data.has_noise) or (self.color_by == "suspicion" and data.suspicion is None):
            self.color_by = "label"
        self.suspicion = (data.suspicion["suspicion"].to_numpy(dtype=np.float64)
                          if data.suspicion is not None else np.zeros(data.n_points))
        finite = self.suspicion[np.isfinite(self.suspicion)]
        self.suspicion_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
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
        self.palette = np.array([hex_rgb(c) for c in class_colours(len(data.class_names))], dtype=np.uint8)
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
            colours = np.array([hex_rgb(c) for c in FLAG_COLORS[mode]], dtype=np.uint8)
            legend = list(zip(FLAG_NAMES[mode], map(tuple, colours)))
            return flags.astype(np.int64), colours, legend
        raise AssertionError(mode)

    def _continuous(self) -> tuple[float, float, tuple]:
        """(low, high, colour scale) of the continuous colour modes."""
        if self.color_by == "suspicion":
            return (*self.suspicion_range, SUSPICION_COLORSCALE)
        return (*self.outlier_range, OUTLIER_COLORSCALE)

    def _draw_legend(self, draw, top: int) -> None:
        small = self.fonts["small"]
        x, y = self.panel_left, top
        draw.text((x, y), f"colour: {COLOR_MODES[self.color_by]}", fill="#1f2430", font=self.fonts["text"])
        y += round(28 * self.height / 720)
        if self.color_by in ("outlier_score", "suspicion"):
            low, high, scale = self._continuous()
            width = self.panel_right - x - 80
            ramp = colorscale_rgb(np.linspace(low, high, width), low, high, scale)
            for i, colour in enumerate(ramp):
                draw.line((x + i, y, x + i, y + 14), fill=tuple(int(c) for c in colour))
            words = ("typical", "atypical") if self.color_by == "outlier_score" else ("plausible", "suspicious")
            draw.text((x, y + 18), f"{low:.2f} {words[0]}", fill="#5b6270", font=small)
            draw.text((x + width, y + 18), f"{words[1]} {high:.2f}", fill="#5b6270", font=small, anchor="ra")
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

    def scatter(self, position: float, side: int, *, rings: bool = True):
        """The scatter alone at fractional frame ``position``: a ``side`` x ``side`` PIL image."""
        from PIL import Image, ImageDraw

        frame = int(round(position))
        data = self.data
        size = side * self.supersample
        canvas = np.empty((size, size, 3), dtype=np.uint8)
        canvas[:] = (250, 251, 253)
        vx, vy, span = self.view
        points = self.positions(position)
        px = ((points[:, 0] - vx) / span * (size - 1)).astype(np.int64)
        py = ((1 - (points[:, 1] - vy) / span) * (size - 1)).astype(np.int64)
        if self.color_by in ("outlier_score", "suspicion"):
            values = data.outlier[frame] if self.color_by == "outlier_score" else self.suspicion
            low, high, scale = self._continuous()
            colours = colorscale_rgb(values, low, high, scale)
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
        scatter = Image.fromarray(canvas).resize((side, side), Image.Resampling.BOX)
        if rings:  # around the frame's top outliers, as on the page
            draw = ImageDraw.Draw(scatter)
            ring = max(4, self.options["point_size"] * 1.4) * self.height / 720
            for index in data.top[frame]:
                cx = (points[index, 0] - vx) / span * (side - 1)
                cy = (1 - (points[index, 1] - vy) / span) * (side - 1)
                draw.ellipse((cx - ring, cy - ring, cx + ring, cy + ring), outline="#111111", width=2)
        return scatter

    def paint(self, position: float) -> np.ndarray:
        """The frame at fractional frame index ``position`` as (H, W, 3) uint8."""
        from PIL import ImageDraw

        frame = int(round(position))
        data = self.data
        x0, y0, x1, y1 = self.plot_box
        image = self.background.copy()
        image.paste(self.scatter(position, x1 - x0 - 2), (x0 + 1, y0 + 1))
        draw = ImageDraw.Draw(image)
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
    painter = FramePainter(data, render_options(config))
    for position in video_positions(data.n_frames, int(painter.options["video_tween"])):
        yield painter.paint(position)


def _hold_last_ms(options: dict) -> float:
    """How long the end state stays up before a GIF loops (or an MP4 ends)."""
    return 3 * options["frame_ms"]


def write_gif(data: AnimationData, path: Path, config=None) -> Path:
    """Animated GIF with one palette for every frame (steady colours), looping."""
    from PIL import Image

    from ftviz.rundir import atomic_path

    options = render_options(config)
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

    options = render_options(config)
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
# PNG panel for papers
# ---------------------------------------------------------------------------------------
def panel_frames(data: AnimationData, steps=None) -> list[int]:
    """Frame indices for a panel: ``steps`` as "0,100,last" (or a list), nearest snapshot each.

    Default: the first and the last frame. "first" and "last" name those frames; numbers are
    training steps, each shown at the snapshot nearest to it. Duplicates are dropped.
    """
    if steps is None or (isinstance(steps, str) and not steps.strip()):
        wanted = ["first", "last"]
    elif isinstance(steps, str):
        wanted = [part.strip() for part in steps.split(",") if part.strip()]
    else:
        wanted = list(steps)
    frames: list[int] = []
    for item in wanted:
        if item in ("first", "last"):
            index = 0 if item == "first" else data.n_frames - 1
        else:
            try:
                step = int(item)
            except (TypeError, ValueError):
                raise FtvizError(f"--steps wants training steps, first or last (e.g. 0,100,last); got {item!r}") from None
            index = int(np.abs(data.steps - step).argmin())
        if index not in frames:
            frames.append(index)
    if not frames:
        raise FtvizError("--steps names no frame; e.g. --steps first,last or --steps 0,100,200")
    return frames


def _accuracy_at(data: AnimationData, step: int) -> float | None:
    steps, accuracy = data.eval_metrics.get("step", []), data.eval_metrics.get("accuracy", [])
    pairs = [(s, a) for s, a in zip(steps, accuracy) if s is not None and a is not None]
    if not pairs:
        return None
    nearest = min(pairs, key=lambda pair: abs(pair[0] - step))
    return nearest[1] if nearest[0] == step else None


def paint_panel(data: AnimationData, config=None, *, steps=None, side: int = 520) -> np.ndarray:
    """Chosen frames side by side (first and last by default) as (H, W, 3) uint8, for papers.

    Each panel is the scatter on the axes shared by every frame, captioned with its step,
    epoch, eval accuracy and kNN overlap; the title names the run and the projection, and
    one legend for the colour mode runs along the bottom.
    """
    from PIL import Image, ImageDraw

    options = {**render_options(config), "video_width": max(320, side), "video_height": max(240, side)}
    painter = FramePainter(data, options)
    frames = panel_frames(data, steps)
    fonts = {k: _font(v) for k, v in {"title": 22, "text": 16, "small": 14}.items()}
    margin, gap, header, caption = 24, 20, 66, 48
    legend = _panel_legend_entries(painter)
    columns = max(1, min(4, (len(legend) or 1)))
    width = margin * 2 + len(frames) * side + (len(frames) - 1) * gap
    legend_rows = 1 if painter.color_by in ("outlier_score", "suspicion") else \
        int(math.ceil(len(legend) / max(1, (width - 2 * margin) // 150)))
    height = header + side + caption + 16 + legend_rows * 24 + margin
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 14), data.title, fill="#1f2430", font=fonts["title"])
    projection = data.projection.get("name", "PCA")
    draw.text((margin, 42), f"{projection} projection, aligned with Procrustes · colour: {COLOR_MODES[painter.color_by]}",
              fill="#5b6270", font=fonts["small"])
    for column, frame in enumerate(frames):
        x = margin + column * (side + gap)
        image.paste(painter.scatter(float(frame), side, rings=False), (x, header))
        draw.rectangle((x - 1, header - 1, x + side, header + side), outline="#d9dde5")
        step = int(data.steps[frame])
        words = [f"step {step}"]
        if math.isfinite(data.epochs[frame]):
            words.append(f"epoch {data.epochs[frame]:.1f}")
        accuracy = _accuracy_at(data, step)
        if accuracy is not None:
            words.append(f"accuracy {accuracy:.1%}")
        draw.text((x + side / 2, header + side + 8), " · ".join(words), fill="#1f2430", font=fonts["text"], anchor="mt")
        if math.isfinite(data.knn_overlap[frame]):
            draw.text((x + side / 2, header + side + 30), f"kNN-10 overlap {data.knn_overlap[frame]:.2f}",
                      fill="#5b6270", font=fonts["small"], anchor="mt")
    top = header + side + caption + 8
    if painter.color_by in ("outlier_score", "suspicion"):
        low, high, scale = painter._continuous()
        ramp = colorscale_rgb(np.linspace(low, high, 240), low, high, scale)
        for i, colour in enumerate(ramp):
            draw.line((margin + 90 + i, top + 4, margin + 90 + i, top + 16), fill=tuple(int(c) for c in colour))
        draw.text((margin, top + 10), COLOR_MODES[painter.color_by], fill="#3a4150", font=fonts["small"], anchor="lm")
        draw.text((margin + 340, top + 10), f"{low:.2f} – {high:.2f}", fill="#5b6270", font=fonts["small"], anchor="lm")
    else:
        x, y = margin, top
        for name, colour in legend:
            label_width = draw.textlength(name, font=fonts["small"]) + 40
            if x + label_width > width - margin:
                x, y = margin, y + 24
            draw.ellipse((x, y + 4, x + 12, y + 16), fill=colour)
            draw.text((x + 18, y + 10), name, fill="#3a4150", font=fonts["small"], anchor="lm")
            x += max(label_width, 90)
    return np.asarray(image)


def _panel_legend_entries(painter: "FramePainter") -> list[tuple[str, tuple]]:
    if painter.color_by in ("outlier_score", "suspicion"):
        return []
    _, _, legend = painter._categories(painter.data.n_frames - 1)
    return [(str(name)[:22], tuple(int(c) for c in colour)) for name, colour in legend[:40]]


def write_png(data: AnimationData, path: Path, config=None, *, steps=None) -> Path:
    """The first-vs-last (or ``steps``) panel as a PNG (see :func:`paint_panel`)."""
    from PIL import Image

    from ftviz.rundir import atomic_path

    picture = Image.fromarray(paint_panel(data, config, steps=steps))
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", optimize=True, dpi=(200, 200))
    return path
