"""The article's pipeline, ported to current libraries, as the peer for bench_pipeline.py.

Not part of ftviz: it reproduces how the article builds its animation, so that ftviz can be
measured against it on the same workload in the same run:

1. HF ``Trainer`` fine-tunes a ViT with a checkpoint every ``save_steps`` steps (weights and
   optimizer state written each time);
2. every checkpoint is reloaded with ``AutoModel`` and the probe set goes through
   ``ViTImageProcessor`` on the CPU, then the CLS token of the last hidden state is kept;
3. Cleanlab ``OutOfDistribution`` scores each frame;
4. scikit-learn PCA per frame, chained ``scipy.spatial.procrustes``;
5. matplotlib draws each frame and imageio writes a GIF.

Usage: python experiments/peer_pipeline.py OUT_DIR --epochs 3 --save-steps 5 [--patch 8 ...]
Prints one JSON line with stage timings.
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--save-steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp", type=int, default=512)
    args = parser.parse_args()

    import glob
    import os

    import imageio.v2 as imageio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from cleanlab.outlier import OutOfDistribution
    from scipy.spatial import procrustes
    from sklearn.decomposition import PCA
    from transformers import (AutoModel, Trainer, TrainingArguments, ViTConfig,
                              ViTForImageClassification, ViTImageProcessor)

    from ftviz.data import inject_label_noise, load_digits_images

    timings = {"imports": time.perf_counter() - T0}
    digits = load_digits_images(32)
    labels, _ = inject_label_noise(digits.labels, 0.1, 10, seed=1)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)

    class Digits(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            pixels = processor(digits.images[i], return_tensors="pt")["pixel_values"][0]
            return {"pixel_values": pixels, "labels": int(labels[i])}

    config = ViTConfig(image_size=32, patch_size=args.patch, hidden_size=args.hidden,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       intermediate_size=args.mlp, num_labels=10)
    start = time.perf_counter()
    trainer = Trainer(
        model=ViTForImageClassification(config),
        args=TrainingArguments(
            output_dir=args.out, per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs, learning_rate=args.lr,
            warmup_steps=max(1, int(args.warmup_ratio * args.epochs * (len(labels) // args.batch_size))),
            save_strategy="steps", save_steps=args.save_steps, logging_steps=args.save_steps,
            report_to=[], use_cpu=True, dataloader_drop_last=True, seed=0,
        ),
        train_dataset=Digits(),
    )
    trainer.train()
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    checkpoints = sorted(glob.glob(os.path.join(args.out, "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
    embeddings = []
    for checkpoint in checkpoints:
        model = AutoModel.from_pretrained(checkpoint).eval()
        chunks = []
        with torch.no_grad():
            for i in range(0, len(labels), 32):
                batch = processor(list(digits.images[i : i + 32]), return_tensors="pt")
                chunks.append(model(**batch).last_hidden_state[:, 0].numpy())
        embeddings.append(np.concatenate(chunks))
    timings["embed"] = time.perf_counter() - start

    start = time.perf_counter()
    for embedding in embeddings:
        OutOfDistribution().fit_score(features=embedding, verbose=False)
    timings["cleanlab"] = time.perf_counter() - start

    start = time.perf_counter()
    frames = [PCA(2).fit_transform(e) for e in embeddings]
    aligned = [frames[0]]
    for frame in frames[1:]:
        _, moved, _ = procrustes(aligned[-1], frame)
        aligned.append(moved)
    timings["project"] = time.perf_counter() - start

    start = time.perf_counter()
    images = []
    for t, frame in enumerate(aligned):
        figure, axis = plt.subplots(figsize=(6, 6), dpi=80)
        axis.scatter(frame[:, 0], frame[:, 1], c=labels, cmap="tab10", s=4)
        axis.set_title(f"checkpoint {t}")
        figure.canvas.draw()
        images.append(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())
        plt.close(figure)
    imageio.mimsave(os.path.join(args.out, "animation.gif"), images, duration=0.2)
    timings["render"] = time.perf_counter() - start
    timings["frames"] = len(aligned)
    timings["total"] = time.perf_counter() - T0
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
