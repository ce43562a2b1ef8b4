"""Loading from the Hugging Face hub or a local folder: image-processor settings and errors.

A checkpoint's ``preprocessor_config.json`` says how its images were prepared (size, mean,
std). ftviz applies the same settings on the device in
:meth:`ftviz.models.base.ProbeModel.preprocess`: bilinear resize straight to ``size``, then
``(pixels / 255 - mean) / std``. Against ``ViTImageProcessor`` (PIL backend, the one
transformers uses without torchvision) on 32 px CIFAR images resized to 224 px the largest
difference is 0.0067 in normalised units (under one grey level at std 0.5): PIL rounds the
resized image to uint8 and uses fixed-point weights, ftviz stays in float32
(tests/test_vit_pretrained.py). Processors that centre-crop (resize to 256, crop 224) are
resized straight to the crop size instead.

:func:`load_pretrained` is the one loader of transformers checkpoints for the model families
(ViT, Swin): one-line errors through :func:`hub_error`, float32 weights, and a fresh head.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ftviz.errors import FtvizError

PROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_MEAN = (0.5, 0.5, 0.5)  # ViTImageProcessor's defaults (IMAGENET_STANDARD_*)
DEFAULT_STD = (0.5, 0.5, 0.5)
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class ProcessorSettings:
    """What ``ProbeModel.preprocess`` needs: square side in pixels, per-channel mean and std."""

    size: int
    mean: tuple
    std: tuple
    origin: str  # where the numbers came from: a file, a hub id, or "defaults"


def looks_like_path(source: str) -> bool:
    """True for things a user means as a folder ("/x", "./x", "~/x", "a/b/c"), not "owner/name"."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def hub_offline() -> bool:
    """Whether the user switched the hub off (HF_HUB_OFFLINE=1 or the older variables)."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in _OFFLINE_VARIABLES)


def read_processor_config(source: str | Path) -> dict | None:
    """The parsed ``preprocessor_config.json`` of a local folder or a hub id, or None if absent.

    A hub id is looked up in the local cache (and online unless the hub is switched off);
    any failure to reach it means "no settings here", because the weights were loaded already.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / PROCESSOR_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise FtvizError(f"{path} is corrupt ({error}); delete it or replace it with the base model's") from None
    if looks_like_path(str(source)):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(source), PROCESSOR_FILE)).read_text())
    except Exception:  # not on the hub, not cached, no network: the caller falls back
        return None


