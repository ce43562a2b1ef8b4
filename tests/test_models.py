"""Every registered model builds, runs and gives embeddings of its documented shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ftviz.errors import FtvizError
from ftviz.models import create_model, list_models

NUM_CLASSES = 3
IMAGE_SIZE = 16


def _images(batch: int, size: int = IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), generator=generator, dtype=torch.uint8)


def test_registry_lists_every_family():
    names = list_models()
    assert {"vit_tiny", "swin_tiny_digits", "swin_tiny_patch4_window7_224", "ddpm_tiny"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_embeds(name):
    """Random weights for all (pretrained="none" is the offline switch of hub defaults)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, pretrained="none").eval()
    assert model.num_classes == NUM_CLASSES
    pixels = model.preprocess(_images(2))
    assert pixels.shape == (2, 3, model.image_size, model.image_size)
    with torch.inference_mode():
        embedding, logits = model.embed(pixels)
    assert embedding.shape == (2, model.embedding_dim)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(embedding).all() and torch.isfinite(logits).all()
    # Two different images give two different embeddings: the network reads its input.
    assert not torch.allclose(embedding[0], embedding[1])
    if model.image_size <= 64:  # the 224 px hub architectures are only run forward here
        model.train()
        loss = model.training_loss(pixels, torch.tensor([0, 2]))
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(FtvizError, match="unknown model 'swin_huge'.*swin_tiny_digits"):
        create_model("swin_huge", num_classes=10)


@pytest.mark.parametrize("size, window", [(16, 2), (32, 4), (64, 4)])
def test_swin_digits_shapes(size, window):
    model = create_model("swin_tiny_digits", num_classes=10, image_size=size)
    assert model.embedding_dim == 128
    assert model.hf_model.config.window_size == window
    assert model.image_size == size


def test_swin_embedding_is_the_pooled_output_the_head_reads():
    torch.manual_seed(0)
    model = create_model("swin_tiny_digits", num_classes=4, image_size=16).eval()
    pixels = model.preprocess(_images(3))
    with torch.inference_mode():
        embedding, logits = model.embed(pixels)
        reference = model.hf_model(pixel_values=pixels)
        pooled = model.hf_model.swin(pixel_values=pixels).pooler_output
    torch.testing.assert_close(logits, reference.logits)
    torch.testing.assert_close(embedding, pooled)


def test_swin_window_larger_than_last_stage_is_refused():
    with pytest.raises(FtvizError, match="window_size <= 2"):
        create_model("swin_tiny_digits", num_classes=10, image_size=16, window_size=4)
    with pytest.raises(FtvizError, match="bad Swin option"):
        create_model("swin_tiny_digits", num_classes=10, image_size=32, not_an_option=[1])


def test_swin_loads_a_local_checkpoint_with_its_preprocessing(tmp_path):
    """The pretrained path (as for microsoft/swin-tiny-...): a folder with weights and processor config."""
    torch.manual_seed(0)
    source = create_model("swin_tiny_digits", num_classes=5, image_size=16)
    source.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "size": {"height": 16, "width": 16}, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }))
    loaded = create_model("swin_tiny_patch4_window7_224", num_classes=3, pretrained=str(tmp_path))
    assert loaded.image_size == 16 and loaded.num_classes == 3
    np.testing.assert_allclose(loaded.pixel_mean.flatten().numpy(), [0.485, 0.456, 0.406], rtol=1e-6)
    # The backbone is the saved one; only the head was replaced for 3 classes.
    torch.testing.assert_close(
        loaded.hf_model.swin.embeddings.patch_embeddings.projection.weight,
        source.hf_model.swin.embeddings.patch_embeddings.projection.weight,
    )
    with pytest.raises(FtvizError, match="cannot change a pretrained Swin"):
        create_model("swin_tiny_digits", num_classes=3, pretrained=str(tmp_path), embed_dim=16)


