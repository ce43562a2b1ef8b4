"""One readable training loop; the recorder takes the snapshots.

Every ``snapshot_every`` optimizer steps, and at step 0 before any update, the probe set goes
through the live model and its embeddings and logits are written to ``snapshots/`` by
:class:`ftviz.recorder.Recorder`. Train loss is logged every step; eval loss and accuracy on
the probe at every snapshot. Weights are written only for resume (``weights/latest.pt``,
model + optimizer, while training runs) and, at the end, as ``weights/final.pt`` (the model
alone); every snapshot's with save_weights="all".

Several processes: launched by torchrun (or ``accelerate launch``), the model is wrapped in
torch's DistributedDataParallel and each rank takes its block of every global batch, so the
global batch, the gradients and the schedule are the ones of a single process; each rank
embeds its block of the probe and rank 0 writes every file.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time

import torch
from torch import nn

from ftviz import distributed
from ftviz.embed import resolve_device, resolve_precision
from ftviz.errors import FtvizError
from ftviz.recorder import Recorder
from ftviz.rundir import RunDir, atomic_path

# Write the resume state at least this often (seconds) besides epoch ends and interrupts:
# a ViT-B state is ~1 GB, so not at every snapshot.
RESUME_EVERY_S = 600.0


def snapshot_schedule(total_steps: int, every: int) -> list[int]:
    """Steps with a snapshot: 0, every, 2*every, ..., and always the last step."""
    steps = list(range(0, total_steps + 1, every))
    if steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def lr_at(step: int, *, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to zero."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _TrainingLoss(nn.Module):
    """``model.training_loss`` as a forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels, labels):
        return self.model.training_loss(pixels, labels)


