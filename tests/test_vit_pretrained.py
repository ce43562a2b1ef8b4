"""Pretrained ViTs by folder or hub id: the checkpoint's own preprocessing, a fresh head, the
match with ViTImageProcessor, and one-line errors for what cannot be loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tests.conftest import tiny_config

from ftviz.errors import FtvizError
from ftviz.models import create_model, list_models
from ftviz.models.base import ProbeModel

MEAN, STD, SIZE = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3), 48


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory):
    """A tiny ViT with a 3-class head and a non-default ViTImageProcessor, saved like any hub model."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    model = ViTForImageClassification(config)
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}, image_mean=list(MEAN), image_std=list(STD)).save_pretrained(folder)
    return folder, model


def grey_levels(a: torch.Tensor, b: torch.Tensor, std) -> torch.Tensor:
    """|a - b| in normalised units, converted back to 0..255 pixel levels per channel."""
    return (a - b).abs() * torch.tensor(std).view(1, 3, 1, 1) * 255


def cifar_images(n: int = 6) -> np.ndarray:
    from ftviz.data import make_synthetic

    return make_synthetic(n, 3, 32, seed=1).images


def test_registry_names():
    assert {"vit", "vit_tiny", "vit_base_patch16_224"} <= set(list_models())


@pytest.mark.parametrize("name", ["vit", "vit_tiny", "vit_base_patch16_224"])
def test_local_folder_by_name(saved_vit, name):
    folder, saved = saved_vit
    torch.manual_seed(1)
    probe = create_model(name, num_classes=10, image_size=16, pretrained=str(folder))
    assert probe.image_size == SIZE and probe.embedding_dim == 32 and probe.num_classes == 10
    np.testing.assert_allclose(probe.pixel_mean.flatten().numpy(), MEAN, rtol=1e-6)
    np.testing.assert_allclose(probe.pixel_std.flatten().numpy(), STD, rtol=1e-6)
    loaded, original = probe.hf_model.state_dict(), saved.state_dict()
    backbone = [k for k in original if not k.startswith("classifier")]
    assert backbone and all(torch.equal(loaded[k], original[k]) for k in backbone)
    assert loaded["classifier.weight"].shape == (10, 32)  # fresh head, sized for the dataset
    assert loaded["classifier.bias"].abs().max() == 0 and 0 < loaded["classifier.weight"].std() < 0.05


def test_fresh_head_even_when_sizes_match(saved_vit):
    folder, saved = saved_vit
    probe = create_model("vit", num_classes=3, pretrained=str(folder))
    assert not torch.equal(probe.hf_model.classifier.weight, saved.classifier.weight)


def test_checkpoint_preprocessing_is_applied(saved_vit):
    """ftviz's on-device preprocessing equals ViTImageProcessor with the saved settings
    (resize 32 -> 48 px, then the saved mean and std), to within one grey level."""
    from transformers import AutoImageProcessor

    folder, _ = saved_vit
    probe = create_model("vit", num_classes=10, pretrained=str(folder))
    images = cifar_images()
    reference = AutoImageProcessor.from_pretrained(folder)(list(images), return_tensors="pt")["pixel_values"]
    ours = probe.preprocess(torch.from_numpy(images))
    assert ours.shape == reference.shape == (len(images), 3, SIZE, SIZE)
    assert grey_levels(ours, reference, STD).max() <= 1.0 + 1e-3  # float32 rounding of the levels
    # a wrong mean would be far off: the check above is sensitive to the settings
    default = ProbeModel(image_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3).preprocess(torch.from_numpy(images))
    assert (default - reference).abs().max() > 0.5


