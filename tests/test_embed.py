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


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_probe_forward_is_batch_independent_and_float16(model_and_images, dtype):
    model, images = model_and_images
    one, logits = probe_forward(model, images, batch_size=300, dtype=dtype)
    many, _ = probe_forward(model, images, batch_size=7, dtype=dtype)
    assert one.dtype == np.float16 and one.shape == (300, 128) and logits.shape == (300, 10)
    if dtype is None:
        np.testing.assert_allclose(one.astype(np.float32), many.astype(np.float32), atol=2e-3)
    else:
        # bf16 keeps 8 bits of mantissa, and a CPU with AMX accumulates its tiles in an order
        # that depends on the batch size: measured on an AMX Xeon, values differ by up to
        # 0.016 (an ulp or two) and the worst row's cosine is 1 - 1.3e-5. A row swapped or
        # taken from another batch scores far below the bound.
        a, b = one.astype(np.float64), many.astype(np.float64)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() >= 1 - 1e-4
        np.testing.assert_allclose(a, b, atol=0.05)
    assert model.training  # restored after the probe


def test_devices_and_precisions():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_precision("fp32", torch.device("cpu"), inference=True) is None
    assert resolve_precision("bf16", torch.device("cpu"), inference=False) is torch.bfloat16
    assert resolve_precision("auto", torch.device("cpu"), inference=False) is None  # training stays fp32 on CPUs
    if not torch.cuda.is_available():
        with pytest.raises(FtvizError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("native_bf16", [True, False], ids=["cpu-with-bf16", "cpu-without-bf16"])
def test_auto_precision_on_both_kinds_of_cpu(monkeypatch, native_bf16):
    """Precision "auto" embeds in bf16 only on CPUs that do bf16 natively and never trains in
    it on a CPU; both answers are checked whatever this machine's CPU is (its flag is replaced)."""
    import ftviz.embed

    monkeypatch.setattr(ftviz.embed, "cpu_has_fast_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, inference=True) is (torch.bfloat16 if native_bf16 else None)
    assert resolve_precision("auto", cpu, inference=False) is None
    assert resolve_precision("fp32", cpu, inference=True) is None
    assert resolve_precision("bf16", cpu, inference=True) is torch.bfloat16


def test_finite_embeddings_beyond_float16_are_one_line_not_divergence():
    """float16 overflow of large finite embeddings is named as such (it used to read "training
    diverged", which is what a NaN means)."""
    import torch

    from ftviz.embed import _as_float16
    from ftviz.errors import FtvizError

    assert _as_float16(torch.tensor([1.0, -65504.0]), "embedding").dtype == torch.float16
    with pytest.raises(FtvizError, match="beyond float16's range") as raised:
        _as_float16(torch.tensor([1.0, 1e6]), "embedding")
    assert "1e+06" in str(raised.value) and "\n" not in str(raised.value)
    # a NaN is left for the recorder's "not finite" check
    assert torch.isnan(_as_float16(torch.tensor([float("nan")]), "logits").float()).all()
