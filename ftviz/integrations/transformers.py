"""``FtvizCallback``: snapshots of a probe set from inside a Hugging Face ``Trainer``.

>>> from ftviz.integrations import FtvizCallback                    # doctest: +SKIP
>>> trainer = Trainer(model=model, args=args, train_dataset=train,
...                   callbacks=[FtvizCallback("runs/my-run", probe_images=images,
...                                            probe_labels=labels, every=20)])
>>> trainer.train()   # runs/my-run/animation.html at the end      # doctest: +SKIP

A thin adapter in the manner of transformers' own ``WandbCallback``: it reads the step, the
logs and the model the Trainer hands it and passes them to :class:`ftviz.recorder.Recorder`;
there is no training logic here. The probe goes through the live model at step 0 (before any
update), every ``every`` optimizer steps and at the last step, so no checkpoint is saved or
reloaded for a frame. The loss curve is the Trainer's logs (``on_log``); at the end of
training the run is scored, projected and rendered.

Models: any ``AutoModelForImageClassification`` — ViT (embedding = the CLS token after the
final layer norm) or any classifier with one linear ``classifier`` head (Swin, DeiT, ConvNeXt,
...: embedding = the head's input). Images are resized and normalised on the device with
the model's image-processor settings: ``processor=`` (an image processor, a hub id or a
folder), else the Trainer's ``processing_class``, else ViT's defaults at the model's size.

Several processes (torchrun, ``accelerate launch``): every rank embeds its block of the
probe, rank 0 writes (``state.is_world_process_zero``). Resume (``trainer.train(
resume_from_checkpoint=...)``) keeps the frames up to the checkpoint's step.
"""

from __future__ import annotations

import warnings

import torch
from transformers import TrainerCallback

from ftviz import distributed
from ftviz.errors import FtvizError


