"""One readable training loop; the recorder takes the snapshots.

Every ``snapshot_every`` optimizer steps, and at step 0 before any update, the probe set goes
through the live model and its embeddings and logits are written to ``snapshots/`` by
:class:`ftviz.recorder.Recorder`. Train loss is logged every step; eval loss and accuracy on
the probe at every snapshot. Weights are written only for resume (``weights/latest.pt``,
model + optimizer, while training runs) and, at the end, as ``weights/final.pt`` (the model
alone); every snapshot's with save_weights="all".

Training dynamics (``train.dynamics``, classifiers only): each batch's logits, from the forward
pass that computes the loss, are kept per training sample id and written to ``dynamics/`` at
epoch ends, resume saves and the end (:mod:`ftviz.dynamics`).

The resume state holds tensors, numbers, strings and plain containers only, and is read back
with ``torch.load(weights_only=True)``: a run folder someone shares can hold no code that runs
on resume.

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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ftviz import distributed
from ftviz.embed import resolve_device, resolve_precision
from ftviz.errors import FtvizError
from ftviz.recorder import Recorder
from ftviz.rundir import RunDir, _test_kill_point, atomic_path, snapshot_name

# Write the resume state at least this often (seconds) besides epoch ends and interrupts:
# a ViT-B state is ~1 GB, so not at every snapshot. Read at every step (tests set it to 0).
RESUME_EVERY_S = 600.0

# The keys every resume state holds; a file without them is not one.
RESUME_KEYS = ("model", "optimizer", "step", "total_steps", "torch_rng", "metrics")


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


@dataclass(frozen=True)
class StepPlan:
    """How long a config trains and when it snapshots, in optimizer steps."""

    micro_per_epoch: int  # micro-batches in one pass over the training set (ragged last one dropped)
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    snapshots: list[int]

    @classmethod
    def of(cls, cfg, train_size: int) -> "StepPlan":
        """The plan of a ``[train]`` section for ``train_size`` training images."""
        micro_per_epoch = max(1, train_size // cfg.batch_size)
        steps_per_epoch = max(1, micro_per_epoch // cfg.grad_accum)
        total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        return cls(micro_per_epoch=micro_per_epoch, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                   warmup_steps=max(1, int(cfg.warmup_ratio * total_steps)),
                   snapshots=snapshot_schedule(total_steps, cfg.snapshot_every))


def load_resume_state(path: Path, device) -> dict:
    """A resume state written by :func:`train`, loaded without running any code it may hold.

    Raises :class:`FtvizError` (one line, naming ``--force``) when the file is damaged or
    holds anything but tensors, numbers, strings and plain containers.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by damage
        raise FtvizError(
            f"{path} is damaged or holds objects other than tensors and plain values (not loaded: "
            f"loading them could run code; {type(error).__name__}); pass --force to start the run again"
        ) from None
    if not isinstance(state, dict) or any(key not in state for key in RESUME_KEYS):
        raise FtvizError(f"{path} is not an ftviz resume state; pass --force to start the run again")
    return state


class _TrainingLoss(nn.Module):
    """``model.training_loss`` as a forward, so DistributedDataParallel can wrap it.

    ``with_logits``: the forward returns (loss, logits (B, C) detached, embedding (B, D)
    detached), the loss computed from those logits as :meth:`ProbeModel.training_loss` does;
    the training dynamics are these outputs, at no extra forward pass.
    """

    def __init__(self, model, *, with_logits: bool = False):
        super().__init__()
        self.model = model
        self.with_logits = with_logits

    def forward(self, pixels, labels):
        if not self.with_logits:
            return self.model.training_loss(pixels, labels)
        embedding, logits = self.model.embed(pixels)
        return nn.functional.cross_entropy(logits.float(), labels), logits.detach(), embedding.detach()


