import numpy as np
import pytest
import torch

from ftviz.embed import probe_forward, resolve_device, resolve_precision
from ftviz.errors import FtvizError
from ftviz.models import create_model


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = create_model("vit_tiny", num_classes=10, image_size=32, patch_size=8)
    from ftviz.data import load_digits_images

    images = torch.from_numpy(load_digits_images(32).images[:300])
    return model, images


def test_bf16_snapshots_agree_with_fp32(model_and_images):
    """The precision "auto" may pick on a CPU with native bf16 must not change the picture."""
    model, images = model_and_images
    full, full_logits = probe_forward(model, images, dtype=None)
    half, half_logits = probe_forward(model, images, dtype=torch.bfloat16)
    a, b = full.astype(np.float64), half.astype(np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.999
    assert (full_logits.argmax(1) == half_logits.argmax(1)).mean() > 0.95


def test_probe_forward_is_batch_independent_and_float16(model_and_images):
    model, images = model_and_images
    one, logits = probe_forward(model, images, batch_size=300)
    many, _ = probe_forward(model, images, batch_size=7)
    assert one.dtype == np.float16 and one.shape == (300, 128) and logits.shape == (300, 10)
    np.testing.assert_allclose(one.astype(np.float32), many.astype(np.float32), atol=2e-3)
    assert model.training  # restored after the probe


def test_devices_and_precisions():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_precision("fp32", torch.device("cpu"), inference=True) is None
    assert resolve_precision("bf16", torch.device("cpu"), inference=False) is torch.bfloat16
    assert resolve_precision("auto", torch.device("cpu"), inference=False) is None  # training stays fp32 on CPUs
    if not torch.cuda.is_available():
        with pytest.raises(FtvizError, match="no CUDA GPU"):
            resolve_device("cuda")
