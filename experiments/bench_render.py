"""Benchmark: size and time-to-interactive of the animation page, against the article's way.

Builds a synthetic run directory (no training) with the RunDir API: N probe points x T
frames of clusters that form over training, per-frame scores, metrics and 32 px images. Then

- ftviz: ``render_run`` -> animation.html; bytes (total, plotly.js, per-point data,
  thumbnails) and bytes per point per frame;
- peer: the article's approach, a plotly express animation (``animation_frame``) with the
  coordinates and hover columns as float arrays per frame, written with plotly.js embedded;
- both pages opened from file:// in headless Chromium (the same flags as
  tests/test_browser.py), time-to-interactive = navigation start -> plot drawn and ready
  (ftviz: ``window.ftviz.ready``; peer: the plotly graph has data and a drawn plot area),
  median of ``--repeats`` cold loads;
- optionally (``--video``) the GIF/MP4 export times.

Prints a markdown table with ratios. Usage::

    .venv/bin/python experiments/bench_render.py                  # 10,000 points x 80 frames
    .venv/bin/python experiments/bench_render.py --points 2000 --frames 20 --video
    .venv/bin/python experiments/bench_render.py --screenshot runs/readme/animation.html docs/animation.png --hover
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-unsafe-swiftshader",
]


def make_synthetic_run(path: Path, *, points: int = 10_000, frames: int = 80, classes: int = 10,
                       noise_rate: float = 0.1, image_size: int = 32, seed: int = 0):
    """A complete run directory (train, score, project done) with made-up but plausible data."""
    import pandas as pd

    from ftviz.rundir import RunDir, write_npy, write_parquet

    rng = np.random.default_rng(seed)
    run = RunDir(path)
    steps = np.arange(frames) * 20
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    class_names = (class_names + [f"class {i}" for i in range(10, classes)])[:classes]
    run.create({
        "name": path.name, "config": {"score": {"top": 8}},
        "dataset": {"name": "synthetic-cifar", "num_classes": classes, "class_names": class_names},
        "model": {"name": "vit_base_patch16_224"},
        "probe_size": points, "noise_rate": noise_rate,
    })
    run.update_manifest(snapshot_steps=steps.tolist())

    true = rng.integers(0, classes, points)
    noisy = rng.random(points) < noise_rate
    given = np.where(noisy, (true + rng.integers(1, classes, points)) % classes, true)
    write_parquet(run.file("samples.parquet"), pd.DataFrame({
        "id": np.arange(points), "given_label": given, "true_label": true, "is_noisy": noisy,
        "class_name": np.asarray(class_names, dtype=object)[given],
        "true_class_name": np.asarray(class_names, dtype=object)[true],
    }))
    # Images: smooth colour fields with a class-coloured blob and a little grain, roughly as
    # compressible as small photos (the sprite sheet's size is reported apart from the data).
    from PIL import Image

    coarse = rng.integers(0, 160, (points, 4, 4, 3)).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(c).resize((image_size, image_size), Image.Resampling.BILINEAR))
                       for c in coarse]).astype(np.float32)
    yy, xx = np.mgrid[:image_size, :image_size] / image_size
    hues = rng.random((classes, 3)) * 200 + 30
    centre = rng.random((points, 2)) * 0.5 + 0.25
    blob = np.exp(-(((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2) / 0.03))
    images = images * (1 - blob[..., None]) + blob[..., None] * hues[true][:, None, None, :]
    images += rng.normal(size=images.shape) * 4
    write_npy(run.file("probe_images.npy"), np.clip(images, 0, 255).astype(np.uint8))

    # Frames: a random cloud that separates into class clusters, with per-point drift.
    progress = 1 / (1 + np.exp(-(np.linspace(-5, 5, frames))))
    angle = np.arange(classes) / classes * 2 * np.pi
    centres = np.stack([np.cos(angle), np.sin(angle)], axis=1) * 4.0
    start = rng.normal(size=(points, 2)) * [2.0, 1.0]
    spread = rng.normal(size=(points, 2)) * 0.6
    drift = np.cumsum(rng.normal(size=(frames, points, 2)) * 0.01, axis=0)
    coords = ((1 - progress)[:, None, None] * start + progress[:, None, None] * (centres[true] + spread) + drift)
    write_npy(run.file("frames.npy"), coords.astype(np.float32))
    write_parquet(run.file("projection.parquet"), pd.DataFrame({
        "step": steps,
        "explained_variance": np.linspace(0.4, 0.8, frames),
        "disparity_to_previous": np.r_[np.nan, np.abs(np.diff(progress)) * 2 + 0.01],
        "knn_overlap": np.linspace(0.3, 0.7, frames),
    }))

    base = rng.beta(2, 5, points)
    outlier = np.clip(base + np.cumsum(rng.normal(size=(frames, points)) * 0.01, axis=0), 0, 1)
    correct = rng.random((frames, points)) < (0.1 + 0.85 * progress)[:, None]
    predicted = np.where(correct, true, rng.integers(0, classes, (frames, points)))
    quality = np.clip(np.where(noisy, 0.6 - 0.55 * progress[:, None], 0.4 + 0.55 * progress[:, None])
                      + rng.normal(size=(frames, points)) * 0.05, 0, 1)
    write_parquet(run.file("scores.parquet"), pd.DataFrame({
        "step": np.repeat(steps, points), "id": np.tile(np.arange(points), frames),
        "outlier_score": outlier.ravel(), "label_quality": quality.ravel(),
        "is_label_issue": (quality < 0.2).ravel(), "predicted_label": predicted.ravel(),
        "confidence": rng.random(frames * points),
    }))
    train_steps = np.arange(1, steps[-1] + 1)
    loss = 2.3 * np.exp(-train_steps / (steps[-1] / 3)) + 0.3 + rng.normal(size=len(train_steps)) * 0.05
    metric_rows = pd.concat([
        pd.DataFrame({"step": train_steps, "epoch": train_steps / steps[-1], "split": "train", "loss": loss,
                      "accuracy": np.nan, "true_accuracy": np.nan, "learning_rate": 1e-4}),
        pd.DataFrame({"step": steps, "epoch": steps / steps[-1], "split": "eval",
                      "loss": 2.3 * np.exp(-steps / (steps[-1] / 3)) + 0.35,
                      "accuracy": 0.1 + 0.75 * progress, "true_accuracy": 0.1 + 0.85 * progress,
                      "learning_rate": 1e-4}),
    ]).sort_values(["step", "split"])
    write_parquet(run.file("metrics.parquet"), metric_rows)
    for stage in ("train", "score", "project"):
        run.mark_stage(stage, "done")
    return run


def article_page(run, out: Path) -> None:
    """The article's approach: plotly express animation, float columns per frame, plotly.js inline."""
    import plotly.express as px

    frames = run.frames()
    samples = run.samples()
    scores = run.scores().sort_values(["step", "id"])
    T, N = frames.shape[:2]
    table = scores[["step", "id", "outlier_score", "label_quality", "predicted_label"]].copy()
    table["x"] = frames[:, :, 0].ravel()
    table["y"] = frames[:, :, 1].ravel()
    table["label"] = np.tile(samples["class_name"].to_numpy(), T)
    figure = px.scatter(
        table, x="x", y="y", animation_frame="step", color="label",
        hover_data=["id", "outlier_score", "label_quality", "predicted_label"],
        range_x=[float(frames[..., 0].min()), float(frames[..., 0].max())],
        range_y=[float(frames[..., 1].min()), float(frames[..., 1].max())],
    )
    figure.write_html(out, include_plotlyjs=True)


