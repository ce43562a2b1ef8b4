"""The class-conditional DDPM: embedding, probe, loss, sampling, and a run end to end."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ftviz.errors import FtvizError
from ftviz.models import create_model
from tests.conftest import random_pixels, tiny_config

# Two levels (16, 32 channels) at 16 px: a forward pass of a few milliseconds.
TINY_UNET = {"block_out_channels": [16, 32]}


def _model(**options):
    torch.manual_seed(0)
    return create_model("ddpm_tiny", num_classes=4, image_size=16, **{**TINY_UNET, **options})


def test_embedding_is_the_pooled_mid_block_of_the_clean_image_at_t0_with_the_null_class():
    model = _model().eval()
    pixels = random_pixels(model)
    captured = {}
    handle = model.unet.mid_block.register_forward_hook(lambda m, i, o: captured.update(mid=o))
    with torch.inference_mode():
        null = torch.full((len(pixels),), model.num_classes)  # the null class is index C
        model.unet(pixels, 0, class_labels=null)  # a full forward pass, no early exit
        handle.remove()
        embedding, logits = model.embed(pixels)
    assert embedding.shape == (6, 32) and model.embedding_dim == 32
    torch.testing.assert_close(embedding, captured["mid"].mean(dim=(2, 3)))
    assert logits.shape == (6, 4)


def test_training_loss_is_the_denoising_mse_and_the_probe_leaves_the_unet_alone():
    with_probe = _model()
    without = copy.deepcopy(with_probe)
    without.probe_head = None
    pixels, labels = random_pixels(with_probe), torch.tensor([0, 1, 2, 3, 0, 1])
    losses = []
    for model in (with_probe, without):
        torch.manual_seed(7)  # the same noise, timesteps and label dropout for both
        loss = model.training_loss(pixels, labels)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # the value is the MSE alone
    for (name, a), (_, b) in zip(with_probe.unet.named_parameters(), without.unet.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=f"the probe changed the UNet's gradient of {name}")
    head = with_probe.probe_head.linear
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_the_probe_learns_the_labels_from_the_features():
    """Trained alone on a frozen random UNet, the probe separates easy synthetic classes."""
    from ftviz.data import make_synthetic

    data = make_synthetic(120, num_classes=4, image_size=16, seed=1)
    model = _model()
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    optimizer = torch.optim.AdamW(model.probe_head.parameters(), lr=1e-3)
    model.train()
    for step in range(30):
        batch = torch.arange(step * 24, step * 24 + 24) % len(labels)
        model.training_loss(model.preprocess(images[batch]), labels[batch]).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.inference_mode():
        _, logits = model.embed(model.preprocess(images))
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9


def test_probe_head_false_has_no_logits():
    model = _model(probe_head=False)
    features = model.features(random_pixels(model))
    assert features.shape == (6, 32)
    with pytest.raises(FtvizError, match="probe_head = false.*no classifier"):
        model.embed(random_pixels(model))
    loss = model.training_loss(random_pixels(model), torch.zeros(6, dtype=torch.long))
    assert torch.isfinite(loss)


def test_a_run_without_probe_head_stops_with_a_clear_error(tmp_path):
    from ftviz.pipeline import run_experiment

    config = tiny_config(tmp_path, name="noprobe",
                         model={"name": "ddpm_tiny", "options": {**TINY_UNET, "probe_head": False}})
    with pytest.raises(FtvizError, match="no classifier"):
        run_experiment(config, progress=False, log=lambda *_: None)


@pytest.mark.parametrize("options, message", [
    ({"embed_timestep": 1000}, "embed_timestep"),
    ({"uncond_prob": 1.0}, "uncond_prob"),
    ({"sample_size": 17}, "divisible by 2"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"sample_steps": 3}, "sample_steps must divide"),
    ({"not_a_unet_option": 3}, "bad diffusion option"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(FtvizError, match=message):
        _model(**options)


def test_sampling_is_deterministic_and_the_grid_has_one_column_per_class(tmp_path):
    model = _model(samples_per_class=3, sample_steps=4)
    labels = torch.tensor([0, 1, 2, 3])
    first, again, other = model.sample(labels), model.sample(labels), model.sample(labels, seed=1)
    assert first.shape == (4, 3, 16, 16)
    assert first.min() >= -1 and first.max() <= 1
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    assert model.training  # sampling leaves the mode as it found it

    class Run:
        path = tmp_path

    path = model.on_snapshot(Run, 12)
    assert path == tmp_path / "generated" / "step-0000012.png"
    from PIL import Image

    grid = np.asarray(Image.open(path))
    tile, gap = 32, 2  # 16 px tiles are enlarged twice
    assert grid.shape == (3 * (tile + gap) + gap, 4 * (tile + gap) + gap, 3)
    assert not list(tmp_path.glob("generated/.*.tmp"))
    # The samples themselves, for `ftviz compare`: uint8 at the UNet's resolution, row-major
    # (sample i is of class i % 4), the same pixels as the grid's tiles.
    with np.load(tmp_path / "generated" / "step-0000012.npz") as saved:
        images, labels = saved["images"], saved["labels"]
        assert float(saved["guidance_scale"]) == 1.0 and int(saved["sample_steps"]) == 4
    assert images.shape == (12, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.tile(np.arange(4), 3))
    expected = ((model.sample(torch.from_numpy(labels)) + 1.0) * 127.5).round().to(torch.uint8)
    np.testing.assert_array_equal(images, expected.permute(0, 2, 3, 1).numpy())
    row, column = 2, 3  # sample 11: the bottom-right tile, enlarged twice
    top, left = gap + row * (tile + gap), gap + column * (tile + gap)
    np.testing.assert_array_equal(grid[top : top + tile : 2, left : left + tile : 2], images[11])


def test_classifier_free_guidance_mixes_the_conditional_and_unconditional_predictions():
    """Scale 1 is the conditional model, 0 the unconditional (null class) one, and any scale
    steps along uncond + scale * (cond - uncond), from the last training timestep down."""
    model = _model(sample_steps=4)
    labels = torch.tensor([0, 1, 2, 3])
    null = torch.full_like(labels, model.num_classes)
    torch.testing.assert_close(model.sample(labels, guidance_scale=1.0), model.sample(labels))
    torch.testing.assert_close(model.sample(labels, guidance_scale=0.0), model.sample(null, guidance_scale=1.0),
                               atol=1e-5, rtol=1e-5)
    guided = model.sample(labels, guidance_scale=3.0)
    assert not torch.allclose(guided, model.sample(labels), atol=1e-3)

    # The same loop written out with the guidance formula, recording the timesteps.
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.noise_scheduler.config, timestep_spacing="trailing")
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]  # starts where x_T is pure noise
    images = torch.randn((4, 3, 16, 16), generator=torch.Generator().manual_seed(model.sample_seed))
    model.eval()
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            conditional = model.unet(images, timestep, class_labels=labels).sample
            unconditional = model.unet(images, timestep, class_labels=null).sample
            noise = unconditional + 3.0 * (conditional - unconditional)
            images = scheduler.step(noise, timestep, images, eta=0.0).prev_sample
    torch.testing.assert_close(guided, images.clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_save_and_load_gives_the_same_embeddings_and_logits(tmp_path):
    model = _model()
    pixels = random_pixels(model)
    model.training_loss(pixels, torch.tensor([0, 1, 2, 3, 0, 1]))  # gives the probe its statistics
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = create_model("ddpm_tiny", num_classes=4, image_size=16, pretrained=str(tmp_path)).eval()
    with torch.inference_mode():
        expected, loaded_out = model.embed(pixels), loaded.embed(pixels)
    torch.testing.assert_close(loaded_out[0], expected[0])
    torch.testing.assert_close(loaded_out[1], expected[1])
    with pytest.raises(FtvizError, match="class embeddings"):
        create_model("ddpm_tiny", num_classes=7, image_size=16, pretrained=str(tmp_path))



class _RunsCode:
    """Pickles as a call to os.mkdir: loading it with weights_only=False makes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_load_refuses_a_probe_head_that_holds_code(tmp_path):
    """probe_head.pt is read with weights_only=True: a shared model folder whose head file
    carries a pickled call is refused with one line, and the call never runs."""
    model = _model()
    model.training_loss(random_pixels(model), torch.tensor([0, 1, 2, 3, 0, 1]))
    model.save_pretrained(tmp_path / "model")
    head = tmp_path / "model" / "probe_head.pt"
    saved = torch.load(head, weights_only=True)
    marker = tmp_path / "code-ran"
    torch.save({**saved, "extra": _RunsCode(marker)}, head)
    with pytest.raises(FtvizError, match=r"probe_head\.pt is damaged or holds objects") as error:
        create_model("ddpm_tiny", num_classes=4, image_size=16, pretrained=str(tmp_path / "model"))
    assert "\n" not in str(error.value)
    assert not marker.exists()
    torch.load(head, weights_only=False)  # the unsafe way does run it
    assert marker.is_dir()

