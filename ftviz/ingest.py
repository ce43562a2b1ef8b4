"""Checkpoint ingestion: a run directory from a folder of Hugging Face Trainer checkpoints.

``ftviz embed --checkpoints DIR`` turns a model someone already fine-tuned into the same run
directory ``ftviz run`` makes, so scores, projection, animation and Spotlight work unchanged:

* frames: one snapshot per ``DIR/checkpoint-<step>`` subfolder, in step order (``DIR`` may
  also be one checkpoint folder). The Trainer saves no checkpoint before the first update,
  so there is a step-0 frame only if the folder holds a ``checkpoint-0`` (saved by hand);
  the final model that ``trainer.save_model`` writes at the top of ``DIR`` is not a frame.
* the probe set's embeddings and logits at each checkpoint, on the device, with the
  checkpoint's own image-processor settings: its ``preprocessor_config.json``, else the one
  at the top of ``DIR``, else the base model's (``--processor``), else ViT defaults;
* ``metrics.parquet`` from the Trainer's ``log_history`` (the newest ``trainer_state.json``):
  entries with ``loss`` become split "train", with ``eval_loss`` split "eval"; ftviz adds
  split "probe" rows (loss and accuracy of the probe logits at every frame);
* ``samples.parquet`` and ``probe_images.npy`` as the pipeline writes them.

Label noise: ingestion defaults to ``data.noise_rate = 0`` because the model was trained on
the dataset's own labels; a non-zero rate flips *probe* labels after the fact, which the
model never saw, so label-issue detection is then easier than in a run ftviz trained.

Models (:func:`ftviz.models.hf.wrap_model`): ViT checkpoints use
:class:`ftviz.models.vit.ViTProbe` (CLS token after the final layer norm); any other
``AutoModelForImageClassification`` with a linear ``classifier`` (Swin, DeiT, ConvNeXt, ...)
uses the classifier's input as the embedding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ftviz.errors import FtvizError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class Checkpoint:
    """One ``checkpoint-<step>`` folder: its step, path and weights file."""

    step: int
    path: Path
    weights: Path

    @property
    def sharded(self) -> bool:
        return self.weights.name.endswith(".index.json")


# ---- finding and reading the Trainer's output --------------------------------------------
def find_checkpoints(folder: Path | str) -> list[Checkpoint]:
    """The checkpoints under ``folder`` in step order; errors for any without weights."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FtvizError(f"no folder at {folder}: --checkpoints wants a Trainer output_dir with checkpoint-* folders")
    found = []
    for sub in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(sub.name)
        if match and sub.is_dir():
            found.append((int(match.group(1)), sub))
    if not found and any((folder / name).is_file() for name in WEIGHT_FILES):
        state = _read_state(folder / STATE_FILE) if (folder / STATE_FILE).is_file() else {}
        found = [(int(state.get("global_step", 0)), folder)]  # one checkpoint folder given directly
    if not found:
        raise FtvizError(
            f"{folder} has no checkpoint-<step> folders; point --checkpoints at the Trainer's output_dir "
            "(trained with save_strategy=\"steps\")"
        )
    checkpoints = []
    for step, path in sorted(found):
        weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if weights is None:
            raise FtvizError(
                f"{path} has no weights ({' or '.join(WEIGHT_FILES[:2])}); delete that folder or save it again"
            )
        if not (path / "config.json").is_file():
            raise FtvizError(f"{path} has no config.json; it is not a transformers checkpoint")
        checkpoints.append(Checkpoint(step, path, weights))
    return checkpoints


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FtvizError(f"{path} is corrupt ({type(error).__name__}); delete it or copy it from another checkpoint") from None
    if not isinstance(state, dict):
        raise FtvizError(f"{path} is not a Trainer state (a JSON object)")
    return state


def trainer_states(folder: Path, checkpoints: list[Checkpoint]) -> dict[Path, dict]:
    """Every ``trainer_state.json`` there is: the top folder's and each checkpoint's."""
    paths = [folder / STATE_FILE] + [c.path / STATE_FILE for c in checkpoints]
    return {path: _read_state(path) for path in dict.fromkeys(paths) if path.is_file()}


def newest_log_history(states: dict[Path, dict]) -> tuple[list[dict], Path | None]:
    """The ``log_history`` of the state with the highest ``global_step`` (it holds all earlier ones)."""
    if not states:
        return [], None
    path, state = max(states.items(), key=lambda item: int(item[1].get("global_step", 0)))
    history = state.get("log_history", [])
    return (history if isinstance(history, list) else []), path


def metrics_from_log_history(history: list[dict]) -> list[dict]:
    """Rows for metrics.parquet: "loss" entries -> split "train", "eval_loss" -> split "eval".

    The run summary entry (``train_loss``, ``train_runtime``) is not a curve point and is left out.
    """
    nan = float("nan")
    rows = []
    for entry in history:
        if not isinstance(entry, dict) or "step" not in entry:
            continue
        common = {"step": int(entry["step"]), "epoch": float(entry.get("epoch", nan))}
        if "loss" in entry:
            rows.append({**common, "split": "train", "loss": float(entry["loss"]), "accuracy": nan,
                         "true_accuracy": nan, "learning_rate": float(entry.get("learning_rate", nan))})
        if "eval_loss" in entry:
            rows.append({**common, "split": "eval", "loss": float(entry["eval_loss"]),
                         "accuracy": float(entry.get("eval_accuracy", nan)), "true_accuracy": nan,
                         "learning_rate": nan})
    return rows