def records_dynamics(model) -> bool:
    """Whether ``model`` trains on class logits (its loss is ProbeModel's cross-entropy), so
    its training forward passes give per-sample logits; diffusion models train on a denoising
    loss and have none."""
    from ftviz.models.base import ProbeModel

    return getattr(type(model), "training_loss", None) is ProbeModel.training_loss


def train(run: RunDir, config, splits, model, *, progress: bool = True) -> None:
    """Train ``model`` on ``splits.train`` and snapshot ``splits.probe`` into ``run``.

    Resumes from ``weights/latest.pt`` when the run holds one from an unfinished training.
    Under torchrun every rank calls this with the same arguments; rank 0 writes.
    """
    loop = _Loop(run, config, splits, model)
    loop.resume()
    stage = (run.stage("train", total_steps=loop.plan.total_steps, processes=loop.world)
             if loop.rank == 0 else contextlib.nullcontext({}))
    bar = _progress(loop.plan.total_steps, loop.step, enabled=progress and loop.rank == 0)
    with stage as record:
        try:
            loop.train_to_the_end(bar)
        except KeyboardInterrupt:
            loop.save_on_interrupt()
            record["step"] = loop.step
            raise
        finally:
            bar.close()
        record.update(loop.finish())
    distributed.barrier()  # the other ranks wait until rank 0 has marked training done