@pytest.mark.slow
def test_diffusion_run_end_to_end(tmp_path):
    """train -> score -> project -> render, with a generated-sample grid at every snapshot."""
    from ftviz.pipeline import run_experiment

    config = tiny_config(tmp_path, name="ddpm", model={"name": "ddpm_tiny", "options": dict(TINY_UNET)})
    run = run_experiment(config, progress=False, log=lambda *_: None)
    manifest = run.manifest()
    assert all(manifest["stages"][stage]["status"] == "done" for stage in ("train", "score", "project", "render"))
    steps = run.snapshot_steps()
    assert steps == [0, 2, 4, 6, 8, 10, 12]
    generated = sorted(p.name for p in (run.path / "generated").glob("*.png"))
    assert generated == [f"step-{s:07d}.png" for s in steps]
    samples = sorted(p.name for p in (run.path / "generated").glob("*.npz"))
    assert samples == [f"step-{s:07d}.npz" for s in steps]
    embedding, logits = run.load_snapshot(steps[-1])
    assert embedding.shape == (200, 32) and logits.shape == (200, 10)
    assert manifest["model"]["embedding_dim"] == 32
    assert run.frames().shape == (len(steps), 200, 2)
    scores = run.scores()
    assert sorted(scores["step"].unique()) == steps
    metrics = run.metrics()
    train_loss = metrics[metrics["split"] == "train"]["loss"].to_numpy()
    assert train_loss[-3:].mean() < train_loss[:3].mean()  # the denoising MSE falls
    evals = metrics[metrics["split"] == "eval"]
    assert evals["true_accuracy"].iloc[-1] > 0.5  # the probe reads the classes (chance 0.1)
    assert (run.path / "animation.html").is_file()
