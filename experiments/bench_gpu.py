"""GPU throughput: the article's way against ftviz's, same process, same card (issue 8).

Synthetic CIFAR-shaped uint8 images (no hub on the GPU machine), ViT-B/16 at 224 px with
random weights. Prints a markdown table: img/s, fraction of the measured bf16 matmul ceiling,
and for the end-to-end run seconds and bytes written.

    python experiments/bench_gpu.py                 # on a GPU machine, ~6 minutes
    python experiments/bench_gpu.py --tiny          # on a CPU, a smoke test of the script itself
    python experiments/bench_gpu.py --skip-e2e      # throughput rows only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, *, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_ceiling(device) -> float:
    """Measured bf16 matrix-product FLOP/s on this device."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = timed(lambda: a @ b, device, repeat=5)
    return 2 * n**3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="tiny ViT and few images (CPU smoke test)")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--probe", type=int, default=10_000)
    args = parser.parse_args()

    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from ftviz.embed import probe_forward
    from ftviz.models import create_model
    from ftviz.quality import outlier_scores

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    if args.tiny:
        arch = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, patch_size=16)
        n_probe, batch_article, batch_ours, train_batch = 256, 32, 128, 32
    else:
        arch = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16)
        n_probe, batch_article, batch_ours, train_batch = args.probe, 32, 1024, 256
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_probe, 32, 32, 3), dtype=np.uint8)
    rows = []
    ceiling = matmul_ceiling(device)

    # -- the article: ViTImageProcessor on the CPU, fp32, eager attention, batch 32 ------------
    config = ViTConfig(image_size=224, num_labels=10, **arch)
    config._attn_implementation = "eager"
    article = ViTForImageClassification(config).to(device).eval()
    processor = ViTImageProcessor()  # resize to 224, mean = std = 0.5
    count = min(n_probe, 2048 if not args.tiny else n_probe)

    def article_embed():
        with torch.no_grad():
            for i in range(0, count, batch_article):
                batch = processor(list(images[i : i + batch_article]), return_tensors="pt")["pixel_values"].to(device)
                article.vit(batch).last_hidden_state[:, 0].cpu()

    seconds = timed(article_embed, device, repeat=1)
    rows.append(("embeddings, article (CPU processor, fp32, eager, batch 32)", count / seconds))

    # -- ftviz: uint8 on the device, resize/normalise there, bf16 autocast, SDPA -----------------
    model = create_model("vit_base_patch16_224", num_classes=10, pretrained="none", **({} if not args.tiny else arch)).to(device)
    on_device = torch.from_numpy(images).to(device)
    dtype = torch.bfloat16
    seconds = timed(lambda: probe_forward(model, on_device, batch_size=batch_ours, dtype=dtype), device)
    ours_embed = n_probe / seconds
    rows.append((f"embeddings, ftviz (GPU preprocess, bf16 + SDPA, batch {batch_ours})", ours_embed))
    full, _ = probe_forward(model, on_device[:512], batch_size=256, dtype=None)
    half, _ = probe_forward(model, on_device[:512], batch_size=256, dtype=dtype)
    a, b = full.astype(np.float64), half.astype(np.float64)
    cosine = ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min()

    # -- training step img/s -------------------------------------------------------------------
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    labels = torch.from_numpy(rng.integers(0, 10, size=train_batch)).to(device)
    batch = on_device[:train_batch] if len(on_device) >= train_batch else on_device.repeat(train_batch // len(on_device) + 1, 1, 1, 1)[:train_batch]

    def train_steps(steps: int = 5):
        for _ in range(steps):
            with torch.autocast(device.type, dtype=dtype):
                loss = model.training_loss(model.preprocess(batch), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    model.train()
    seconds = timed(train_steps, device, repeat=2)
    rows.append((f"training, ftviz (bf16 + SDPA + fused AdamW, batch {train_batch})", 5 * train_batch / seconds))

    # -- scores: Cleanlab on the CPU against the kNN path --------------------------------------
    features = full if args.tiny else probe_forward(model, on_device, batch_size=batch_ours, dtype=dtype)[0]
    outlier_scores(features[:64], method="cleanlab")  # imports and first-call costs out of the timing
    outlier_scores(features[:64], method="knn")
    start = time.perf_counter()
    reference = outlier_scores(features, method="cleanlab")
    cleanlab_s = time.perf_counter() - start
    start = time.perf_counter()
    fast = outlier_scores(features, method="knn")
    fast_s = time.perf_counter() - start
    from scipy.stats import spearmanr

    agreement = spearmanr(reference, fast).statistic
    same_top8 = set(np.argsort(-reference)[:8]) == set(np.argsort(-fast)[:8])

    print(f"\nDevice: {name}; measured bf16 matmul {ceiling / 1e12:.0f} TFLOP/s; torch {torch.__version__}")
    print("\n| what | img/s |\n|---|---:|")
    for label, rate in rows:
        print(f"| {label} | {rate:,.0f} |")
    print(f"\nbf16 vs fp32 embeddings: min cosine {cosine:.5f}")
    print(f"scores for {features.shape}: Cleanlab {cleanlab_s:.2f} s, ftviz knn {fast_s:.3f} s "
          f"({cleanlab_s / fast_s:.0f}x), Spearman {agreement:.5f}, same top-8: {same_top8}")

    if args.skip_e2e:
        return
    # -- the article-scale run end to end -------------------------------------------------------
    out = Path(tempfile.mkdtemp(prefix="ftviz-gpu-"))
    n_train = 60_000 if not args.tiny else 600
    overrides = [
        f"out_dir={out}", "name=e2e", "data.dataset=synthetic", f"data.train_size={n_train}",
        "data.probe=test", f"data.test_fraction={1 / 6}", "model.name=vit_base_patch16_224",
        'model.pretrained="none"', "train.epochs=1", "train.batch_size=32", "train.snapshot_every=20",
        "train.eval_batch_size=1024", "train.lr=2e-5",
    ]
    if args.tiny:
        options = "{" + ", ".join(f"{key} = {value}" for key, value in arch.items()) + "}"
        overrides += [f"model.options={options}", "train.snapshot_every=5"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftviz.cli", "run", "-q", *[f"--set={o}" for o in overrides]], check=True, cwd=ROOT)
    total = time.perf_counter() - start
    run = out / "e2e"
    written = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
    stages = json.loads((run / "run.json").read_text())["stages"]
    print(f"\nend to end ({n_train * 5 // 6:,} train, {n_train // 6:,} probe, 1 epoch, batch 32, snapshot every 20): "
          f"{total:.0f} s, {written / 1e9:.2f} GB written; stages: "
          + ", ".join(f"{k} {v.get('seconds', float('nan')):.0f} s" for k, v in stages.items()))


if __name__ == "__main__":
    main()
