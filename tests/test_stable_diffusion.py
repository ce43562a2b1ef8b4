"""Stable Diffusion from diffusers' parts: loading a folder, UNet-only training, the tiny VAE's
phase, the embedding, generated samples, the offline tokenizer and one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from ftviz.errors import FtvizError
from ftviz.models import create_model
from ftviz.models.stable_diffusion import PARTS, make_tokenizer
from tests.conftest import random_pixels

# Two levels everywhere, 8 px images (4x4 latents): a training step of a few milliseconds.
TINY = {"vae_channels": [8, 16], "unet_channels": [16, 32], "text_width": 32, "resolution": 8}
CLASS_NAMES = ["cat", "dog", "ship"]


def _tiny(**options):
    torch.manual_seed(0)
    return create_model("sd_tiny", num_classes=3, image_size=8, **{**TINY, **options})


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A diffusers-format Stable Diffusion folder (vae, unet, text_encoder, tokenizer, scheduler),
    written by save_pretrained, with a latent scale of 0.5 in the VAE's config."""
    model = _tiny(class_names=CLASS_NAMES, vae_steps=0)
    model.latent_scale.fill_(0.5)
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    model.save_pretrained(folder)
    return folder


def _train(model, steps=3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # all parameters, as ftviz's loop does
    model.train()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for step in range(steps):
        model.training_loss(random_pixels(model, seed=step), labels).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_a_folder_loads_by_path_and_trains_the_unet_only(sd_folder, tmp_path):
    assert sorted(p.name for p in sd_folder.iterdir() if p.is_dir()) == sorted(PARTS)
    model = create_model("stable_diffusion", num_classes=3, image_size=32, pretrained=str(sd_folder))
    assert model.prompts == ["a photo of a cat", "a photo of a dog", "a photo of a ship"]  # saved with it
    assert float(model.latent_scale) == 0.5 and model.image_size == 8  # the checkpoint's own resolution
    assert model.manifest_info()["components"] == {
        "vae": "AutoencoderKL", "unet": "UNet2DConditionModel", "text_encoder": "CLIPTextModel",
        "tokenizer": "CLIPTokenizer", "noise_scheduler": "DDPMScheduler", "sample_scheduler": "DDIMScheduler"}
    frozen = {name: tensor.clone() for name, tensor in model.state_dict().items()
              if name.startswith(("vae.", "text_encoder."))}
    unet_before = {name: tensor.clone() for name, tensor in model.unet.state_dict().items()}
    _train(model)
    assert not model.vae.training and not model.text_encoder.training and model.unet.training
    assert not any(p.requires_grad for p in [*model.vae.parameters(), *model.text_encoder.parameters()])
    after = model.state_dict()
    for name, tensor in frozen.items():
        assert torch.equal(after[name], tensor), f"{name} changed"
    changed = [name for name, tensor in model.unet.state_dict().items() if not torch.equal(tensor, unet_before[name])]
    assert len(changed) > 0.9 * len(unet_before)

    model.eval()
    with torch.inference_mode():
        embedding, logits = model.embed(random_pixels(model, batch=5))
    assert embedding.shape == (5, 32) and model.embedding_dim == 32 and logits.shape == (5, 3)
    assert torch.isfinite(embedding).all() and not torch.allclose(embedding[0], embedding[1])

    class Run:
        path = tmp_path

    png = model.on_snapshot(Run, 7)
    assert png == tmp_path / "generated" / "step-0000007.png" and png.is_file()
    with np.load(tmp_path / "generated" / "step-0000007.npz") as saved:
        images, labels = saved["images"], saved["labels"]
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8  # 2 per class, row-major
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1, 2])
    assert images.std() > 0
    assert not list(tmp_path.glob("generated/.*.tmp"))


def test_embedding_is_the_pooled_mid_block_of_the_clean_latent_at_t0_with_the_empty_prompt():
    model = _tiny(vae_steps=0).eval()
    pixels = random_pixels(model)
    captured = {}
    handle = model.unet.mid_block.register_forward_hook(lambda m, i, o: captured.update(mid=o))
    with torch.inference_mode():
        latents = model.vae.encode(pixels).latent_dist.mean * model.latent_scale
        empty = model.prompt_states()[-1:].expand(len(pixels), -1, -1)
        model.unet(latents, 0, encoder_hidden_states=empty)  # a full pass, no early exit
        handle.remove()
        embedding, _ = model.embed(pixels)
    torch.testing.assert_close(embedding, captured["mid"].mean(dim=(2, 3)))
    ids = model.tokenizer("").input_ids
    assert model.prompt_ids[-1, : len(ids)].tolist() == ids  # the empty prompt: start, end, then pads


