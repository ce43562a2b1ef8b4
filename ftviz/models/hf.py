"""Any loaded transformers image classifier as a :class:`ftviz.models.base.ProbeModel`.

``ftviz embed`` (checkpoint ingestion) and ``FtvizCallback`` hand ftviz a model they did not
build; :func:`wrap_model` adapts it:

* ViT (``config.model_type == "vit"``): :class:`ftviz.models.vit.ViTProbe`, the CLS token after
  the final layer norm;
* any other classifier whose head is one ``nn.Linear`` named ``classifier`` (Swin, DeiT,
  ConvNeXt, ...): :class:`HeadInputProbe`, embedding = the head's input;
* an image processor that resizes beyond the input size and centre-crops (ConvNeXt's
  ``crop_pct``, DeiT's ``crop_size``) or resamples bicubically: :class:`CroppedProbe` around
  either, with that geometry (:func:`processor_geometry`).

The wrapper holds the model itself, not a copy: a probe through it sees the weights the
Trainer is training at that moment.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ftviz.errors import FtvizError
from ftviz.models.base import ProbeModel
from ftviz.models.hub import ProcessorSettings, side_in_pixels
from ftviz.models.vit import ViTProbe

# PIL resample codes that image processors store -> torch's interpolation modes
_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}


class HeadInputProbe(ProbeModel):
    """An image classifier with one linear ``classifier`` head; embedding = the head's input.

    Parameters
    ----------
    hf_model : a transformers image classifier (``model(pixel_values=...).logits``) whose
        ``classifier`` is an ``nn.Linear`` of D inputs and C outputs.
    settings : the image-processor settings its inputs get (size, mean, std).
    """

    def __init__(self, hf_model, settings: ProcessorSettings):
        head = linear_head(hf_model)
        super().__init__(image_size=settings.size, mean=settings.mean, std=settings.std)
        self.hf_model = hf_model
        self.num_classes = head.out_features
        self.embedding_dim = head.in_features
        self._captured = None

    def _capture(self, module, inputs, output):
        self._captured = inputs[0]

    def embed(self, pixel_values):
        """(embedding (B, D), logits (B, C)) from one forward pass of the whole model."""
        # Hooked only while probing: in training the hook would hold the last batch's
        # activations (and their graph) between steps.
        handle = self.hf_model.classifier.register_forward_hook(self._capture)
        try:
            logits = self.hf_model(pixel_values=pixel_values).logits
        finally:
            handle.remove()
        embedding = self._captured.reshape(len(pixel_values), -1)
        self._captured = None
        return embedding, logits

    def save_pretrained(self, directory) -> None:
        self.hf_model.save_pretrained(directory)


class CroppedProbe(ProbeModel):
    """``inner`` with its images resized to ``resize_side`` with ``mode``, then centre-cropped
    to its input side, as the model's image processor does.

    Parameters
    ----------
    inner : the ProbeModel that embeds (its size, mean and std apply after the crop).
    resize_side : side in pixels the images are resized to before the crop (>= inner.image_size).
    mode : torch interpolation mode, "bilinear" or "bicubic".
    """

    def __init__(self, inner: ProbeModel, resize_side: int, mode: str):
        super().__init__(image_size=inner.image_size, mean=inner.pixel_mean.flatten().tolist(),
                         std=inner.pixel_std.flatten().tolist())
        self.inner = inner
        self.resize_side = int(resize_side)
        self.mode = mode
        self.num_classes = inner.num_classes
        self.embedding_dim = inner.embedding_dim

    def preprocess(self, images):
        """uint8 (B, H, W, 3) -> normalised float32 (B, 3, image_size, image_size)."""
        pixels = images.permute(0, 3, 1, 2).float().div_(255.0)
        side = self.resize_side
        if tuple(pixels.shape[-2:]) != (side, side):
            pixels = F.interpolate(pixels, size=(side, side), mode=self.mode, align_corners=False, antialias=True)
            pixels = pixels.clamp_(0.0, 1.0)  # bicubic overshoots; processors round to uint8 in [0, 255]
        top = (side - self.image_size) // 2
        pixels = pixels[..., top : top + self.image_size, top : top + self.image_size]
        return (pixels - self.pixel_mean) / self.pixel_std

    def embed(self, pixel_values):
        return self.inner.embed(pixel_values)

    def save_pretrained(self, directory) -> None:
        self.inner.save_pretrained(directory)


def linear_head(hf_model) -> nn.Linear:
    """The model's ``classifier`` if it is one ``nn.Linear``, else a one-line error."""
    head = getattr(hf_model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise FtvizError(
            f"{type(hf_model).__name__} has no linear `classifier` head; ftviz ingests ViT, Swin and "
            "other image classifiers whose head is one nn.Linear"
        )
    return head


def wrap_model(hf_model, settings: ProcessorSettings, processor_config: dict | None = None) -> ProbeModel:
    """The ProbeModel for a loaded transformers image classifier.

    ``processor_config`` (the image processor's dict) adds what :class:`ProcessorSettings`
    leaves out: a resize beyond the input size followed by a centre crop (ConvNeXt's
    ``crop_pct``, DeiT's ``crop_size``) and bicubic resampling.
    """
    if hf_model.config.model_type == "vit" and hasattr(hf_model, "vit"):
        probe = ViTProbe(hf_model, image_size=settings.size, mean=settings.mean, std=settings.std)
    else:
        probe = HeadInputProbe(hf_model, settings)
    resize, mode = processor_geometry(processor_config, settings.size)
    if resize != settings.size or mode != "bilinear":
        probe = CroppedProbe(probe, resize, mode)
    return probe


def processor_geometry(config: dict | None, input_side: int) -> tuple[int, str]:
    """(side the processor resizes to before its centre crop, interpolation) for ``config``.

    ConvNeXt resizes the shortest edge to ``shortest_edge / crop_pct`` below 384 px, then crops
    ``shortest_edge``; processors with ``do_center_crop`` resize to ``size`` then crop
    ``crop_size``; the others resize straight to the input side (returned as is).
    """
    if not config:
        return int(input_side), "bilinear"
    mode = _RESAMPLE_MODES.get(int(config.get("resample") or 2), "bilinear")
    size = config.get("size") or {}
    resize = int(input_side)
    if config.get("do_resize", True) is False:
        return resize, mode
    if isinstance(size, dict) and size.get("shortest_edge") and config.get("crop_pct"):
        edge = int(size["shortest_edge"])
        if edge < 384:
            resize = int(edge / float(config["crop_pct"]))
    elif config.get("do_center_crop") and config.get("crop_size"):
        resize = side_in_pixels(size, input_side)
    return max(resize, int(input_side)), mode