# Records, in the page, when it first becomes usable (polled every animation frame).
READY_PROBE = """
(() => {
  const check = () => {
    const gd = document.querySelector('.js-plotly-plot');
    const ours = (window.ftviz && window.ftviz.ready) || window.__plotlyLoaded;
    const peer = !window.ftviz && gd && gd._fullData && gd._fullData.length && gd.querySelector('.cartesianlayer');
    if (ours || peer) { window.__interactiveAt = performance.now(); return; }
    requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})();
"""


def plotly_only_page(out: Path) -> None:
    """The floor: a page that only evaluates the embedded plotly.js (every page pays this)."""
    from plotly.offline import get_plotlyjs

    out.write_text(f"<!DOCTYPE html><html><body><script>{get_plotlyjs()}</script>"
                   "<script>window.__plotlyLoaded = true;</script></body></html>")


def time_to_interactive(paths: list[Path], *, repeats: int = 3) -> tuple[list[float], list[str]]:
    """Median ms from navigation start to a usable plot, for each page.

    The pages are loaded in turn, ``repeats`` rounds, each in a fresh browser context, so
    that the machine's load (shared cores) weighs on all of them alike.
    """
    from playwright.sync_api import sync_playwright

    times: list[list[float]] = [[] for _ in paths]
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(repeats):
            for index, path in enumerate(paths):
                context = browser.new_context(viewport={"width": 1400, "height": 800})
                context.add_init_script(READY_PROBE)
                page = context.new_page()
                if index == 0:
                    page.on("pageerror", lambda error: errors.append(str(error)))
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(path.resolve().as_uri(), timeout=180_000)
                page.wait_for_function("window.__interactiveAt !== undefined", timeout=180_000, polling=50)
                times[index].append(page.evaluate("window.__interactiveAt"))
                context.close()
        browser.close()
    return [statistics.median(t) for t in times], errors