def test_the_tiny_vae_trains_first_then_freezes_with_its_latent_scale():
    model = _tiny(vae_steps=2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for step in range(3):
        model.zero_grad(set_to_none=True)
        model.training_loss(random_pixels(model, seed=step), labels).backward()
        vae_grads = [p.grad for p in model.vae.parameters() if p.grad is not None]
        unet_grads = [p.grad for p in model.unet.parameters() if p.grad is not None]
        if step < 2:  # the VAE's phase: its loss, no gradient for the UNet
            assert vae_grads and not unet_grads
        else:
            assert unet_grads and not vae_grads and not model.vae.encoder.conv_in.weight.requires_grad
    assert int(model.vae_steps_done) == 3
    # The scale is 1 / std of the posterior means of the batch that ended the phase (the
    # latents the UNet trains on; the VAE is unchanged since).
    with torch.no_grad():
        latents = model.vae.encode(random_pixels(model, seed=2)).latent_dist.mean
    assert float(model.latent_scale) == pytest.approx(1.0 / latents.std().item(), rel=1e-5)
    assert float(model.latent_scale) != 1.0
    # A resumed run keeps the phase's progress and the scale (buffers in the state dict).
    resumed = _tiny(vae_steps=2)
    resumed.load_state_dict(model.state_dict())
    assert not resumed.training_vae and float(resumed.latent_scale) == float(model.latent_scale)
    resumed.training_loss(random_pixels(resumed), labels)
    assert float(resumed.latent_scale) == float(model.latent_scale)


def test_the_offline_tokenizer_saves_as_clip_and_keeps_prompt_words_whole(tmp_path):
    from transformers import CLIPTokenizer

    prompts = ["a photo of a airplane", "a photo of a 7"]
    tokenizer = make_tokenizer(prompts)
    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again.convert_ids_to_tokens(again(prompts[0]).input_ids) == [
        "<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "airplane</w>", "<|endoftext|>"]
    assert again(prompts[1]).input_ids == tokenizer(prompts[1]).input_ids
    assert again.model_max_length == 7  # the longest prompt
    assert len(again("zebra").input_ids) > 3  # unknown words fall back to byte symbols


def _one_line_error(call) -> str:
    with pytest.raises(FtvizError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("part", PARTS)
def test_a_folder_missing_a_part_is_one_line_naming_it(sd_folder, tmp_path, part):
    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / part)
    message = _one_line_error(lambda: create_model("stable_diffusion", num_classes=3, pretrained=str(broken)))
    assert f"no {part} subfolder" in message


@pytest.mark.parametrize("template, message", [
    ("", "prompt_template is empty"),
    ("   ", "prompt_template is empty"),
    ("a photo of a digit", 'has no "{class name}"'),
])
def test_bad_prompt_templates_are_one_line(template, message):
    assert message in _one_line_error(lambda: _tiny(prompt_template=template))


def test_options_that_change_a_pretrained_architecture_are_refused(sd_folder):
    message = _one_line_error(lambda: create_model("stable_diffusion", num_classes=3, pretrained=str(sd_folder),
                                                   unet_channels=[8, 16]))
    assert "cannot change a pretrained Stable Diffusion" in message


def test_a_hub_name_while_offline_is_one_line_naming_the_hub(tmp_path):
    code = ("from ftviz.errors import FtvizError\n"
            "from ftviz.models import create_model\n"
            "try:\n"
            "    create_model('stable_diffusion', num_classes=3,\n"
            "                 pretrained='stable-diffusion-v1-5/stable-diffusion-v1-5')\n"
            "except FtvizError as error:\n"
            "    print(error)\n"
            "    raise SystemExit(2)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "'stable-diffusion-v1-5/stable-diffusion-v1-5'" in lines[0] and "Hugging Face" in lines[0]
    assert "HF_HUB_OFFLINE" in lines[0]
