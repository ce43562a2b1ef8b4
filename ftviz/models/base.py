"""The interface every ftviz model implements, and the on-device image preprocessing.

Images travel as uint8 (B, H, W, 3) tensors, already on the model's device; resizing and
normalisation happen there too, so the CPU never becomes the bottleneck on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProbeModel(nn.Module):
    """A model ftviz can train and probe.

    Attributes
    ----------
    image_size : side in pixels the network expects (inputs are resized to it).
    mean, std : per-channel normalisation applied after scaling pixels to [0, 1].
    num_classes : C, the width of the logits.
    embedding_dim : D, the width of the embedding.
    """

    image_size: int
    num_classes: int
    embedding_dim: int

    def __init__(self, *, image_size: int, mean, std):
        super().__init__()
        self.image_size = int(image_size)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float32 (B, 3, image_size, image_size)."""
        pixels = images.permute(0, 3, 1, 2).float().div_(255.0)
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        return (pixels - self.pixel_mean) / self.pixel_std

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (embedding (B, D), logits (B, C)) for preprocessed images."""
        raise NotImplementedError

    def training_loss(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one batch; the default is cross-entropy on the logits."""
        _, logits = self.embed(pixel_values)
        return F.cross_entropy(logits.float(), labels)

    def save_pretrained(self, directory) -> None:
        """Write the weights in the family's own format (used for weights/ on request)."""
        raise NotImplementedError