def test_swin_missing_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FtvizError, match="cannot load"):
        create_model("swin_tiny_digits", num_classes=3, pretrained=str(tmp_path / "absent"))


# ---- pretrained checkpoints: one loader for every transformers family ------------------------
PRETRAINED = {  # family: (registered name that loads a checkpoint, tiny random variant to save, its options)
    "ViT": ("vit", "vit_tiny", dict(patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64)),
    "Swin": ("swin_tiny_patch4_window7_224", "swin_tiny_digits", {}),
}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize("family", sorted(PRETRAINED))
def test_pretrained_families_load_alike(family, tmp_path):
    """A float16 checkpoint whose head already has the right size: every family loads it in
    float32, keeps its backbone, starts from a fresh head and applies its processor settings."""
    loader, variant, options = PRETRAINED[family]
    torch.manual_seed(0)
    saved = create_model(variant, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, pretrained="none", **options)
    saved.hf_model.half().save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
    }))
    loaded = create_model(loader, num_classes=NUM_CLASSES, pretrained=str(tmp_path))
    state, original = loaded.hf_model.state_dict(), saved.hf_model.state_dict()
    assert {tensor.dtype for tensor in state.values() if tensor.is_floating_point()} == {torch.float32}
    backbone = [key for key in original if not key.startswith("classifier") and original[key].is_floating_point()]
    assert backbone and all(torch.equal(state[key], original[key].float()) for key in backbone)
    # a fresh head although the saved one had the right size: transformers' init, zero bias
    assert not torch.allclose(state["classifier.weight"], original["classifier.weight"].float(), atol=1e-3)
    assert state["classifier.bias"].abs().max() == 0 and 0 < state["classifier.weight"].std() < 0.05
    np.testing.assert_allclose(loaded.pixel_std.flatten().numpy(), IMAGENET_STD, rtol=1e-6)
    assert (loaded.image_size, loaded.num_classes) == (IMAGE_SIZE, NUM_CLASSES)
    # saved again, the folder reloads with the settings it ran with
    loaded.save_pretrained(tmp_path / "again")
    again = create_model(loader, num_classes=NUM_CLASSES, pretrained=str(tmp_path / "again"))
    np.testing.assert_allclose(again.pixel_mean.flatten().numpy(), IMAGENET_MEAN, rtol=1e-6)


def test_a_checkpoint_of_another_family_is_refused(tmp_path):
    torch.manual_seed(0)
    create_model("swin_tiny_digits", num_classes=3, image_size=16).save_pretrained(tmp_path / "swin")
    create_model("vit_tiny", num_classes=3, image_size=16, **PRETRAINED["ViT"][2]).save_pretrained(tmp_path / "vit")
    for loader, other, message in [("vit", "swin", "'swin' checkpoint, not a ViT"),
                                   ("swin_tiny_patch4_window7_224", "vit", "'vit' checkpoint, not a Swin")]:
        with pytest.raises(FtvizError, match=message) as raised:
            create_model(loader, num_classes=3, pretrained=str(tmp_path / other))
        assert "\n" not in str(raised.value)


def test_hub_defaults_offline_are_one_line_naming_the_hub(tmp_path):
    """Each family's hub default with an empty cache and HF_HUB_OFFLINE=1 (a fresh process, as
    the hub libraries read the variable at import): the same one-line error for every family."""
    import os
    import subprocess
    import sys

    script = (
        "from ftviz.errors import FtvizError\n"
        "from ftviz.models import create_model\n"
        "for name in ('vit_base_patch16_224', 'swin_tiny_patch4_window7_224'):\n"
        "    try:\n"
        "        create_model(name, num_classes=3)\n"
        "    except FtvizError as error:\n"
        "        print(error)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, result.stdout
    for line, hub_id in zip(lines, ("google/vit-base-patch16-224-in21k", "microsoft/swin-tiny-patch4-window7-224")):
        assert line.startswith(f"'{hub_id}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
        assert line.endswith("or set model.pretrained to a local folder")