def screenshot(html: Path, out: Path, *, frame: int | None = None, fit: bool = False, hover: bool = False,
               width: int = 1400, height: int = 800) -> None:
    """Screenshot of an animation page at ``frame`` (default: the last).

    ``fit`` ticks "fit each frame"; ``hover`` points at the frame's top outlier so the
    tooltip with its thumbnail shows.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(html.resolve().as_uri())
        page.wait_for_function("window.ftviz && window.ftviz.ready && window.ftviz.thumbnailsLoaded", timeout=120_000)
        if fit:
            page.check("#fit-frames")
        target = page.evaluate("window.ftviz.meta.T - 1") if frame is None else frame
        page.evaluate(f"window.ftviz.goTo({int(target)}, 0)")
        page.wait_for_timeout(500)
        if hover:
            point = page.evaluate(
                """(t) => { const gd = document.getElementById('scatter'), id = window.ftviz.meta.top[t][0];
                  const shown = window.ftviz.displayed(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                  const box = gd.getBoundingClientRect();
                  return {x: box.left + xa._offset + xa.l2p(shown.x[id]), y: box.top + ya._offset + ya.l2p(shown.y[id])}; }""",
                int(target),
            )
            page.mouse.move(point["x"] - 15, point["y"] - 15)
            page.mouse.move(point["x"], point["y"], steps=3)
        page.wait_for_timeout(700)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--video", action="store_true", help="also time GIF and MP4 export")
    parser.add_argument("--no-peer", action="store_true", help="skip the plotly express page")
    parser.add_argument("--keep", help="folder to keep the synthetic run and pages in")
    parser.add_argument("--screenshot", nargs=2, metavar=("HTML", "PNG"), help="only take a screenshot")
    parser.add_argument("--frame", type=int, help="with --screenshot: the frame (default: the last)")
    parser.add_argument("--fit", action="store_true", help="with --screenshot: tick 'fit each frame'")
    parser.add_argument("--hover", action="store_true", help="with --screenshot: show the top outlier's tooltip")
    args = parser.parse_args()

    if args.screenshot:
        screenshot(Path(args.screenshot[0]), Path(args.screenshot[1]), frame=args.frame, fit=args.fit, hover=args.hover)
        print(f"wrote {args.screenshot[1]}")
        return 0
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 1

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ftviz-bench-"))
    try:
        return run_benchmark(args, folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def run_benchmark(args, folder: Path) -> int:
    from ftviz.render import build_page, load_animation_data, render_run

    started = time.perf_counter()
    run = make_synthetic_run(folder / "synthetic", points=args.points, frames=args.frames)
    print(f"synthetic run ({args.points:,} points x {args.frames} frames) in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)

    started = time.perf_counter()
    html = render_run(run)
    render_s = time.perf_counter() - started
    _, sizes = build_page(load_animation_data(run))
    pages = [html]
    if not args.no_peer:
        peer_html = folder / "article.html"
        started = time.perf_counter()
        article_page(run, peer_html)
        peer_s = time.perf_counter() - started
        pages.append(peer_html)
    floor_html = folder / "plotly-only.html"
    plotly_only_page(floor_html)
    pages.append(floor_html)
    load_before = os.getloadavg()[0]
    medians, ours_errors = time_to_interactive(pages, repeats=args.repeats)
    ours_ms, floor_ms = medians[0], medians[-1]

    rows = []
    point_frames = args.points * args.frames
    without_plotly = sizes["total"] - sizes["plotlyjs"]
    rows.append(("ftviz animation.html", sizes["total"], without_plotly, sizes["points"] / point_frames,
                 sizes["coordinate_bytes_per_point_frame"], render_s, ours_ms))
    if not args.no_peer:
        peer_total = peer_html.stat().st_size
        peer_data = peer_total - sizes["plotlyjs"]
        rows.append(("article: plotly express animation_frame", peer_total, peer_data, peer_data / point_frames,
                     float("nan"), peer_s, medians[1]))
    rows.append(("floor: plotly.js alone, no data", floor_html.stat().st_size, 0, 0.0, float("nan"), 0.0, floor_ms))

    load = (load_before + os.getloadavg()[0]) / 2
    machine = (f"{platform.node() or 'this machine'}: {os.cpu_count()} CPUs, {platform.machine()}, "
               f"load average {load:.1f} while measuring")
    print(f"\n### Animation page, {args.points:,} points x {args.frames} frames ({machine}; Chromium headless, "
          f"SwiftShader WebGL; median of {args.repeats} cold loads, pages taken in turn)\n")
    print("| page | file | without plotly.js | data B/point/frame | coords B/point/frame | write s | interactive ms |")
    print("|---|---|---|---|---|---|---|")
    for name, total, data, per_point, coords, seconds, ms in rows:
        coord_text = "–" if np.isnan(coords) else f"{coords:.2f}"
        print(f"| {name} | {mb(total)} | {mb(data)} | {per_point:.2f} | {coord_text} | {seconds:.1f} | {ms:.0f} |")
    print(f"| ftviz page minus the plotly.js floor | | | | | | {rows[0][6] - floor_ms:.0f} |")
    if not args.no_peer:
        ours, peer = rows[0], rows[1]
        print(f"| ratio article / ftviz | {peer[1] / ours[1]:.1f}x | {peer[2] / ours[2]:.1f}x | "
              f"{peer[3] / ours[3]:.1f}x | | {peer[5] / ours[5]:.1f}x | {peer[6] / ours[6]:.1f}x |")
    print(f"\nftviz parts: plotly.js {mb(sizes['plotlyjs'])}, per-point data {mb(sizes['points'])}, "
          f"thumbnails {mb(sizes['thumbnails'])} (one sprite sheet), generated images {mb(sizes['generated'])}, "
          f"page and metadata {mb(sizes['other'])}. Budget: data < 5 MB "
          f"{'met' if sizes['points'] + sizes['other'] < 5e6 else 'MISSED'}, "
          f"coordinates <= 6 B/point/frame {'met' if sizes['coordinate_bytes_per_point_frame'] <= 6 else 'MISSED'}, "
          f"interactive < 3 s {'met' if ours_ms < 3000 else 'MISSED'}.")
    if ours_errors:
        print(f"\nbrowser errors on the ftviz page: {ours_errors[:3]}")

    if args.video:
        print("\n| export | seconds | file |\n|---|---|---|")
        for fmt in ("gif", "mp4"):
            started = time.perf_counter()
            try:
                path = render_run(run, output_format=fmt)
            except Exception as error:  # report, keep benchmarking
                print(f"| {fmt} | failed: {error} | |")
                continue
            print(f"| {fmt} | {time.perf_counter() - started:.1f} | {mb(path.stat().st_size)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