class FtvizCallback(TrainerCallback):
    """Record a probe set's embeddings while a ``transformers.Trainer`` trains.

    Parameters
    ----------
    run_dir : the run folder to write (``runs/<name>``).
    probe_images : (N, H, W, 3) uint8 images, the probe set (row i = sample id i).
    probe_labels : (N,) int, their labels as the model is trained on them.
    class_names : names by label; default: the model's ``config.id2label``.
    probe_true_labels : (N,) int where known to differ from ``probe_labels`` (noise you injected).
    every : optimizer steps between snapshots (step 0 and the last step always).
    processor : image processor object, hub id or folder whose settings (size, mean, std) the
        probe images get; default: the Trainer's ``processing_class``.
    config : :class:`ftviz.config.ExperimentConfig` for the later stages (score, project,
        render); default: ftviz's defaults.
    batch_size, precision : of the probe forward ("auto" | "fp32" | "bf16").
    finish : score, project and render at the end of training (else call ``ftviz score`` etc.).
    overwrite : replace a finished run in ``run_dir`` (otherwise that is an error).
    dynamics : also record every training sample's logits at each step it is trained on (the
        training dynamics the detect stage reads, ``dynamics/``). The training batches must carry
        the sample ids in the column ``id_column`` (add it to the dataset and pass
        ``remove_unused_columns=False`` to ``TrainingArguments`` so the collator keeps it); the
        callback takes it out of the batch before the model sees it.
    train_labels : (M,) int, the training labels by sample id (needed with ``dynamics``);
        ``train_true_labels`` where known to differ (noise you injected).
    dynamics_features : with ``dynamics``, also each training sample's embedding (the input of
        the model's linear ``classifier`` head, the vector a probe snapshot keeps) at each
        step: the training set's kNN label vote and outlier score. A model without such a head
        records logits only (a warning says so).
    """

    def __init__(
        self,
        run_dir,
        *,
        probe_images,
        probe_labels,
        class_names=None,
        probe_true_labels=None,
        every: int = 20,
        processor=None,
        config=None,
        batch_size: int = 256,
        precision: str = "auto",
        finish: bool = True,
        overwrite: bool = False,
        progress: bool = False,
        dynamics: bool = False,
        id_column: str = "sample_id",
        train_labels=None,
        train_true_labels=None,
        dynamics_features: bool = True,
    ):
        if int(every) < 1:
            raise FtvizError(f"every must be a number of optimizer steps >= 1, got {every!r}")
        self.run_dir = run_dir
        self.probe_images = probe_images
        self.probe_labels = probe_labels
        self.class_names = class_names
        self.probe_true_labels = probe_true_labels
        self.every = int(every)
        self.processor = processor
        self.config = config
        self.batch_size = batch_size
        self.precision = precision
        self.finish = finish
        self.overwrite = overwrite
        self.progress = progress
        self.recorder = None
        self.probe_model = None
        self.dynamics = bool(dynamics)
        self.dynamics_features = bool(dynamics_features)
        self.id_column = id_column
        if self.dynamics and train_labels is None:
            raise FtvizError("FtvizCallback(dynamics=True) needs train_labels= (the training labels, indexed by "
                             f"the {id_column!r} column of the batches)")
        self.train_labels = None if train_labels is None else [int(v) for v in train_labels]
        self.train_true_labels = None if train_true_labels is None else [int(v) for v in train_true_labels]
        self._hooks = []
        self._pending_ids = None
        self._pending_features = None
        self._state = None

    # ---- Trainer events ----------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        from ftviz.models.hf import wrap_model
        from ftviz.recorder import Recorder

        if model is None:
            raise FtvizError("FtvizCallback needs the Trainer's model; pass model= to Trainer")
        settings, processor_config = self._processor_settings(model, processing_class)
        self.probe_model = wrap_model(model, settings, processor_config).to(next(model.parameters()).device)
        names = self.class_names
        if names is None:
            names = [model.config.id2label.get(i, str(i)) for i in range(model.config.num_labels)]
        self.recorder = Recorder(
            self.run_dir, probe_images=self.probe_images, probe_labels=self.probe_labels, class_names=names,
            probe_true_labels=self.probe_true_labels, config=self.config, probe_split="probe",
            batch_size=self.batch_size, precision=self.precision,
        )
        if self.probe_model.num_classes != len(names):
            raise FtvizError(
                f"the model has {self.probe_model.num_classes} outputs but there are {len(names)} class_names; "
                "give the probe set's classes in the model's label order"
            )
        config = self.recorder.config
        config.model.name = model.config.model_type
        source = {"kind": "hf_trainer_callback", "every": self.every, "output_dir": str(args.output_dir),
                  "processes": int(args.world_size),
                  "processor": {"origin": settings.origin, "size": settings.size,
                                "mean": list(settings.mean), "std": list(settings.std)}}
        distributed.on_main(self._open_run, model, state, source)
        self.recorder.restore(state.global_step, logged=_log_rows(state.log_history, state.global_step))
        if self.dynamics:
            self._start_dynamics(model, state, names)
        if state.global_step == 0 and 0 not in self.recorder.snapshot_steps:
            self._snapshot(state, 0)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if (step % self.every == 0 or step == state.max_steps) and step not in self.recorder.snapshot_steps:
            self._snapshot(state, step)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.dynamics and self.recorder is not None:
            self.recorder.flush_dynamics(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        # A checkpoint resumes after the rows up to its step: they must be on disk first.
        if self.dynamics and self.recorder is not None:
            self.recorder.flush_dynamics(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.recorder is None or not logs:
            return
        rows = _log_rows([{**logs, "step": state.global_step}], state.global_step)
        for row in rows:
            self.recorder.log(**row)
        # The probe row of this step gets the step's learning rate, which the Trainer logs.
        rates = [r["learning_rate"] for r in rows if r["split"] == "train"]
        if rates:
            self.recorder.annotate_probe_row(state.global_step, learning_rate=rates[-1])

    def on_train_end(self, args, state, control, **kwargs):
        if self.recorder is None:
            return
        if state.global_step not in self.recorder.snapshot_steps:  # stopped before max_steps
            self._snapshot(state, state.global_step)
        if self.dynamics:
            self.recorder.flush_dynamics(state.global_step)
            for handle in self._hooks:
                handle.remove()
            self._hooks = []
        if not state.is_world_process_zero:
            return
        self.recorder.finish(progress=self.progress, later_stages=self.finish, total_steps=state.global_step)

    # ---- training dynamics ---------------------------------------------------------------
    def _start_dynamics(self, model, state, names) -> None:
        """Hooks on the model: the batch's ids out of its inputs, its logits out of its output."""
        from ftviz.dynamics import write_train_samples

        self._state = state
        self.recorder.restore_dynamics(state.global_step)
        if state.is_world_process_zero:
            given = self.train_labels
            true = self.train_true_labels if self.train_true_labels is not None else given
            if len(true) != len(given):
                raise FtvizError(f"train_true_labels has {len(true)} labels, train_labels {len(given)}; give one per sample")
            write_train_samples(self.recorder.run, ids=range(len(given)), given_labels=given, true_labels=true,
                                class_names=names)
        self._hooks = [model.register_forward_pre_hook(self._take_ids, with_kwargs=True),
                       model.register_forward_hook(self._keep_logits)]
        if self.dynamics_features:
            head = getattr(model, "classifier", None)
            if isinstance(head, torch.nn.Linear):
                self._hooks.append(head.register_forward_pre_hook(self._keep_features))
            else:
                warnings.warn(f"FtvizCallback: {type(model).__name__} has no linear `classifier` head; the training "
                              "dynamics keep logits only (no kNN label vote or outlier score on the training set)",
                              stacklevel=2)

    def _take_ids(self, module, args, kwargs):
        if not module.training:
            return None  # evaluation and the probe's own forward passes are not training
        if self.id_column not in kwargs:
            raise FtvizError(
                f"FtvizCallback(dynamics=True): the training batch has no {self.id_column!r} column; add the "
                "sample ids to the dataset and pass remove_unused_columns=False to TrainingArguments"
            )
        self._pending_ids = kwargs.pop(self.id_column)
        return args, kwargs

    def _keep_features(self, module, args):
        if self._pending_ids is not None:  # a training forward pass: the head's input, detached
            self._pending_features = args[0].detach().reshape(len(args[0]), -1)

    def _keep_logits(self, module, args, output):
        if self._pending_ids is None:
            return
        ids, self._pending_ids = self._pending_ids, None
        features, self._pending_features = self._pending_features, None
        logits = output["logits"] if isinstance(output, dict) or hasattr(output, "keys") else output[0]
        # global_step counts the updates before this forward pass, as a snapshot's step does.
        self.recorder.record_batch(self._state.global_step, ids, logits, features=features)

    # ---- helpers -----------------------------------------------------------------------
    def _snapshot(self, state, step: int) -> None:
        self.recorder.snapshot(self.probe_model, step, epoch=state.epoch or 0.0)

    def _open_run(self, model, state, source: dict) -> None:
        """Create the run, resume an unfinished one, or refuse to overwrite a finished one
        (the one rule of :func:`ftviz.runs.open_run`: a training from step 0 replaces an
        unfinished run of the same config; ``overwrite=True`` replaces any ftviz run)."""
        self.recorder.open(self.probe_model, hf_model=model, force=self.overwrite, fresh=state.global_step == 0,
                           force_hint="give FtvizCallback another run folder or overwrite=True to replace it",
                           source=source)
        self.recorder.run.mark_stage("train", "running", source="hf_trainer_callback")

    def _processor_settings(self, model, processing_class):
        """(ProcessorSettings, the processor's dict or None) for the probe images."""
        from ftviz.models.hub import load_processor_settings, processor_settings, read_processor_config

        default_size = int(getattr(model.config, "image_size", 224))
        chosen = self.processor if self.processor is not None else processing_class
        chosen = getattr(chosen, "image_processor", chosen)  # a multimodal processor's image part
        if isinstance(chosen, str):
            settings = load_processor_settings(chosen, default_size=default_size)
            return settings, (read_processor_config(chosen) if settings.origin != "defaults" else None)
        if chosen is not None and hasattr(chosen, "to_dict") and hasattr(chosen, "image_mean"):
            config = chosen.to_dict()
            return processor_settings(config, default_size=default_size, origin=type(chosen).__name__), config
        if self.processor is not None:
            raise FtvizError(
                f"processor= wants an image processor, a hub id or a folder, got {type(self.processor).__name__}"
            )
        return processor_settings(None, default_size=default_size), None


def _log_rows(history: list[dict], upto: int) -> list[dict]:
    """Trainer log entries (up to step ``upto``) as metrics rows: "train" and "eval" splits."""
    from ftviz.ingest import metrics_from_log_history

    return [row for row in metrics_from_log_history(history) if row["step"] <= upto]
