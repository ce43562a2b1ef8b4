"""Outlier scores for one snapshot: Cleanlab's default against ftviz's kNN path, same run.

10,000 x 768 float16 embeddings (clustered, like a fine-tuned ViT's), the size of one CIFAR-10
snapshot. Prints seconds, the ratio, and the agreement of the values (Spearman, top-8).

    python experiments/bench_scores.py [--n 10000] [--dim 768]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(fn, repeat: int) -> tuple[float, np.ndarray]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from scipy.stats import spearmanr

    from ftviz.quality import outlier_scores

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, args.dim))
    features = centres[rng.integers(0, 10, args.n)] + rng.normal(scale=1.0, size=(args.n, args.dim))
    features = features.astype(np.float16).astype(np.float32)
    outlier_scores(features[:100], method="cleanlab")  # imports out of the timing
    outlier_scores(features[:100], method="knn")
    cleanlab_s, reference = best_of(lambda: outlier_scores(features, method="cleanlab"), args.repeat)
    knn_s, fast = best_of(lambda: outlier_scores(features, method="knn", device="cpu"), args.repeat)
    same_top8 = set(np.argsort(-reference)[:8]) == set(np.argsort(-fast)[:8])
    print(f"\nMachine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}); "
          f"features {args.n:,} x {args.dim}, k = 10, cosine")
    print("\n| scorer | seconds per snapshot | ratio |\n|---|---:|---:|")
    print(f"| Cleanlab OutOfDistribution (default) | {cleanlab_s:.2f} | 1.0x |")
    print(f"| ftviz knn (blocked matmul + Cleanlab's transform) | {knn_s:.2f} | {cleanlab_s / knn_s:.1f}x |")
    print(f"\nSpearman {spearmanr(reference, fast).statistic:.6f}; max |diff| {np.abs(reference - fast).max():.1e}; "
          f"same top-8: {same_top8}")


if __name__ == "__main__":
    main()
