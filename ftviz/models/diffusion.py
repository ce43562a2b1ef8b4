"""A class-conditional DDPM from ``diffusers``, probed like a classifier.

The network is a ``UNet2DModel`` with a class embedding (``num_class_embeds``); the noise
schedule is a separate ``DDPMScheduler`` for training and a ``DDIMScheduler`` for sampling, and
the denoising loop is written out in :meth:`ClassConditionalDDPM.sample` (the diffusers way:
model and scheduler apart, the loop in plain sight).

What ftviz reads from it
------------------------
embedding (B, D)
    The UNet's mid-block output for the *clean* image (no noise added) at timestep
    ``embed_timestep`` (default 0), with the *null class*, mean-pooled over space;
    D = the last entry of ``block_out_channels``. The null class (index ``num_classes``) is
    the unconditional model: training drops the label to it with probability
    ``uncond_prob``, as in classifier-free guidance. Embedding with the given label instead
    would write that label into the features (the class embedding is added at every block)
    and hide exactly the label errors ftviz is looking for.
logits (B, C)
    A linear probe (:class:`LinearProbe`) on those features, trained jointly with a
    cross-entropy term on the given labels. Its input is computed without gradients, so the
    probe cannot change the diffusion model: the UNet's gradients are those of the denoising
    loss alone (the train loop's global gradient-norm clip couples the two only through one
    common factor, to which Adam is insensitive; the probe's share of that norm is kept
    that of a plain linear layer). The features share a large offset that drifts while the
    UNet trains and vary little around it, so the probe standardises them: with the batch's
    statistics while training, and at a snapshot with the statistics of the last
    ``probe_reference`` training images recomputed at the current weights (a "precise
    BatchNorm"; BatchNorm's running averages lag the drift and gave chance-level logits).
    ``probe_gain`` multiplies the probe's outputs (its weights start divided by it): under
    Adam that is a learning-rate multiplier, so the linear head keeps up with the UNet (on
    digits, 168 steps at lr 1e-3: probe accuracy 0.76 with gain 10, 0.84 with 30, against
    0.92 for a logistic regression fitted to the final features). With
    ``probe_head=False`` there is no classifier, and :meth:`~ClassConditionalDDPM.embed`
    (hence training snapshots and Cleanlab's label scores) refuses to run.
loss
    :meth:`~ClassConditionalDDPM.training_loss` *returns the denoising MSE* (noise
    prediction at a uniformly random timestep, given label dropped to the null class with
    probability ``uncond_prob``), so the loss curve is the diffusion model's; the probe's
    cross-entropy adds gradient but no value (``(ce - ce.detach()) / probe_gain``). The eval
    loss logged at snapshots is the probe's cross-entropy.
generated samples
    :meth:`~ClassConditionalDDPM.on_snapshot` draws DDIM samples (``samples_per_class`` of
    each of the first ten classes, fixed seed, ``sample_steps`` steps, classifier-free
    guidance of scale ``guidance_scale``) and writes them to ``generated/step-XXXXXXX.npz``
    (uint8 images at the UNet's resolution and their conditioning classes; ``ftviz compare``
    reports the fraction a classifier run assigns to their class as "sample accuracy") and
    as a grid (one row per draw, one column per class) to ``generated/step-XXXXXXX.png``.

Variants: ``ddpm_tiny`` (three levels of widths 32/64/64, D = 64, for 8-32 px images on a
CPU; ``sample_size`` sets the UNet's resolution, inputs are resized to it on device).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ftviz.errors import FtvizError
from ftviz.models import register_model
from ftviz.models.base import ProbeModel

GRID_MAX_CLASSES = 10  # columns of the generated-sample grid: the first ten classes
MIN_TILE_PX = 32  # tiles smaller than this are enlarged (nearest neighbour) in the grid


class _MidBlockReached(Exception):
    """Raised by the mid-block hook to stop the forward pass once the embedding exists."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output


