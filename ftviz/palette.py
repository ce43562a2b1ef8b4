"""The colours of ftviz: one class palette for the animation, its GIF/MP4/PNG and the compare page.

Class ``c`` has the same colour everywhere: :func:`class_colours` ``(n)[c]``.
"""

from __future__ import annotations

import colorsys

import numpy as np

# Tableau 10, then its light partners: readable on white, distinct for the usual <= 20 classes.
CLASS_PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#a0cbe8", "#ffbe7d", "#ff9d9a", "#86bcb6", "#8cd17d",
    "#f1ce63", "#d4a6c8", "#fabfd2", "#d7b5a6", "#79706e",
)
# Low outlier scores recede (pale blue), high ones stand out (dark red).
OUTLIER_COLORSCALE = (
    (0.0, "#d4e4f4"), (0.35, "#9ecae1"), (0.6, "#fdae6b"), (0.8, "#e6550d"), (1.0, "#7f0000"),
)
# Suspicion of the given label (ftviz.detect): grey for the many clean ones, purple to the top.
SUSPICION_COLORSCALE = (
    (0.0, "#e3e3e8"), (0.5, "#c7bfe0"), (0.8, "#9e7fd0"), (0.93, "#6a3fb0"), (1.0, "#2d0a6b"),
)
# Two-valued modes: (off, on).
FLAG_COLORS = {"label_issue": ("#c4c4c4", "#d62728"), "noise": ("#c4c4c4", "#ff7f0e")}
FLAG_NAMES = {"label_issue": ("no issue", "label issue"), "noise": ("clean label", "injected noise")}


def class_colours(n: int) -> list[str]:
    """CSS colours of classes 0..n-1 (at least one): the palette, then golden-angle hues."""
    colours = list(CLASS_PALETTE)
    for index in range(len(colours), n):
        hue = (index * 137.508) % 360  # past 20 classes: hues spread by the golden angle
        colours.append(f"hsl({hue:.0f},55%,52%)")
    return colours[: max(n, 1)]


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """"#rrggbb" or "hsl(h,s%,l%)" -> (r, g, b) in 0..255."""
    if colour.startswith("hsl"):
        hue, sat, light = (float(v.strip("%")) for v in colour[4:-1].split(","))
        r, g, b = colorsys.hls_to_rgb(hue / 360, light / 100, sat / 100)
        return round(r * 255), round(g * 255), round(b * 255)
    colour = colour.lstrip("#")
    return tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))


def colorscale_rgb(values: np.ndarray, low: float, high: float, scale=OUTLIER_COLORSCALE) -> np.ndarray:
    """(M,) floats -> (M, 3) uint8 colours on ``scale`` over [low, high] (NaN: the low end)."""
    stops = np.array([s for s, _ in scale])
    colours = np.array([hex_rgb(c) for _, c in scale], dtype=np.float64)
    u = np.clip((np.asarray(values, dtype=np.float64) - low) / ((high - low) or 1.0), 0, 1)
    u = np.where(np.isfinite(u), u, 0)
    return np.stack([np.interp(u, stops, colours[:, k]) for k in range(3)], axis=1).astype(np.uint8)