def train(run: RunDir, config, splits, model, *, progress: bool = True) -> None:
    """Train ``model`` on ``splits.train`` and snapshot ``splits.probe`` into ``run``.

    Resumes from ``weights/latest.pt`` when the run holds one from an unfinished training.
    Under torchrun every rank calls this with the same arguments; rank 0 writes.
    """
    cfg = config.train
    rank, world = distributed.rank_and_world()
    if cfg.batch_size % world:
        raise FtvizError(f"train.batch_size {cfg.batch_size} does not split over {world} processes; "
                         f"use a multiple of {world}")
    torch.manual_seed(config.seed)
    device = distributed.local_device(resolve_device(cfg.device))
    train_dtype = resolve_precision(cfg.precision, device, inference=False)
    model.to(device)

    train_images = torch.from_numpy(splits.train.images).to(device)
    train_labels = torch.from_numpy(splits.train.labels).to(device)
    recorder = Recorder(run, probe_images=splits.probe.images, probe_labels=splits.probe.labels,
                        class_names=splits.class_names, probe_true_labels=splits.probe_true_labels,
                        config=config, probe_split="eval", batch_size=cfg.eval_batch_size,
                        precision=cfg.embed_precision)

    micro_per_epoch = max(1, len(train_labels) // cfg.batch_size)  # drop the ragged last batch
    steps_per_epoch = max(1, micro_per_epoch // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup_steps = max(1, int(cfg.warmup_ratio * total_steps))
    schedule = snapshot_schedule(total_steps, cfg.snapshot_every)
    shard = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)

    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)

    start_step = 0
    resume_path = run.weights_dir / "latest.pt"
    if resume_path.is_file():
        state = torch.load(resume_path, map_location=device, weights_only=False)
        if state.get("total_steps") != total_steps:
            raise FtvizError(
                f"{resume_path} is from a run of {state.get('total_steps')} steps, this config has "
                f"{total_steps}; start a new run name or delete {run.weights_dir}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        recorder.restore(start_step, rows=[row for row in state["metrics"] if row["step"] <= start_step])
    else:  # a fresh start: any snapshot listed from a run killed before its first resume state is redone
        recorder.restore(-1, rows=[])
    # Gradients are averaged over the ranks, so each rank's mean loss over its block gives
    # the gradient of the global batch's mean loss (blocks are equal: batch_size % world == 0).
    loss_module = _TrainingLoss(model)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )

    def save_resume_state(step: int) -> None:
        if cfg.save_weights == "none" or rank != 0:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "total_steps": total_steps,
            "torch_rng": torch.get_rng_state(),
            "metrics": recorder.rows,
            "config": config.to_dict(),
        }
        with atomic_path(resume_path) as tmp:
            torch.save(state, tmp)

    def snapshot(step: int) -> None:
        recorder.snapshot(model, step, epoch=step / steps_per_epoch,
                          learning_rate=lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps, peak=cfg.lr))
        if rank != 0:
            return
        if cfg.save_weights == "all":
            model.save_pretrained(run.weights_dir / f"step-{step:07d}")
        # Families with more to show per snapshot (the diffusion model's generated samples).
        on_snapshot = getattr(model, "on_snapshot", None)
        if on_snapshot is not None:
            on_snapshot(run, step)

    stage = run.stage("train", total_steps=total_steps, processes=world) if rank == 0 else contextlib.nullcontext({})
    bar = _progress(total_steps, start_step, enabled=progress and rank == 0)
    last_resume_save = time.monotonic()
    step = start_step
    # False from an optimizer update until its step's snapshot and resume state are written:
    # a state saved in between would not match the snapshots on disk.
    consistent = True
    with stage as record:
        try:
            if step == 0 and 0 not in recorder.snapshot_steps:
                snapshot(0)
            model.train()
            while step < total_steps:
                lr = lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps, peak=cfg.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = 0.0
                for micro in range(cfg.grad_accum):
                    index = _micro_batch(step * cfg.grad_accum + micro, micro_per_epoch, cfg.batch_size,
                                         len(train_labels), config.seed, device)[shard]
                    pixels = model.preprocess(train_images[index])
                    # Gradients are exchanged once per optimizer step, at the last micro-batch.
                    sync = world == 1 or micro == cfg.grad_accum - 1
                    with contextlib.nullcontext() if sync else loss_module.no_sync():
                        with torch.autocast(device.type, dtype=train_dtype or torch.float32, enabled=train_dtype is not None):
                            loss = loss_module(pixels, train_labels[index])
                        (loss / cfg.grad_accum).backward()
                    loss_sum += loss.item()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                consistent = False
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                train_loss = distributed.mean_across(loss_sum / cfg.grad_accum, device)
                if not math.isfinite(train_loss):
                    raise FtvizError(f"the training loss became {train_loss} at step {step}: lower train.lr")
                recorder.log(step, epoch=step / steps_per_epoch, loss=train_loss, learning_rate=lr)
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3f}")
                if step in schedule:
                    snapshot(step)
                if step % steps_per_epoch == 0 or time.monotonic() - last_resume_save > RESUME_EVERY_S:
                    if step < total_steps:
                        save_resume_state(step)
                        last_resume_save = time.monotonic()
                consistent = True
        except KeyboardInterrupt:
            # Ctrl-C half-way through an update or its snapshot: saving now would apply that
            # update twice or skip that snapshot on resume; the last state saved between steps
            # (end of epoch, or every RESUME_EVERY_S) is resumed from instead.
            if consistent:
                save_resume_state(step)
            record["step"] = step
            raise
        finally:
            bar.close()
        recorder.write_metrics()
        if cfg.save_weights != "none" and rank == 0:
            # Done: the optimizer state (2/3 of a resume file) has no use any more; keep the model.
            with atomic_path(run.weights_dir / "final.pt") as tmp:
                torch.save({"model": model.state_dict(), "step": step, "config": config.to_dict()}, tmp)
            resume_path.unlink(missing_ok=True)
        evals = [row for row in recorder.rows if row["split"] == "eval"]
        record.update(snapshots=len(recorder.snapshot_steps),
                      final_true_accuracy=evals[-1]["true_accuracy"] if evals else None)
    distributed.barrier()  # the other ranks wait until rank 0 has marked training done


def _micro_batch(index: int, per_epoch: int, batch_size: int, n: int, seed: int, device) -> torch.Tensor:
    """Indices of micro-batch ``index``: a fixed permutation per epoch, so resume is exact."""
    epoch, position = divmod(index, per_epoch)
    order = _epoch_order(n, seed, epoch)
    return order[position * batch_size : (position + 1) * batch_size].to(device)


@functools.lru_cache(maxsize=1)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch, drawn once per epoch rather than once per batch."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


def _progress(total: int, initial: int, *, enabled: bool):
    from tqdm.auto import tqdm

    # mininterval: a redraw every half second is enough, and keeps logs of piped runs short.
    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled, leave=False,
                mininterval=0.5)
