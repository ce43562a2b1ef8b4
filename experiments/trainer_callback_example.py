"""A Hugging Face Trainer script with ftviz watching: runs/trainer-callback/animation.html.

Offline and on a CPU in about a minute: a small ViT built from its config (no download) is
trained on scikit-learn's handwritten digits (32 px RGB) by ``transformers.Trainer``;
``FtvizCallback`` snapshots 300 held-out digits at step 0 and every ``--every`` steps and,
when training ends, scores, projects and renders the run.

    python experiments/trainer_callback_example.py
    torchrun --nproc_per_node 2 experiments/trainer_callback_example.py   # two processes, same frames

Replace the model with ``AutoModelForImageClassification.from_pretrained(...)`` (ViT, Swin,
DeiT, ConvNeXt, ...) and the digits with your data; nothing else changes.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from ftviz.data import load_digits_images
from ftviz.integrations import FtvizCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/trainer-callback", help="the ftviz run folder to write")
    parser.add_argument("--output-dir", default="runs/trainer-callback-hf", help="the Trainer's output_dir")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=10, help="optimizer steps between snapshots")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (split over the processes)")
    parser.add_argument("--probe", type=int, default=300, help="held-out digits in the probe set")
    parser.add_argument("--probe-precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="of the probe forward: 'auto' is bf16 on a GPU and on CPUs with native bf16")
    args = parser.parse_args()

    digits = load_digits_images(32)
    order = np.random.default_rng(0).permutation(len(digits))
    probe, train = order[: args.probe], order[args.probe :]

    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    pixels = processor(list(digits.images[train]), return_tensors="pt")["pixel_values"]
    # sample_id: the row's index in train_labels below, so the callback can record the training
    # dynamics (each training sample's logits as the Trainer computed them) per sample
    train_set = [{"pixel_values": pixels[i], "labels": int(digits.labels[j]), "sample_id": i}
                 for i, j in enumerate(train)]

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, num_labels=10, id2label=dict(enumerate(digits.class_names)),
        label2id={name: i for i, name in enumerate(digits.class_names)},
    ))
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else _launched_world()
    training = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size // world,
        learning_rate=1e-3, warmup_steps=args.steps // 10, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0,
        remove_unused_columns=False,  # keeps sample_id in the batches
    )
    callback = FtvizCallback(args.run_dir, probe_images=digits.images[probe], probe_labels=digits.labels[probe],
                             every=args.every, overwrite=True, dynamics=True, train_labels=digits.labels[train],
                             precision=args.probe_precision)
    Trainer(model=model, args=training, train_dataset=train_set, processing_class=processor,
            callbacks=[callback]).train()
    if training.process_index == 0:
        print(f"ftviz: {len(callback.recorder.snapshot_steps)} frames, animation at {args.run_dir}/animation.html")


def _launched_world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


if __name__ == "__main__":
    main()