class _Loop:
    """The state of one training: :func:`train` calls its steps in order.

    ``step`` is the number of optimizer updates applied so far. ``consistent`` is False from an
    update until its step's snapshot and resume state are written: a state saved in between
    would not match the snapshots on disk.
    """

    # ---- setup and resume ----------------------------------------------------------------
    def __init__(self, run: RunDir, config, splits, model):
        cfg = self.cfg = config.train
        self.run, self.config, self.model = run, config, model
        self.rank, self.world = distributed.rank_and_world()
        if cfg.batch_size % self.world:
            raise FtvizError(f"train.batch_size {cfg.batch_size} does not split over {self.world} processes; "
                             f"use a multiple of {self.world}")
        torch.manual_seed(config.training_seed)
        self.device = device = distributed.local_device(resolve_device(cfg.device))
        self.train_dtype = resolve_precision(cfg.precision, device, inference=False)
        model.to(device)
        self.train_images = torch.from_numpy(splits.train.images).to(device)
        self.train_labels = torch.from_numpy(splits.train.labels).to(device)
        self.splits = splits
        self.record_dynamics = bool(cfg.dynamics) and records_dynamics(model)
        self.train_ids = torch.from_numpy(splits.train_sample_ids).to(device)
        self.recorder = Recorder(run, probe_images=splits.probe.images, probe_labels=splits.probe.labels,
                                 class_names=splits.class_names, probe_true_labels=splits.probe_true_labels,
                                 config=config, probe_split="eval", batch_size=cfg.eval_batch_size,
                                 precision=cfg.embed_precision)
        self.plan = StepPlan.of(cfg, len(self.train_labels))
        self.shard = slice(self.rank * cfg.batch_size // self.world, (self.rank + 1) * cfg.batch_size // self.world)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           fused=device.type == "cuda")
        # Gradients are averaged over the ranks, so each rank's mean loss over its block gives
        # the gradient of the global batch's mean loss (blocks are equal: batch_size % world == 0).
        self.loss_module = _TrainingLoss(model, with_logits=self.record_dynamics)
        if self.world > 1:
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.resume_path = run.weights_dir / "latest.pt"
        self.step = 0
        self.consistent = True
        self.last_resume_save = time.monotonic()

    def resume(self) -> None:
        """Pick up ``weights/latest.pt`` if there is one; otherwise start at step 0."""
        if not self.resume_path.is_file():
            # A fresh start: any snapshot listed from a run killed before its first resume state is redone.
            self.recorder.restore(-1, rows=[])
            self.recorder.restore_dynamics(-1)
            self.write_train_samples()
            return
        state = load_resume_state(self.resume_path, self.device)
        if state["total_steps"] != self.plan.total_steps:
            raise FtvizError(
                f"{self.resume_path} is from a run of {state['total_steps']} steps, this config has "
                f"{self.plan.total_steps}; pass --force to start the run again"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.recorder.restore(self.step, rows=[row for row in state["metrics"] if row["step"] <= self.step])
        # Rows past the saved step are trained again; rows before it were written before the save.
        self.recorder.restore_dynamics(self.step)
        self.write_train_samples(resuming=True)

    def write_train_samples(self, *, resuming: bool = False) -> None:
        """``train_samples.parquet``, ``train_images.npy`` (the images' thumbnails, for the page
        and Spotlight) and the split's fingerprint in run.json (rank 0), when dynamics are
        recorded. A resumed run whose split is the one recorded keeps its thumbnails (CIFAR's
        are the 150 MB of images themselves)."""
        if not self.record_dynamics or self.rank != 0:
            return
        from ftviz.dynamics import read_train_images, write_train_images, write_train_samples
        from ftviz.errors import FtvizError

        splits = self.splits
        write_train_samples(self.run, ids=splits.train_sample_ids, given_labels=splits.train.labels,
                            true_labels=splits.train_true_labels, class_names=splits.class_names)
        recorded = self.run.manifest().get("train_split", {}).get("fingerprint")
        try:
            kept = resuming and recorded == splits.train_fingerprint and \
                read_train_images(self.run, count=len(splits.train), mmap=True) is not None
        except FtvizError:  # damaged: write it again
            kept = False
        if not kept:
            write_train_images(self.run, ids=splits.train_sample_ids, images=splits.train.images)
        self.run.update_manifest(train_split={"fingerprint": splits.train_fingerprint,
                                              "size": len(splits.train), "fixes": splits.fixes_applied})

    # ---- the loop --------------------------------------------------------------------------
    def train_to_the_end(self, bar) -> None:
        """Snapshot step 0 (unless resumed past it), then optimizer steps until the last."""
        if self.step == 0 and 0 not in self.recorder.snapshot_steps:
            self.snapshot(0)
        self.model.train()
        while self.step < self.plan.total_steps:
            # Test hook (tests/test_pipeline.py): "step:N" stops the run between steps N and N + 1.
            _test_kill_point(f"step:{self.step}")
            learning_rate = self.lr(self.step)
            train_loss = self.optimizer_step(learning_rate)
            self.recorder.log(self.step, epoch=self.step / self.plan.steps_per_epoch, loss=train_loss,
                              learning_rate=learning_rate)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}")
            if self.step in self.plan.snapshots:
                self.snapshot(self.step)
            if self.record_dynamics and self.step % self.plan.steps_per_epoch == 0:
                # Once per epoch (a file write costs ~40 ms), at the same step on every rank: the flush gathers.
                self.recorder.flush_dynamics(self.step)
            self.save_between_steps()
            self.consistent = True

    def lr(self, step: int) -> float:
        return lr_at(step, total_steps=self.plan.total_steps, warmup_steps=self.plan.warmup_steps, peak=self.cfg.lr)

    def optimizer_step(self, learning_rate: float) -> float:
        """One update from ``grad_accum`` micro-batches; returns the global batch's mean loss."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            index = _micro_batch(self.step * cfg.grad_accum + micro, self.plan.micro_per_epoch, cfg.batch_size,
                                 len(self.train_labels), self.config.training_seed, self.device)[self.shard]
            pixels = self.model.preprocess(self.train_images[index])
            # Gradients are exchanged once per optimizer step, at the last micro-batch.
            sync = self.world == 1 or micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else self.loss_module.no_sync():
                with torch.autocast(self.device.type, dtype=self.train_dtype or torch.float32,
                                    enabled=self.train_dtype is not None):
                    loss = self.loss_module(pixels, self.train_labels[index])
                if self.record_dynamics:
                    loss, logits, embedding = loss
                    # Position in the global batch: rows of several ranks are written in one order.
                    order = micro * cfg.batch_size + self.shard.start + torch.arange(len(index), device=index.device)
                    self.recorder.record_batch(self.step, self.train_ids[index], logits, order=order,
                                               features=embedding if cfg.dynamics_features else None)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.consistent = False
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        train_loss = distributed.mean_across(loss_sum / cfg.grad_accum, self.device)
        if not math.isfinite(train_loss):
            raise FtvizError(f"the training loss became {train_loss} at step {self.step}: lower train.lr")
        return train_loss

    def snapshot(self, step: int) -> None:
        """The probe's embeddings and logits at ``step`` (every rank), and what rank 0 keeps with them."""
        self.recorder.snapshot(self.model, step, epoch=step / self.plan.steps_per_epoch, learning_rate=self.lr(step))
        if self.rank != 0:
            return
        if self.cfg.save_weights == "all":
            self.model.save_pretrained(self.run.weights_dir / snapshot_name(step, ""))
        # Families with more to show per snapshot (the diffusion model's generated samples).
        on_snapshot = getattr(self.model, "on_snapshot", None)
        if on_snapshot is not None:
            on_snapshot(self.run, step)

    # ---- the resume state ----------------------------------------------------------------
    def save_between_steps(self) -> None:
        """The resume state at every epoch end and every RESUME_EVERY_S (not at the last step:
        the final weights replace it)."""
        due = self.step % self.plan.steps_per_epoch == 0 or time.monotonic() - self.last_resume_save > RESUME_EVERY_S
        if due and self.step < self.plan.total_steps:
            self.save_resume_state()
            self.last_resume_save = time.monotonic()

    def save_on_interrupt(self) -> None:
        """Ctrl-C or SIGTERM: save the state if it matches the files on disk.

        Half-way through an update or its snapshot, saving now would apply that update twice or
        skip that snapshot on resume; the last state saved between steps (end of epoch, or every
        RESUME_EVERY_S) is resumed from instead.
        """
        if self.consistent:
            self.save_resume_state()

    def save_resume_state(self) -> None:
        """``weights/latest.pt``: model, optimizer, step, RNG and metrics rows, as plain data."""
        if self.cfg.save_weights == "none" or self.rank != 0:
            return
        if self.record_dynamics and self.world == 1:
            # The rows up to this step go to disk before the state that resumes after them. (Under
            # several processes the rows are written at epoch ends, where every rank
            # flushes; a state saved in between resumes with a gap in the rows since the last one.)
            self.recorder.flush_dynamics(self.step, gather=False)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "total_steps": self.plan.total_steps,
            "torch_rng": torch.get_rng_state(),  # a uint8 tensor
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "metrics": [_plain_row(row) for row in self.recorder.rows],
            "config": self.config.to_dict(),
        }
        with atomic_path(self.resume_path) as tmp:
            torch.save(state, tmp)

    # ---- the end -----------------------------------------------------------------------------
    def finish(self) -> dict:
        """Write the metrics and the final weights, drop the resume state; returns the train
        stage's record (snapshot count, last true accuracy)."""
        self.recorder.write_metrics()
        if self.record_dynamics:
            self.recorder.flush_dynamics(self.step)
        if self.cfg.save_weights != "none" and self.rank == 0:
            # Done: the optimizer state (2/3 of a resume file) has no use any more; keep the model.
            with atomic_path(self.run.weights_dir / "final.pt") as tmp:
                torch.save({"model": self.model.state_dict(), "step": self.step, "config": self.config.to_dict()}, tmp)
            self.resume_path.unlink(missing_ok=True)
        evals = [row for row in self.recorder.rows if row["split"] == "eval"]
        return {"snapshots": len(self.recorder.snapshot_steps), "dynamics": self.record_dynamics,
                "final_true_accuracy": evals[-1]["true_accuracy"] if evals else None}


def _plain_row(row: dict) -> dict:
    """A metrics row with numpy scalars turned into Python ones, so weights_only loads it."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in row.items()}


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