# ---- models -----------------------------------------------------------------------------
def read_model_config(checkpoint: Checkpoint):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(checkpoint.path)
    except Exception as error:
        raise FtvizError(
            f"{checkpoint.path}/config.json cannot be read ({type(error).__name__}: "
            f"{(str(error).splitlines() or [''])[0][:120]}); copy it from another checkpoint of the run"
        ) from None


def check_labels(model_config, class_names: list[str], dataset: str, where: Path, log) -> None:
    """The head must have one output per class, in the dataset's order."""
    num_labels = int(model_config.num_labels)
    if num_labels != len(class_names):
        raise FtvizError(
            f"{where}'s classification head has {num_labels} outputs but {dataset} has {len(class_names)} "
            "classes; give the dataset the model was fine-tuned on (--dataset, --data-path)"
        )
    names = [str(model_config.id2label.get(i, f"LABEL_{i}")) for i in range(num_labels)]
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)) or names == list(class_names):
        return
    if sorted(names) == sorted(class_names):
        raise FtvizError(
            f"{where} orders its labels {names} but {dataset} orders them {list(class_names)}; "
            "the labels would be misread: ingest with the dataset the model was trained on"
        )
    log(f"ftviz: note: {where.name} names its labels {names[:4]}..., the dataset {list(class_names)[:4]}...; "
        "ftviz assumes the same order")


def load_classifier(checkpoint: Checkpoint):
    """``AutoModelForImageClassification.from_pretrained`` in float32, errors as one line."""
    import torch
    from transformers import AutoModelForImageClassification

    from ftviz.models.hub import quiet_transformers

    try:
        with quiet_transformers():
            return AutoModelForImageClassification.from_pretrained(checkpoint.path, dtype=torch.float32)
    except Exception as error:
        raise FtvizError(
            f"cannot load {checkpoint.path} ({type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}); "
            "delete that checkpoint folder or save it again"
        ) from None


# ---- the ingestion ----------------------------------------------------------------------
def ingest_checkpoints(
    checkpoints_dir: Path | str,
    config,
    *,
    processor: str = "",
    force: bool = False,
    progress: bool = True,
    log=print,
):
    """Embed the probe set at every checkpoint of a Trainer output folder into a run directory.

    Parameters
    ----------
    checkpoints_dir : the Trainer's ``output_dir`` (``checkpoint-*`` subfolders) or one checkpoint.
    config : :class:`ftviz.config.ExperimentConfig`; ``data`` picks the probe set, ``name`` and
        ``out_dir`` the run, ``train.device`` / ``train.embed_precision`` / ``train.eval_batch_size``
        the forward passes. ``model.name`` and ``model.pretrained`` are set here to the
        checkpoints' model type and folder.
    processor : base model (hub id or folder) whose ``preprocessor_config.json`` applies when
        neither a checkpoint nor ``checkpoints_dir`` has one.
    force : replace an existing run of the same name (otherwise a finished run is refused and
        an unfinished one with the same settings is resumed).

    Returns
    -------
    The :class:`ftviz.rundir.RunDir` with stage "train" done.
    """
    from ftviz.config import check_probe_size
    from ftviz.data import load_splits
    from ftviz.embed import resolve_device

    folder = Path(checkpoints_dir).expanduser()
    # Everything that can be wrong with the input is checked before the run folder is touched.
    checkpoints = find_checkpoints(folder)
    states = trainer_states(folder, checkpoints)
    history, history_path = newest_log_history(states)
    model_config = read_model_config(checkpoints[0])
    config.model.name = model_config.model_type  # what was ingested, recorded in run.json
    config.model.pretrained = str(folder.resolve())
    splits = load_splits(config.data, seed=config.seed)
    check_labels(model_config, splits.class_names, config.data.dataset, checkpoints[0].path, log)
    check_probe_size(config, len(splits.probe))
    models = _CheckpointModels(folder, processor, model_config, splits.num_classes)
    model, hf_model = models.first(checkpoints[0])
    recorder, resuming = _open_recorder(config, splits, folder, checkpoints, history_path, models, model, hf_model,
                                        force=force, processor=processor)
    run = recorder.run
    todo = [c for c in checkpoints if c.step not in recorder.restore(logged=[])]
    log(f"ftviz: {'resuming' if resuming else 'embedding'} {len(todo)} of {len(checkpoints)} checkpoints "
        f"({model_config.model_type}, {len(splits.probe)} probe images, {models.first_settings.size} px, "
        f"processor from {models.first_settings.origin}) -> {run.path}")
    if history_path is None:
        log(f"ftviz: note: no {STATE_FILE} in {folder}; the loss curve will show only the probe metrics")
    if not todo and run.stage_status("train") == "done":
        return run  # stopped after embedding: redoing the train stage would stale every later one
    rows = metrics_from_log_history(history)
    with run.stage("train", source="checkpoints", total_steps=checkpoints[-1].step) as record:
        _embed_checkpoints(recorder, todo, models, model.to(resolve_device(config.train.device)),
                           first_checkpoint=checkpoints[0], states=states, rows=rows, progress=progress)
        # The Trainer's loss curve first, then the probe rows, step by step.
        recorder.set_logged(rows)
        recorder.write_metrics()
        final = recorder.rows[-1] if recorder.rows else {}
        record.update(snapshots=len(recorder.snapshot_steps), final_true_accuracy=final.get("true_accuracy"))
    recorder.wait_for_analysis()
    return run


