"""Time ftviz.align.align_sequence against the article's chained scipy.spatial.procrustes.

    python experiments/bench_align.py                      # 100 frames x 50,000 points x 2-D
    python experiments/bench_align.py --frames 20 --points 10000 --dims 3

Prints a markdown table: best-of-N seconds, and how many times faster than the article's
way (one ``scipy.spatial.procrustes`` call per consecutive pair of frames, each frame
aligned onto the previous aligned one). Also checks that the chained results agree.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy
from scipy.spatial import procrustes

from ftviz.align import align, align_sequence


def make_frames(n_frames, n_points, dims, seed=0):
    """A cloud that drifts slowly, seen through a fresh random similarity at every frame
    (PCA axes flip, rotate and rescale from one snapshot to the next)."""
    rng = np.random.default_rng(seed)
    cloud = rng.normal(size=(n_points, dims)) * np.linspace(2.0, 1.0, dims)
    frames = np.empty((n_frames, n_points, dims))
    for t in range(n_frames):
        cloud = cloud + 0.02 * rng.normal(size=cloud.shape)
        q, r = np.linalg.qr(rng.normal(size=(dims, dims)))
        frames[t] = rng.uniform(0.5, 2.0) * cloud @ (q * np.sign(np.diag(r))) + rng.normal(size=dims)
    return frames


def article_chain(frames):
    """The article's way: scipy.spatial.procrustes on each consecutive pair, chained."""
    aligned = [frames[0]]
    for frame in frames[1:]:
        _, moved, _ = procrustes(aligned[-1], frame)
        aligned.append(moved)
    return np.stack(aligned)


def loop_chain(frames):
    """ftviz.align.align called once per pair, in a Python loop (no batching)."""
    aligned = [frames[0]]
    for frame in frames[1:]:
        aligned.append(align(frame, aligned[-1]))
    return np.stack(aligned)


def best_of(repeats, function, *args, **kwargs):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times), result


def standardised(frames):
    """Each frame centred and scaled to unit Frobenius norm (scipy's normal form)."""
    centred = frames - frames.mean(axis=1, keepdims=True)
    return centred / np.linalg.norm(centred, axis=(1, 2), keepdims=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--dims", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()

    frames = make_frames(options.frames, options.points, options.dims)
    article_seconds, article = best_of(options.repeats, article_chain, frames)
    rows = [("article: chained `scipy.spatial.procrustes`", article_seconds)]
    loop_seconds, looped = best_of(options.repeats, loop_chain, frames)
    rows.append(("`ftviz.align.align` in a Python loop", loop_seconds))
    previous_seconds, previous = best_of(options.repeats, align_sequence, frames, reference="previous")
    rows.append(('`align_sequence(reference="previous")`', previous_seconds))
    consensus_seconds, _ = best_of(options.repeats, align_sequence, frames, reference="consensus")
    rows.append(('`align_sequence(reference="consensus")`', consensus_seconds))

    # The article's chain lives in scipy's standardised coordinates; up to that, it is ours.
    agreement = np.abs(standardised(previous) - standardised(article)).max()
    loop_agreement = np.abs(previous - looped).max()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{options.frames} frames x {options.points:,} points x {options.dims}-D, float64, best of "
        f"{options.repeats}; machine: {platform.processor() or platform.machine()}, {cores} cores "
        f"(nproc), {platform.platform()}; numpy {np.__version__}, scipy {scipy.__version__}"
    )
    print()
    print("| method | seconds | times faster than the article |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {article_seconds / seconds:.1f}x |")
    print()
    print(f"max |difference| to the article's chain, each frame standardised: {agreement:.1e}")
    print(f"max |difference| to the per-pair loop of ftviz.align.align: {loop_agreement:.1e}")


if __name__ == "__main__":
    main()