class LinearProbe(nn.Module):
    """Standardised features -> logits: ``gain * linear((features - mean) / std)``.

    ``gain`` scales the outputs and the initial weights down by the same factor, so the
    initial logits are those of a plain ``nn.Linear`` while Adam moves them ``gain`` times
    faster (Adam's step size per weight does not depend on the gradient's scale).
    """

    def __init__(self, dim: int, num_classes: int, *, gain: float = 30.0):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        self.gain = float(gain)
        with torch.no_grad():
            self.linear.weight.div_(self.gain)
            self.linear.bias.div_(self.gain)

    def forward(self, features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return self.gain * self.linear((features - mean) / std)


def _statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (1, D) of features (B, D), floored at 1e-6."""
    mean = features.mean(dim=0, keepdim=True)
    std = features.var(dim=0, unbiased=False, keepdim=True).add(1e-12).sqrt().clamp_min(1e-6)
    return mean, std


def mid_block_output(unet, sample: torch.Tensor, timestep: int, **conditioning) -> torch.Tensor:
    """The UNet's mid-block output for ``sample`` at ``timestep``, mean-pooled over space: (B, D).

    Only the down path and the mid block run: a forward hook on the mid block takes its
    output and stops the pass, since the up path (most of the cost) cannot change it.
    ``conditioning`` goes to the UNet as is (``class_labels=`` or ``encoder_hidden_states=``).
    """
    timesteps = torch.full((len(sample),), timestep, dtype=torch.long, device=sample.device)

    def stop_at_mid_block(module, inputs, output):
        raise _MidBlockReached(output)

    handle = unet.mid_block.register_forward_hook(stop_at_mid_block)
    try:
        unet(sample, timesteps, **conditioning)
    except _MidBlockReached as reached:
        mid = reached.output  # (B, D, h, w)
    else:  # pragma: no cover - the hook always fires
        raise RuntimeError("the UNet's mid block did not run")
    finally:
        handle.remove()
    return mid.float().mean(dim=(2, 3))


def sample_grid(tiles: np.ndarray, columns: int) -> np.ndarray:
    """uint8 (H, W, 3) grid of uint8 tiles (B, S, S, 3), row-major, ``columns`` wide, white gaps;
    tiles under MIN_TILE_PX are enlarged by whole factors."""
    factor = max(1, -(-MIN_TILE_PX // tiles.shape[1]))
    tiles = tiles.repeat(factor, axis=1).repeat(factor, axis=2)
    side, gap = tiles.shape[1], 2
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * (side + gap) + gap, columns * (side + gap) + gap, 3), 255, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = gap + row * (side + gap), gap + column * (side + gap)
        grid[top : top + side, left : left + side] = tile
    return grid


class ProbedDiffusion(ProbeModel):
    """What the diffusion families share: the linear probe's logits and statistics, and the
    generated samples of a snapshot.

    A subclass sets ``probe_head`` (a :class:`LinearProbe` or None), ``probe_reference``,
    ``num_classes``, ``samples_per_class``, ``guidance_scale``, ``sample_steps``, a
    ``pixel_mean`` buffer, ``_reference_images`` / ``_reference_statistics`` /
    ``_saved_statistics`` (None at first), and defines ``features(pixel_values)`` (B, D) and
    ``sample(class_labels)`` (B, 3, S, S) in [-1, 1].
    """

    family = "diffusion model"  # how error messages name it

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding (B, D), probe logits (B, C)) in one pass; needs the probe head."""
        if self.probe_head is None:
            raise FtvizError(
                f"this {self.family} was built with probe_head = false, so it has no classifier "
                "to give logits (needed for snapshots and label scores); set "
                "model.options.probe_head = true, or call .features() for embeddings alone"
            )
        features = self.features(pixel_values)
        mean, std = self.probe_statistics() if not self.training else _statistics(features)
        return features, self.probe_head(features, mean, std)

    def probe_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (1, D) that standardise the probe's input outside training.

        Computed from the features of the last ``probe_reference`` training images at the
        current weights, once per training step. Without training images (before the first
        step, or a model loaded from disk) the statistics saved with the model, else none
        (mean 0, std 1).
        """
        if self._reference_images is None:
            if self._saved_statistics is not None:
                return tuple(t.to(self.pixel_mean.device) for t in self._saved_statistics)
            zeros = torch.zeros(1, self.embedding_dim, device=self.pixel_mean.device)
            return zeros, torch.ones_like(zeros)
        if self._reference_statistics is None:
            with torch.no_grad():
                self._reference_statistics = _statistics(self.features(self._reference_images))
        return self._reference_statistics

    def _remember(self, pixel_values: torch.Tensor) -> None:
        """Keep the latest training images for :meth:`probe_statistics`; the weights are
        about to change, so the cached statistics are dropped."""
        images = pixel_values.detach()
        if self._reference_images is not None:
            images = torch.cat([images, self._reference_images])
        self._reference_images = images[: self.probe_reference]
        self._reference_statistics = None

    def generate(self) -> tuple[np.ndarray, np.ndarray]:
        """The snapshot's samples: uint8 images (B, S, S, 3) at the UNet's resolution and the
        classes they were conditioned on (B,), ``samples_per_class`` of each of the first ten
        classes, row-major (sample i has class i % 10), guided and seeded as configured."""
        columns = min(self.num_classes, GRID_MAX_CLASSES)
        labels = torch.arange(columns).repeat(self.samples_per_class)  # row-major: row r, class c
        images = self.sample(labels)
        tiles = ((images.float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return tiles.permute(0, 2, 3, 1).numpy(), labels.numpy()

    def sample_grid(self, tiles: np.ndarray | None = None) -> np.ndarray:
        """A uint8 (H, W, 3) grid of :meth:`generate`'s tiles: ``samples_per_class`` rows, one
        column per class (first ten)."""
        if tiles is None:
            tiles, _ = self.generate()
        return sample_grid(tiles, min(self.num_classes, GRID_MAX_CLASSES))

    def on_snapshot(self, run, step: int) -> Path:
        """Write the snapshot's samples to ``run/generated/step-XXXXXXX.npz`` (``images`` uint8
        (B, S, S, 3), ``labels`` (B,) the conditioning classes, ``guidance_scale``,
        ``sample_steps``: what ``ftviz compare`` classifies) and their grid to ``.png``, atomically.
        Returns the PNG's path."""
        from PIL import Image

        from ftviz.rundir import atomic_path, snapshot_name

        folder = Path(run.path) / "generated"
        images, labels = self.generate()
        with atomic_path(folder / snapshot_name(step)) as tmp:
            with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a name
                np.savez(handle, images=images, labels=labels.astype(np.int64),
                         guidance_scale=np.float32(self.guidance_scale), sample_steps=np.int64(self.sample_steps))
        path = folder / snapshot_name(step, ".png")
        with atomic_path(path) as tmp:
            Image.fromarray(self.sample_grid(images)).save(tmp, format="PNG")
        return path