class _CheckpointModels:
    """Each checkpoint's classifier wrapped with its image-processor settings, for the probe."""

    def __init__(self, folder: Path, processor: str, model_config, num_classes: int):
        self.folder, self.processor = folder, processor
        self.default_size = getattr(model_config, "image_size", 224)
        self.num_classes = num_classes
        self.first_settings = None

    def settings_for(self, checkpoint: Checkpoint):
        from ftviz.models.hub import load_processor_settings

        return load_processor_settings(checkpoint.path, self.folder, self.processor, default_size=self.default_size)

    def wrapped(self, hf_model, settings):
        from ftviz.models.hf import wrap_model
        from ftviz.models.hub import read_processor_config

        # the processor's own file once more, for its crop and resampling (see wrap_model)
        config = read_processor_config(settings.origin) if settings.origin != "defaults" else None
        return wrap_model(hf_model, settings, config)

    def first(self, checkpoint: Checkpoint):
        """(probe model, Hugging Face model) of the first checkpoint, loaded to check the input."""
        self.first_settings = self.settings_for(checkpoint)
        hf_model = load_classifier(checkpoint)
        return self.wrapped(hf_model, self.first_settings), hf_model

    def load(self, checkpoint: Checkpoint, device):
        # from_pretrained maps the weights lazily: ~0.1 s for ViT-B, so a fresh load per
        # checkpoint costs little and lets transformers convert legacy key names.
        model = self.wrapped(load_classifier(checkpoint), self.settings_for(checkpoint)).to(device)
        if model.num_classes != self.num_classes:
            raise FtvizError(
                f"{checkpoint.path} has {model.num_classes} outputs, the first checkpoint "
                f"{self.num_classes}: the folder mixes runs; keep one run's checkpoints"
            )
        return model


def _open_recorder(config, splits, folder: Path, checkpoints, history_path, models: _CheckpointModels, model,
                   hf_model, *, force: bool, processor: str):
    """The Recorder of the run, opened by the one rule (new, resume, refuse, --force)."""
    from ftviz.recorder import Recorder
    from ftviz.runs import run_path

    recorder = Recorder(run_path(config.out_dir, config.name), probe_images=splits.probe.images,
                        probe_labels=splits.probe.labels, class_names=splits.class_names,
                        probe_true_labels=splits.probe_true_labels, config=config, probe_split="probe",
                        batch_size=config.train.eval_batch_size, precision=config.train.embed_precision)
    settings = models.first_settings
    source = {
        "kind": "hf_trainer_checkpoints",
        "path": str(folder.resolve()),
        "checkpoints": [c.path.name for c in checkpoints],
        "trainer_state": str(history_path) if history_path else None,
        "processor": {"origin": settings.origin, "size": settings.size,
                      "mean": list(settings.mean), "std": list(settings.std)},
        "base_processor": processor or None,
    }
    # The checkpoints are the user's: the run folder may lie neither inside them nor around them.
    resuming = recorder.open(model, hf_model=hf_model, force=force, keep_out=(folder,),
                             force_hint="pass --force to replace it", source=source,
                             train_size=len(splits.train), noise_map=splits.noise_map,
                             model_info={"model_type": config.model.name})  # set to the checkpoints' type
    return recorder, resuming


def _embed_checkpoints(recorder, todo, models: _CheckpointModels, first_model, *, first_checkpoint, states, rows,
                       progress: bool):
    """One snapshot per checkpoint in ``todo``, with its epoch and the Trainer's learning rate;
    ``first_model`` is ``first_checkpoint``'s, already loaded to check the input."""
    from tqdm.auto import tqdm

    learning_rates = {row["step"]: row["learning_rate"] for row in rows if row["split"] == "train"}
    device = next(first_model.parameters()).device
    bar = tqdm(todo, desc="embed", unit="ckpt", disable=not progress, leave=False)
    try:
        for checkpoint in bar:
            model = first_model if checkpoint is first_checkpoint else models.load(checkpoint, device)
            epoch = float(states.get(checkpoint.path / STATE_FILE, {}).get("epoch", float("nan")))
            try:
                recorder.snapshot(model, checkpoint.step, epoch=epoch,
                                  learning_rate=learning_rates.get(checkpoint.step, float("nan")))
            except FtvizError as error:
                if "not finite" in str(error):
                    raise FtvizError(f"the embeddings of {checkpoint.path} are not finite; is the checkpoint damaged?") from None
                raise
    finally:
        bar.close()