def processor_settings(config: dict | None, *, default_size: int, origin: str = "defaults") -> ProcessorSettings:
    """Turn an image-processor config into :class:`ProcessorSettings`.

    ``config`` None gives ``default_size`` (the model's ``config.image_size``) and
    mean = std = 0.5, the ``ViTImageProcessor`` defaults.
    """
    if not config:
        return ProcessorSettings(int(default_size), DEFAULT_MEAN, DEFAULT_STD, "defaults")
    if config.get("do_rescale", True) is False or abs(float(config.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-6:
        raise FtvizError(
            f"the image processor of {origin} rescales pixels by {config.get('rescale_factor')} "
            f"(do_rescale={config.get('do_rescale', True)}); ftviz supports only 1/255"
        )
    size = side_in_pixels(config.get("size"), default_size)
    if config.get("do_center_crop") and config.get("crop_size"):
        size = side_in_pixels(config.get("crop_size"), size)
    if config.get("do_resize", True) is False:
        size = int(default_size)
    if config.get("do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean = _three(config.get("image_mean", DEFAULT_MEAN))
        std = _three(config.get("image_std", DEFAULT_STD))
    return ProcessorSettings(size, mean, std, origin)


def side_in_pixels(size, default: int) -> int:
    """One side in pixels from ``224``, ``{"height": 224, "width": 224}`` or ``{"shortest_edge": 224}``."""
    if size is None:
        return int(default)
    if isinstance(size, dict):
        return int(size.get("height") or size.get("shortest_edge") or size.get("width") or default)
    return int(size)


def _three(values) -> tuple:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    values = tuple(float(v) for v in values)
    return values if len(values) == 3 else (values[0],) * 3


def load_processor_settings(*sources, default_size: int) -> ProcessorSettings:
    """Settings from the first of ``sources`` (folders or hub ids) that has a processor config."""
    for source in sources:
        if not source:
            continue
        config = read_processor_config(source)
        if config:
            return processor_settings(config, default_size=default_size, origin=str(source))
    return processor_settings(None, default_size=default_size)


def save_processor_config(directory, size: int, mean, std) -> None:
    """Write a ``preprocessor_config.json`` that ``ViTImageProcessor`` reads back."""
    try:
        from transformers import ViTImageProcessorPil as Processor  # no torchvision needed
    except ImportError:  # older transformers
        from transformers import ViTImageProcessor as Processor
    Processor(size={"height": int(size), "width": int(size)}, image_mean=list(mean), image_std=list(std)).save_pretrained(directory)


@contextmanager
def quiet_transformers():
    """Hide transformers' "newly initialised weights" notices (a fresh head is the point) and
    its per-load progress bars (ingestion loads one model per checkpoint) while loading."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def hub_error(source: str, error: Exception, *, what: str = "model", setting: str = "model.pretrained") -> FtvizError:
    """One line that says what to do when a checkpoint or dataset cannot be loaded.

    Parameters
    ----------
    source : the hub id or folder that failed.
    error : the library's exception (only its type and first line are shown).
    what : "model" or "dataset", for the message.
    setting : the config key the user changes to point at a local copy.
    """
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    local = Path(str(source)).expanduser()
    if local.exists():
        return FtvizError(f"cannot load a {what} from {source}: {type(error).__name__}: {first_line}")
    if looks_like_path(str(source)):
        return FtvizError(f"cannot load a {what} from {source}: no such folder; set {setting} to an existing folder or a hub id")
    if hub_offline():
        return FtvizError(
            f"{source!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it where "
            f"there is network (`hf download {source}{' --repo-type dataset' if what == 'dataset' else ''}`) "
            f"and copy the cache to HF_HOME, or set {setting} to a local folder"
        )
    return FtvizError(
        f"cannot load {what} {source!r} from the hub or its cache ({type(error).__name__}: {first_line}); "
        f"check the name and the network, or download it elsewhere and set {setting} to the local folder"
    )


def pretrained_source(pretrained: str, default: str, overrides: dict, *, family: str) -> str | None:
    """The checkpoint to load (hub id or folder), or None for a randomly initialised model.

    ``pretrained`` "" means the variant's ``default``, "none" means random weights. A
    checkpoint fixes the architecture, so user ``overrides`` (model.options) are refused then.
    """
    source = default if pretrained == "" else pretrained
    if not source or source == "none":
        return None
    if overrides:
        raise FtvizError(
            f"model.options {sorted(overrides)} cannot change a pretrained {family}; "
            'set model.pretrained = "none" for a randomly initialised one'
        )
    return source


@contextmanager
def explained_load_errors(source: str, *, setting: str = "model.pretrained"):
    """Turn any failure to load ``source`` into :func:`hub_error`'s one line (FtvizError passes)."""
    try:
        yield
    except FtvizError:
        raise
    except Exception as error:  # OSError, ValueError, hub and network errors: all mean "cannot get it"
        raise hub_error(source, error, setting=setting) from None


def load_pretrained(source: str, *, model_class: str, model_type: str, family: str, num_classes: int,
                    class_names=None, **load_options):
    """Load a transformers checkpoint (hub id or folder) of one family with a fresh head.

    Parameters
    ----------
    source : hub id or local folder.
    model_class : the transformers class to load, e.g. ``"ViTForImageClassification"``.
    model_type : the ``config.model_type`` the family reads (``"vit"``, ``"swin"``); another
        type is refused with a one-line error, before the weights are read.
    family : the family's name in messages ("ViT", "Swin").
    num_classes : C, the width of the new head.
    class_names : C names for ``id2label`` (default "0" ... "C-1").
    load_options : passed to ``from_pretrained`` (e.g. ``attn_implementation``).

    Returns
    -------
    (model, :class:`ProcessorSettings`): the model in float32 (whatever dtype the checkpoint
    was saved in) with a freshly initialised ``classifier`` of C outputs, and the checkpoint's
    own image-processor settings (mean = std = 0.5 at the model's size without them).
    """
    import torch
    import transformers

    with explained_load_errors(source):
        config = transformers.AutoConfig.from_pretrained(source)
    if config.model_type != model_type:
        raise FtvizError(
            f"{source} is a {config.model_type!r} checkpoint, not a {family}; choose the model family that "
            f"matches it (ftviz models) or another model.pretrained"
        )
    names = [str(name) for name in (class_names or range(num_classes))]
    config.num_labels = num_classes
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    with explained_load_errors(source), quiet_transformers():
        model = getattr(transformers, model_class).from_pretrained(
            source, config=config, ignore_mismatched_sizes=True, dtype=torch.float32, **load_options
        )
    reset_head(model)
    return model, load_processor_settings(source, default_size=model.config.image_size)


def reset_head(model) -> None:
    """A fresh ``classifier`` (transformers' own init: truncated normal of ``initializer_range``,
    zero bias), also when the checkpoint had one of the right size: its classes need not be
    the dataset's, and every family starts fine-tuning from the same kind of head."""
    import torch

    with torch.no_grad():
        torch.nn.init.trunc_normal_(model.classifier.weight, std=model.config.initializer_range)
        torch.nn.init.zeros_(model.classifier.bias)