class ClassConditionalDDPM(ProbedDiffusion):
    """A class-conditional UNet, its noise scheduler and an optional linear probe head.

    Parameters
    ----------
    unet : ``diffusers.UNet2DModel`` with ``num_class_embeds = num_classes + 1`` (the last
        class is the null class).
    noise_scheduler : ``diffusers.DDPMScheduler`` (training noise; sampling uses a DDIM
        scheduler made from its config).
    num_classes : C.
    probe_head : train a linear classifier on the embedding (needed for logits).
    probe_gain : learning-rate multiplier of the probe (see :class:`LinearProbe`).
    probe_reference : recent training images kept to standardise the probe's input at
        snapshots.
    embed_timestep : timestep given with the clean image for the embedding.
    uncond_prob : probability that a training label is replaced by the null class.
    sample_steps, samples_per_class, sample_seed : the generated samples of each snapshot.
    guidance_scale : classifier-free guidance at sampling time (1 = none; see :meth:`sample`).
    """

    def __init__(
        self,
        unet,
        noise_scheduler,
        *,
        num_classes: int,
        probe_head: bool = True,
        probe_gain: float = 30.0,
        probe_reference: int = 256,
        embed_timestep: int = 0,
        uncond_prob: float = 0.1,
        sample_steps: int = 10,
        samples_per_class: int = 2,
        sample_seed: int = 0,
        guidance_scale: float = 1.0,
    ):
        # Pixels go to [-1, 1], the range the DDPM scheduler clips its predictions to.
        super().__init__(image_size=unet.config.sample_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        num_train_timesteps = noise_scheduler.config.num_train_timesteps
        if unet.config.num_class_embeds != num_classes + 1:
            raise FtvizError(
                f"the UNet has {unet.config.num_class_embeds} class embeddings; a DDPM for "
                f"{num_classes} classes needs {num_classes + 1} (one null class)"
            )
        if not 0 <= embed_timestep < num_train_timesteps:
            raise FtvizError(f"model.options.embed_timestep must be in [0, {num_train_timesteps}), got {embed_timestep}")
        if not 0.0 <= uncond_prob < 1.0:
            raise FtvizError(f"model.options.uncond_prob must be in [0, 1), got {uncond_prob}")
        if probe_gain <= 0 or probe_reference < 2:
            raise FtvizError("model.options.probe_gain must be > 0 and probe_reference >= 2")
        if sample_steps < 1 or samples_per_class < 1:
            raise FtvizError("model.options.sample_steps and samples_per_class must be >= 1")
        if num_train_timesteps % sample_steps:
            # DDIMScheduler.step finds the previous timestep as t - T // steps, which is off
            # the "trailing" grid unless steps divides T (diffusers issue 12633).
            raise FtvizError(f"model.options.sample_steps must divide the {num_train_timesteps} training "
                             f"timesteps (e.g. 10, 20, 25, 50), got {sample_steps}")
        if guidance_scale < 0:
            raise FtvizError(f"model.options.guidance_scale must be >= 0 (1 = no guidance), got {guidance_scale}")
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.num_classes = num_classes
        self.null_class = num_classes
        self.embedding_dim = unet.config.block_out_channels[-1]
        self.probe_head = LinearProbe(self.embedding_dim, num_classes, gain=probe_gain) if probe_head else None
        self.probe_reference = int(probe_reference)
        self._reference_images: torch.Tensor | None = None  # recent training inputs (<= probe_reference)
        self._reference_statistics: tuple | None = None  # their feature statistics at the current weights
        self._saved_statistics: tuple | None = None  # from save_pretrained, for a loaded model
        self.embed_timestep = int(embed_timestep)
        self.uncond_prob = float(uncond_prob)
        self.sample_steps = int(sample_steps)
        self.samples_per_class = int(samples_per_class)
        self.sample_seed = int(sample_seed)
        self.guidance_scale = float(guidance_scale)

    # ---- embedding -----------------------------------------------------------------------
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Mean-pooled mid-block output (B, D) of clean images at ``embed_timestep``, null class
        (:func:`mid_block_output`)."""
        null = torch.full((len(pixel_values),), self.null_class, dtype=torch.long, device=pixel_values.device)
        return mid_block_output(self.unet, pixel_values, self.embed_timestep, class_labels=null)

    # ---- training ------------------------------------------------------------------------
    def training_loss(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Denoising MSE of a batch at random timesteps (its value), plus the probe's gradient.

        The UNet sees the *noised* images with their given labels (the null class with
        probability ``uncond_prob``) and predicts the noise.
        """
        batch = len(pixel_values)
        device = pixel_values.device
        noise = torch.randn_like(pixel_values)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch,), device=device)
        noisy = self.noise_scheduler.add_noise(pixel_values, noise, timesteps)
        drop = torch.rand(batch, device=device) < self.uncond_prob
        class_labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        predicted_noise = self.unet(noisy, timesteps, class_labels=class_labels).sample
        denoising = F.mse_loss(predicted_noise.float(), noise.float())
        if self.probe_head is None:
            return denoising
        with torch.no_grad():  # the probe reads the diffusion model, never trains it
            features = self.features(pixel_values)
            self._remember(pixel_values)
        probe_logits = self.probe_head(features, *_statistics(features))
        probe_loss = F.cross_entropy(probe_logits.float(), labels)
        # Value = the denoising MSE (the loss curve); gradient = both terms. Dividing by the
        # gain gives the probe a plain linear layer's gradient size (Adam's steps, hence the
        # gain's speed-up, do not depend on it), so it weighs little in the global norm clip.
        return denoising + (probe_loss - probe_loss.detach()) / self.probe_head.gain

    # ---- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        class_labels: torch.Tensor,
        *,
        steps: int | None = None,
        seed: int | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """DDIM samples (eta = 0, deterministic given ``seed``) for ``class_labels`` (B,).

        With classifier-free guidance (Ho & Salimans, 2022): each step predicts the noise with
        the label and with the null class and steps along
        ``uncond + guidance_scale * (cond - uncond)``; 1 is the plain conditional model.

        Returns images (B, 3, S, S) in [-1, 1] on the model's device.
        """
        from diffusers import DDIMScheduler

        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        device = next(self.unet.parameters()).device
        # "trailing" spacing starts at the last training timestep, where x_T really is pure
        # noise; the default "leading" spacing starts 1000/steps earlier, at an x_t that still
        # holds some signal the noise we draw lacks (Lin et al., 2024, "Common diffusion noise
        # schedules and sample steps are flawed").
        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config, timestep_spacing="trailing")
        scheduler.set_timesteps(steps or self.sample_steps, device=device)
        generator = torch.Generator().manual_seed(self.sample_seed if seed is None else seed)
        size = self.unet.config.sample_size
        # Noise drawn on the CPU: the same seed gives the same samples on every device.
        images = torch.randn((len(class_labels), 3, size, size), generator=generator).to(device)
        class_labels = class_labels.to(device)
        null = torch.full_like(class_labels, self.null_class)
        was_training = self.training
        self.eval()
        try:
            for timestep in scheduler.timesteps:
                if scale == 1.0:
                    predicted_noise = self.unet(images, timestep, class_labels=class_labels).sample
                else:  # one batch for both predictions
                    both = self.unet(torch.cat([images, images]), timestep,
                                     class_labels=torch.cat([class_labels, null])).sample
                    conditional, unconditional = both.chunk(2)
                    predicted_noise = unconditional + scale * (conditional - unconditional)
                images = scheduler.step(predicted_noise, timestep, images, eta=0.0).prev_sample
        finally:
            self.train(was_training)
        return images.clamp(-1.0, 1.0)

    # ---- saving --------------------------------------------------------------------------
    def save_pretrained(self, directory) -> None:
        """``unet/`` and ``scheduler/`` in diffusers format, ``probe_head.pt`` and ``ftviz_diffusion.json``."""
        directory = Path(directory)
        self.unet.save_pretrained(directory / "unet")
        self.noise_scheduler.save_pretrained(directory / "scheduler")
        if self.probe_head is not None:
            mean, std = self.probe_statistics()
            torch.save({"state": self.probe_head.state_dict(), "mean": mean.cpu(), "std": std.cpu()},
                       directory / "probe_head.pt")
        settings = {
            "num_classes": self.num_classes,
            "embed_timestep": self.embed_timestep,
            "uncond_prob": self.uncond_prob,
            "probe_head": self.probe_head is not None,
            "probe_gain": self.probe_head.gain if self.probe_head is not None else None,
        }
        (directory / "ftviz_diffusion.json").write_text(json.dumps(settings, indent=2) + "\n")