def test_matches_vit_image_processor_at_224():
    """The article's case: 32 px CIFAR images to 224 px, mean = std = 0.5, against
    ViTImageProcessor (PIL, bilinear). Measured: max 0.86 grey levels (PIL rounds to uint8
    after resizing and uses fixed-point weights), mean ~0.3."""
    from transformers import ViTImageProcessorPil

    images = cifar_images(4)
    reference = ViTImageProcessorPil()(list(images), return_tensors="pt")["pixel_values"]
    ours = ProbeModel(image_size=224, mean=(0.5,) * 3, std=(0.5,) * 3).preprocess(torch.from_numpy(images))
    levels = grey_levels(ours, reference, (0.5,) * 3)
    assert levels.max() <= 1.0 + 1e-3 and levels.mean() < 0.5


def test_save_pretrained_round_trip(saved_vit, tmp_path):
    folder, _ = saved_vit
    probe = create_model("vit", num_classes=4, pretrained=str(folder))
    probe.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": SIZE, "width": SIZE}
    again = create_model("vit", num_classes=4, pretrained=str(tmp_path / "again"))
    assert again.image_size == SIZE and torch.allclose(again.pixel_std, probe.pixel_std)


def test_run_with_pretrained_folder(saved_vit, tmp_path):
    from ftviz.pipeline import run_experiment

    folder, _ = saved_vit
    config = tiny_config(tmp_path, name="pre", model={"name": "vit", "pretrained": str(folder), "options": {}},
                         train={"epochs": 1, "batch_size": 50, "snapshot_every": 2})
    run = run_experiment(config, progress=False, log=lambda *_: None)
    manifest = run.manifest()
    assert manifest["model"]["embedding_dim"] == 32 and manifest["model"]["pretrained"] == str(folder)
    assert run.snapshot_steps() == [0, 2, 4] and manifest["stages"]["render"]["status"] == "done"


def test_bad_pretrained_settings(saved_vit, tmp_path):
    folder, _ = saved_vit
    with pytest.raises(FtvizError, match="set model.pretrained"):
        create_model("vit", num_classes=10)
    with pytest.raises(FtvizError, match="cannot change a pretrained ViT"):
        create_model("vit_tiny", num_classes=10, pretrained=str(folder), hidden_size=64)
    with pytest.raises(FtvizError, match="no such folder; set model.pretrained"):
        create_model("vit", num_classes=10, pretrained=str(tmp_path / "missing" / "vit"))
    (tmp_path / "swin").mkdir()
    (tmp_path / "swin" / "config.json").write_text(json.dumps({"model_type": "swin"}))
    with pytest.raises(FtvizError, match="'swin' checkpoint, not a ViT"):
        create_model("vit", num_classes=10, pretrained=str(tmp_path / "swin"))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(FtvizError) as error:
        create_model("vit", num_classes=10, pretrained=str(tmp_path / "noweights"))
    assert "cannot load a model from" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_hub_model_offline_with_empty_cache_is_one_line(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ftviz.cli", "run", "-q", "--set", "data.dataset=synthetic",
         "--set", "model.name=vit_base_patch16_224", "--set", f"out_dir={tmp_path / 'runs'}"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ftviz: error: 'google/vit-base-patch16-224-in21k' is not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE" in lines[0] and "model.pretrained" in lines[0]
    assert not any((tmp_path / "runs").glob("*/snapshots"))


def test_processor_settings_variants():
    from ftviz.models.hub import processor_settings

    assert processor_settings(None, default_size=96) == processor_settings({}, default_size=96)
    assert processor_settings(None, default_size=96).size == 96
    shortest = processor_settings({"size": {"shortest_edge": 160}, "image_mean": 0.4, "image_std": [0.2] * 3},
                                  default_size=224)
    assert (shortest.size, shortest.mean, shortest.std) == (160, (0.4,) * 3, (0.2,) * 3)
    cropped = processor_settings({"size": {"shortest_edge": 256}, "do_center_crop": True,
                                  "crop_size": {"height": 224, "width": 224}}, default_size=32)
    assert cropped.size == 224  # resized straight to the crop size
    plain = processor_settings({"do_normalize": False, "do_resize": False, "size": 500}, default_size=64)
    assert (plain.size, plain.mean, plain.std) == (64, (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(FtvizError, match="supports only 1/255"):
        processor_settings({"do_rescale": False}, default_size=32)
