"""The page's binary format: quantised coordinates and scores, packed into deflated streams.

Its twin is the decoder in ``ftviz/assets/animation.js`` (``unpack`` and the coordinate
loop in ``main``); change both together, and tests/test_render.py's ``decode_page``.

Everything per point and frame travels in one binary blob, one deflated (``zlib``) stream
per array, base64-encoded; the page's script inflates it with the browser's
``DecompressionStream``. Coordinates are quantised to 14-bit codes on each frame's
bounding box, held in uint16; scores to uint8 over their range (6 bits for the colour
scales' outlier score: 64 levels are more than a colour bar shows); predictions as uint8
(uint16 past 254 classes) and flags as uint8. Coordinates and scores are stored as zigzag
differences to the previous frame, predictions and flags point by point over time, and
every array's bytes in planes (see :func:`encode_blob`).
"""

from __future__ import annotations

import zlib

import numpy as np

MISSING_U8 = 255  # a score missing at a frame (quantised scores use 0..254)
# 12 bits per axis per frame: 1/4095 of the frame's extent, ~4 steps per screen pixel on a
# full-size plot (sharp zoomed in 4x). Measured on the default run's t-SNE frames: 3.2 bytes
# per point-frame against 3.9 at 14 bits, which keeps the page within 6 bytes per point-frame.
COORDINATE_BITS = 12
# Frames whose extents differ by less than this factor share one grid (t-SNE, UMAP and
# per-frame PCA are all scaled to unit RMS radius): codes then change only where points move.
SHARED_GRID_RATIO = 1.5


def quantise_coordinates(frames: np.ndarray, *, bits: int = COORDINATE_BITS,
                         padding: float = 0.04) -> tuple[np.ndarray, dict]:
    """Map (T, N, 2) float coordinates to integer codes on each frame's own bounding box.

    Frames of similar size (extents within ``SHARED_GRID_RATIO`` of each other, per axis)
    share one grid over all of them, so a still point keeps its code and deflates to nothing.
    Otherwise each frame gets its own grid, so a frame that is small next to the others
    (early in training, or a shared PCA basis) keeps full precision. The error is at most
    half a grid step, per axis.

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
    extent = high - low
    if (extent.min(axis=0) > 0).all() and (extent.max(axis=0) / extent.min(axis=0) < SHARED_GRID_RATIO).all():
        low = np.broadcast_to(low.min(axis=0), low.shape).copy()
        high = np.broadcast_to(high.max(axis=0), high.shape).copy()
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


def quantise_unit(values: np.ndarray, *, levels: int = 255) -> tuple[np.ndarray, list[float]]:
    """Floats (NaN = missing) -> uint8 codes 0..levels-1 over their own [min, max]; 255 = missing.

    Returns (codes, [low, high]); value = low + code * (high - low) / (levels - 1).
    Fewer ``levels`` (e.g. 64 for a colour scale) make codes that deflate to less.
    """
    if not 2 <= levels <= 255:
        raise ValueError(f"levels must be in 2..255, got {levels}")
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(values.shape, MISSING_U8, dtype=np.uint8), [0.0, 1.0]
    low, high = float(values[finite].min()), float(values[finite].max())
    span = high - low if high > low else 1.0
    codes = np.full(values.shape, MISSING_U8, dtype=np.uint8)
    codes[finite] = np.rint((values[finite] - low) / span * (levels - 1)).astype(np.uint8)
    return codes, [low, high]


def label_dtype(n_classes: int) -> str:
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