def _load_pretrained(source: str, num_classes: int, settings: dict) -> ClassConditionalDDPM:
    """A DDPM saved by :meth:`ClassConditionalDDPM.save_pretrained` (local folder or hub id)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from ftviz.models.hub import hub_error

    try:
        unet = UNet2DModel.from_pretrained(source, subfolder="unet")
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
    except (OSError, ValueError) as error:
        raise hub_error(source, error) from None
    if unet.config.num_class_embeds != num_classes + 1:
        raise FtvizError(
            f"{source} holds a UNet with {unet.config.num_class_embeds} class embeddings, "
            f"{num_classes} classes need {num_classes + 1}; train a new one (model.pretrained = \"\")"
        )
    model = ClassConditionalDDPM(unet, scheduler, num_classes=num_classes, **settings)
    head = Path(source) / "probe_head.pt"
    if model.probe_head is not None and head.is_file():
        try:  # tensors and plain values only: a shared model folder runs no code when loaded
            saved = torch.load(head, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by damage
            raise FtvizError(
                f"{head} is damaged or holds objects other than tensors and plain values (not loaded: "
                f"loading them could run code; {type(error).__name__}); save the model again"
            ) from None
        model.probe_head.load_state_dict(saved["state"])
        model._saved_statistics = (saved["mean"], saved["std"])
    return model


def _create_ddpm(
    *,
    num_classes: int,
    image_size: int,
    pretrained: str = "",
    sample_size: int | None = None,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "squaredcos_cap_v2",
    class_names=None,
    **options,
) -> ClassConditionalDDPM:
    """``options`` named like :class:`ClassConditionalDDPM`'s keywords go to it (with its
    defaults); the rest are UNet2DModel arguments."""
    import inspect

    try:
        import diffusers  # noqa: F401
    except ModuleNotFoundError:
        raise FtvizError("the diffusion models need diffusers: pip install 'ftviz[diffusion]'") from None
    model_keywords = {
        name for name, parameter in inspect.signature(ClassConditionalDDPM.__init__).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "num_classes"
    }
    settings = {name: options.pop(name) for name in list(options) if name in model_keywords}
    if "probe_head" in settings:
        settings["probe_head"] = bool(settings["probe_head"])
    if "probe_gain" in settings:
        settings["probe_gain"] = float(settings["probe_gain"])
    unet_options = options
    if pretrained and pretrained != "none":
        if unet_options:
            raise FtvizError(
                f"model.options {sorted(unet_options)} cannot change a pretrained UNet; "
                'set model.pretrained = "" to train a new one'
            )
        return _load_pretrained(pretrained, num_classes, settings)
    from diffusers import DDPMScheduler, UNet2DModel

    channels = tuple(unet_options.pop("block_out_channels"))
    levels = len(channels)
    unet_settings = dict(
        sample_size=int(sample_size or image_size),
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        num_class_embeds=num_classes + 1,  # + the null class
    )
    unet_settings.update(unet_options)
    if unet_settings["sample_size"] % 2 ** (levels - 1):
        raise FtvizError(
            f"a UNet with {levels} levels needs a sample size divisible by {2 ** (levels - 1)}, "
            f"got {unet_settings['sample_size']}; set model.options.sample_size"
        )
    try:
        unet = UNet2DModel(**unet_settings)
        scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
    except (TypeError, ValueError, NotImplementedError) as error:
        raise FtvizError(f"bad diffusion option: {str(error).splitlines()[0]}") from None
    return ClassConditionalDDPM(unet, scheduler, num_classes=num_classes, **settings)


@register_model
def ddpm_tiny(
    *, num_classes: int = 10, image_size: int = 32, pretrained: str = "", **overrides
) -> ClassConditionalDDPM:
    """UNet of three levels (32, 64, 64 channels, one ResNet block each, attention in the
    mid block), cosine noise schedule of 1000 steps, D = 64. ``sample_size`` (default:
    the data's image size) is the UNet's resolution; digits are 8x8 at source, so 8 loses
    nothing (experiments/ddpm_digits.toml: a training step at 8 px costs a third of 16 px).
    """
    if pretrained and pretrained != "none":  # the architecture comes from the checkpoint
        return _create_ddpm(num_classes=num_classes, image_size=image_size, pretrained=pretrained, **overrides)
    options = dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8)
    options.update(overrides)
    return _create_ddpm(num_classes=num_classes, image_size=image_size, pretrained=pretrained, **options)
