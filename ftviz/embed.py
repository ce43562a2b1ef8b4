"""Embeddings and logits of the probe set from a live model: devices, precision, batching.

Used in process by the training loop at every snapshot (no weights are reloaded), and by
checkpoint ingestion (:mod:`ftviz.ingest`) for runs trained elsewhere.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ftviz.errors import FtvizError
from ftviz.numerics import cpu_has_fast_bf16


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; errors for a GPU that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FtvizError(f"device {name!r} asked for but no CUDA GPU is visible; use train.device = \"cpu\"")
    return device


@functools.lru_cache(maxsize=1)
def resolve_precision(name: str, device: torch.device, *, inference: bool) -> torch.dtype | None:
    """The autocast dtype for ``name`` ("auto" | "fp32" | "bf16"), or None for plain fp32.

    "auto" is bf16 on a GPU; on a CPU it is bf16 only for inference on CPUs with native bf16
    (the snapshots agree with fp32 to cosine >= 0.999, see tests/test_embed.py), fp32 otherwise.
    """
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if inference and cpu_has_fast_bf16() else None


@torch.inference_mode()
def probe_forward(
    model,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and logits of all ``images``.

    Parameters
    ----------
    model : a :class:`ftviz.models.base.ProbeModel`, on its device.
    images : uint8 (N, H, W, 3), on the model's device.
    dtype : autocast dtype (torch.bfloat16) or None for fp32.

    Returns
    -------
    embedding : (N, D) float16; logits : (N, C) float16.
    """
    was_training = model.training
    model.eval()
    device = images.device
    embeddings, logits = [], []
    try:
        for start in range(0, len(images), batch_size):
            batch = model.preprocess(images[start : start + batch_size])
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                embedding, batch_logits = model.embed(batch)
            embeddings.append(_as_float16(embedding, "embedding"))
            logits.append(_as_float16(batch_logits, "logits"))
    finally:
        model.train(was_training)
    return torch.cat(embeddings).cpu().numpy(), torch.cat(logits).cpu().numpy()


FLOAT16_MAX = 65504.0


def _as_float16(values, what: str):
    """``values`` as float16, the snapshots' dtype; finite values float16 cannot hold are an error
    that says so (not "training diverged", which is what a NaN or inf in the model means)."""
    import torch

    finite = torch.isfinite(values)
    if bool(finite.all()) and bool((values.abs() > FLOAT16_MAX).any()):
        largest = float(values.abs().max())
        raise FtvizError(
            f"the probe {what} reach {largest:.3g}, beyond float16's range (65504) in which snapshots are "
            "stored: the model's outputs are unnormalised; lower the learning rate or add a normalisation "
            "(e.g. a final LayerNorm) before the embedding"
        )
    return values.to(torch.float16)
