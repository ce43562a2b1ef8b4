"""Stable Diffusion from ``diffusers``' own parts, text-conditioned, probed like a classifier.

The parts are Stable Diffusion's: an ``AutoencoderKL`` (VAE) that moves images to a small
latent space and back, a ``CLIPTokenizer`` + ``CLIPTextModel`` whose token states condition a
``UNet2DConditionModel`` through cross-attention, a ``DDPMScheduler`` for the training noise
and a ``DDIMScheduler`` for sampling. The denoising loop is written out in
:meth:`StableDiffusion.sample` (model and schedulers apart, the loop in plain sight).

Where the parts come from
-------------------------
``model.pretrained`` = a diffusers-format Stable Diffusion folder (``vae/``, ``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) or hub id (the v1.x / v2.x repositories;
``stable_diffusion``'s default is ``stable-diffusion-v1-5/stable-diffusion-v1-5``)
    The five parts are loaded in float32 and the UNet alone is fine-tuned, as Stable
    Diffusion's own fine-tuning scripts do: the VAE and the text encoder are frozen
    (``requires_grad`` False, kept in eval mode). A folder without one of the parts, or a hub id
    that cannot be reached, is a one-line error. ``resolution`` defaults to the checkpoint's
    own (UNet sample size x the VAE's downsampling factor, 512 px for v1.5).
``sd_tiny`` (and ``stable_diffusion`` with ``model.pretrained = "none"``: the architecture of
Stable Diffusion lives in its checkpoint, so without one the small one is built)
    Built offline from config: a two-level VAE (downsampling x2, 4 latent channels), a
    two-layer CLIP text encoder of width 64, a two-level UNet with cross-attention at both
    levels, a v-prediction ``DDPMScheduler`` (cosine, no clipping, as Stable Diffusion 2's
    schedulers do not clip; see :func:`_build_tiny`) and a CLIP BPE
    tokenizer whose vocabulary is the 256 byte symbols (CLIP's base alphabet) plus one merge
    chain per word of the prompts, so each prompt word is one token (:func:`make_tokenizer`).
    The text encoder stays at its random initialisation (token embeddings of std 1, see
    :func:`_build_tiny`), frozen like Stable Diffusion's: a fixed random map of the prompts,
    enough for the UNet's cross-attention to tell them apart. Prompts are padded to the longest.
    The VAE is trained by **the first ``vae_steps`` training micro-batches of the run**: the
    loss is then the VAE's (pixel MSE of the reconstruction from a posterior sample, plus
    ``kl_weight`` x the KL divergence to N(0, I)), and the UNet and the probe get no gradient.
    At the first micro-batch after that phase the VAE is frozen for good and its latent scale is
    set, as Stable Diffusion's ``scaling_factor``, to 1 / the standard deviation of that batch's
    latents (so the UNet sees latents of unit variance); from then on the run is a Stable
    Diffusion fine-tuning of the UNet alone. The phase's progress and the scale are buffers, so a
    resumed run continues where it stopped. The loss curve shows the VAE's loss for the first
    phase, the denoising MSE after it.

Conditioning
------------
Class c is the prompt ``prompt_template`` with ``{class name}`` replaced by the c-th class
name ("a photo of a {class name}" by default; ``class_names`` default to "0", "1", ..., the
digits' names). Training drops the prompt to the empty one with probability ``uncond_prob``,
so the UNet also learns the unconditional model that classifier-free guidance needs. The
prompts' text states are computed once (the text encoder is frozen) and cached.

What ftviz reads from it
------------------------
embedding (B, D)
    The UNet's mid-block output for the *clean* latent (the VAE posterior's mean, scaled, no
    noise) at timestep ``embed_timestep`` (default 0) with the *empty* prompt, mean-pooled over
    space; D = the last entry of the UNet's ``block_out_channels``. As for the DDPM
    (:mod:`ftviz.models.diffusion`), the given label's prompt would write the label into the
    features and hide the label errors ftviz looks for.
logits (B, C)
    The DDPM's :class:`~ftviz.models.diffusion.LinearProbe` on those features, trained jointly
    on the given labels with the features detached (it never trains the UNet), standardised
    with batch statistics while training and with those of the last ``probe_reference``
    training images at the current weights at a snapshot.
loss
    :meth:`~StableDiffusion.training_loss` returns the denoising MSE (noise, or velocity for
    v-prediction schedulers, at a uniformly random timestep) on the clean latents, the VAE
    posterior's *mean* (Stable Diffusion's scripts draw a posterior sample; for its VAE the two
    differ by little, and the mean is also what the embedding reads); the probe's
    cross-entropy adds gradient, no value. During the tiny VAE's phase: the VAE's loss.
generated samples
    :meth:`~StableDiffusion.on_snapshot` draws DDIM samples from the prompts
    (``samples_per_class`` of each of the first ten classes, fixed seed, ``sample_steps``
    steps, guidance ``guidance_scale``), decodes them with the VAE and writes them as the DDPM
    does: ``generated/step-XXXXXXX.npz`` (``images`` uint8 (B, S, S, 3), ``labels``) and the
    grid ``generated/step-XXXXXXX.png``.
run.json
    :meth:`~StableDiffusion.manifest_info` names the component classes, the prompt template
    and the checkpoint, for the run's model block.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ftviz.errors import FtvizError
from ftviz.models import register_model
from ftviz.models.diffusion import LinearProbe, ProbedDiffusion, _statistics, mid_block_output

PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")  # a diffusers SD folder's subfolders
CLASS_PLACEHOLDER = "{class name}"
DEFAULT_TEMPLATE = "a photo of a {class name}"
DEFAULT_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"  # CLIP's special tokens (EOS also pads)

# The offline small architecture (sd_tiny); model.options of the same names change it.
TINY_ARCHITECTURE = dict(vae_channels=(32, 64), latent_channels=4, unet_channels=(32, 64), layers_per_block=1,
                         text_width=64, text_layers=2, max_prompt_tokens=None)


# ---- prompts and the offline tokenizer ----------------------------------------------------------
def class_prompts(template: str, class_names) -> list[str]:
    """One prompt per class: ``template`` with ``{class name}`` replaced by each name."""
    if not isinstance(template, str) or not template.strip():
        raise FtvizError('model.options.prompt_template is empty; give one with "{class name}", '
                         'e.g. "a photo of a {class name}"')
    if CLASS_PLACEHOLDER not in template:
        raise FtvizError(f'model.options.prompt_template {template!r} has no "{CLASS_PLACEHOLDER}", so every '
                         'class would get the same prompt; add it, e.g. "a photo of a {class name}"')
    return [template.replace(CLASS_PLACEHOLDER, str(name)) for name in class_names]


def make_tokenizer(prompts, *, max_length: int | None = None):
    """A ``CLIPTokenizer`` made offline whose vocabulary covers ``prompts`` word by word.

    CLIP's tokenizer is byte-level BPE with ``</w>`` ending a word. The vocabulary is the
    special tokens, the 256 byte symbols with and without ``</w>`` (so any text tokenizes),
    and for each word of the prompts the chain of merges that joins its symbols left to right
    (``p h``, ``ph o``, ...), so a prompt word is one token. ``max_length`` is the padded
    prompt length (``model_max_length``; default: the longest prompt's).
    """
    from transformers import CLIPTokenizer

    base = CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[])
    normalizer, splitter = base.backend_tokenizer.normalizer, base.backend_tokenizer.pre_tokenizer
    symbols = list(dict.fromkeys(chr(code) for code in _byte_symbols()))
    vocab = {BOS: 0, EOS: 1}
    for symbol in symbols + [symbol + "</w>" for symbol in symbols]:
        vocab.setdefault(symbol, len(vocab))
    merges = []
    for prompt in prompts:
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(prompt)):
            pieces = list(word[:-1]) + [word[-1] + "</w>"]
            joined = pieces[0]
            for piece in pieces[1:]:
                if joined + piece not in vocab:
                    merges.append((joined, piece))
                    vocab[joined + piece] = len(vocab)
                joined += piece
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    # Padded to the longest prompt by default: fewer pads, less for cross-attention to ignore.
    longest = max(len(tokenizer(prompt).input_ids) for prompt in [*prompts, ""])
    tokenizer.model_max_length = int(max_length or longest)
    return tokenizer


def _byte_symbols() -> list[int]:
    """The 256 code points byte-level BPE maps bytes to (GPT-2's table, which CLIP uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [256 + n for n in range(256 - len(printable))]
    return printable + extra


# ---- the model ----------------------------------------------------------------------------------
class StableDiffusion(ProbedDiffusion):
    """Stable Diffusion's five parts and a linear probe head (the probe's logits and the
    snapshot's samples as for the DDPM: :class:`~ftviz.models.diffusion.ProbedDiffusion`).

    Parameters
    ----------
    vae : ``diffusers.AutoencoderKL``.
    unet : ``diffusers.UNet2DConditionModel`` whose ``cross_attention_dim`` is the text
        encoder's width.
    text_encoder : ``transformers.CLIPTextModel`` (frozen).
    tokenizer : ``transformers.CLIPTokenizer``.
    noise_scheduler : ``diffusers.DDPMScheduler`` (training noise; sampling uses a DDIM
        scheduler made from its config).
    num_classes : C.
    class_names : C names for the prompts (default "0" ... "C-1").
    prompt_template : the prompt of a class, with ``{class name}``.
    resolution : image side in pixels the VAE sees (default: the VAE's ``sample_size``).
    vae_steps : training micro-batches that train the VAE first (0: the VAE is frozen from
        the start, as for a pretrained one).
    kl_weight : weight of the KL term in the VAE's loss.
    latent_scale : the VAE's scaling factor (default: its config's ``scaling_factor``; set
        from the latents at the end of the VAE phase when ``vae_steps`` > 0).
    probe_head, probe_gain, probe_reference, embed_timestep, uncond_prob, sample_steps,
    samples_per_class, sample_seed, guidance_scale : as for
        :class:`ftviz.models.diffusion.ClassConditionalDDPM` (``uncond_prob``: the share of
        training prompts dropped to the empty prompt).
    source : the checkpoint it was loaded from ("" for one built from config).
    """

    family = "Stable Diffusion model"

    def __init__(
        self,
        vae,
        unet,
        text_encoder,
        tokenizer,
        noise_scheduler,
        *,
        num_classes: int,
        class_names=None,
        prompt_template: str = DEFAULT_TEMPLATE,
        resolution: int | None = None,
        vae_steps: int = 0,
        kl_weight: float = 1e-4,
        latent_scale: float | None = None,
        probe_head: bool = True,
        probe_gain: float = 30.0,
        probe_reference: int = 256,
        embed_timestep: int = 0,
        uncond_prob: float = 0.1,
        sample_steps: int = 10,
        samples_per_class: int = 2,
        sample_seed: int = 0,
        guidance_scale: float = 1.0,
        source: str = "",
    ):
        resolution = int(resolution or vae.config.sample_size)
        super().__init__(image_size=resolution, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # pixels in [-1, 1]
        names = [str(name) for name in (class_names if class_names is not None else range(num_classes))]
        if len(names) != num_classes:
            raise FtvizError(f"model.options.class_names has {len(names)} names for {num_classes} classes")
        prompts = class_prompts(prompt_template, names)
        _check_settings(noise_scheduler.config.num_train_timesteps, embed_timestep=embed_timestep,
                        uncond_prob=uncond_prob, probe_gain=probe_gain, probe_reference=probe_reference,
                        sample_steps=sample_steps, samples_per_class=samples_per_class,
                        guidance_scale=guidance_scale, vae_steps=vae_steps, kl_weight=kl_weight)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
        if resolution % (self.vae_factor * unet_factor):
            raise FtvizError(f"model.options.resolution {resolution} must be a multiple of "
                             f"{self.vae_factor * unet_factor} (the VAE downsamples x{self.vae_factor}, the UNet "
                             f"x{unet_factor})")
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
            raise FtvizError(f"the UNet's cross_attention_dim ({unet.config.cross_attention_dim}) is not the text "
                             f"encoder's width ({text_encoder.config.hidden_size})")
        self.vae, self.unet, self.text_encoder, self.tokenizer = vae, unet, text_encoder, tokenizer
        self.noise_scheduler = noise_scheduler
        self.text_encoder.requires_grad_(False)  # frozen always, as in Stable Diffusion
        self.vae.requires_grad_(vae_steps > 0)
        self.num_classes, self.class_names, self.prompt_template = num_classes, names, prompt_template
        self.prompts = prompts
        # Token ids of the C prompts and, last, of the empty prompt (the unconditional model).
        self.register_buffer("prompt_ids", self._tokenize(prompts + [""]), persistent=False)
        self._prompt_states: torch.Tensor | None = None  # text states (C + 1, L, E), cached
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_prompt_states", None))
        self.vae_steps, self.kl_weight = int(vae_steps), float(kl_weight)
        # Persistent: a resumed run knows how far the VAE phase went and the scale it set.
        self.register_buffer("vae_steps_done", torch.zeros((), dtype=torch.long))
        scale = latent_scale if latent_scale is not None else vae.config.scaling_factor
        self.register_buffer("latent_scale", torch.tensor(float(scale)))
        self.embedding_dim = unet.config.block_out_channels[-1]
        self.probe_head = LinearProbe(self.embedding_dim, num_classes, gain=probe_gain) if probe_head else None
        self.probe_reference = int(probe_reference)
        self._reference_images: torch.Tensor | None = None
        self._reference_statistics: tuple | None = None
        self._saved_statistics: tuple | None = None
        self.embed_timestep, self.uncond_prob = int(embed_timestep), float(uncond_prob)
        self.sample_steps, self.samples_per_class = int(sample_steps), int(samples_per_class)
        self.sample_seed, self.guidance_scale = int(sample_seed), float(guidance_scale)
        self.source = source
        self.train()

    def train(self, mode: bool = True):
        """Train mode for the UNet and the probe; the VAE and the text encoder stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    def manifest_info(self) -> dict:
        """What run.json's model block records: the component classes, the prompts' template."""
        return {"components": {"vae": type(self.vae).__name__, "unet": type(self.unet).__name__,
                               "text_encoder": type(self.text_encoder).__name__,
                               "tokenizer": type(self.tokenizer).__name__,
                               "noise_scheduler": type(self.noise_scheduler).__name__,
                               "sample_scheduler": "DDIMScheduler"},
                "prompt_template": self.prompt_template, "source": self.source or None,
                "vae_steps": self.vae_steps, "latent_size": self.image_size // self.vae_factor}

    # ---- text ------------------------------------------------------------------------------------
    def _tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (P, L) padded to the tokenizer's ``model_max_length``, as Stable Diffusion does."""
        length = self.tokenizer.model_max_length
        for prompt in prompts:
            count = len(self.tokenizer(prompt).input_ids)
            if count > length:
                raise FtvizError(f"the prompt {prompt!r} is {count} tokens, the text encoder reads {length}; "
                                 "shorten model.options.prompt_template or the class names")
        return self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                              return_tensors="pt").input_ids

    def prompt_states(self) -> torch.Tensor:
        """The text encoder's last hidden states (C + 1, L, E) of the prompts, the empty one last."""
        device = self.prompt_ids.device
        if self._prompt_states is None or self._prompt_states.device != device:
            with torch.no_grad():
                self._prompt_states = self.text_encoder(self.prompt_ids).last_hidden_state.float()
        return self._prompt_states

    # ---- latents ---------------------------------------------------------------------------------
    @property
    def training_vae(self) -> bool:
        """Whether the run is still in the (tiny) VAE's own training phase."""
        return int(self.vae_steps_done) < self.vae_steps

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Scaled clean latents (B, 4, S/f, S/f) of images in [-1, 1]: the posterior's mean."""
        return self.vae.encode(pixel_values).latent_dist.mean * self.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] from scaled latents."""
        return self.vae.decode(latents / self.latent_scale).sample.clamp(-1.0, 1.0)

    # ---- embedding -------------------------------------------------------------------------------
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Mean-pooled mid-block output (B, D) of the clean latents at ``embed_timestep``, empty prompt.

        The pass stops at the mid block (a hook raises): the up path cannot change it.
        """
        with torch.no_grad():
            latents = self.encode(pixel_values)
        return self._mid_block_features(latents)

    def _mid_block_features(self, latents: torch.Tensor) -> torch.Tensor:
        """:meth:`features` of scaled clean latents (B, 4, s, s)."""
        empty = self.prompt_states()[-1:].expand(len(latents), -1, -1)
        return mid_block_output(self.unet, latents, self.embed_timestep, encoder_hidden_states=empty)

    # ---- training --------------------------------------------------------------------------------
    def training_loss(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The VAE's loss during its phase; then the denoising MSE (value) plus the probe's gradient."""
        if self.training_vae:
            return self._vae_loss(pixel_values)
        if self.vae_steps and int(self.vae_steps_done) == self.vae_steps:
            self._end_vae_phase(pixel_values)
        if self.vae.encoder.conv_in.weight.requires_grad:  # also after a resume past the phase
            self.vae.requires_grad_(False)
        batch, device = len(pixel_values), pixel_values.device
        with torch.no_grad():
            latents = self.encode(pixel_values)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch,), device=device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        drop = torch.rand(batch, device=device) < self.uncond_prob
        prompt = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        predicted = self.unet(noisy, timesteps, encoder_hidden_states=self.prompt_states()[prompt]).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":  # Stable Diffusion 2.x
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        denoising = F.mse_loss(predicted.float(), target.float())
        if self.probe_head is None:
            return denoising
        with torch.no_grad():  # the probe reads the diffusion model, never trains it
            features = self._mid_block_features(latents)  # the clean latents the UNet was given
            self._remember(pixel_values)
        probe_logits = self.probe_head(features, *_statistics(features))
        probe_loss = F.cross_entropy(probe_logits.float(), labels)
        return denoising + (probe_loss - probe_loss.detach()) / self.probe_head.gain

    def _vae_loss(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Reconstruction MSE from a posterior sample + ``kl_weight`` x KL(posterior || N(0, I)) per pixel."""
        self.vae.requires_grad_(True)
        posterior = self.vae.encode(pixel_values).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / pixel_values[0].numel()  # diffusers sums the KL over the latent
        self.vae_steps_done += 1
        return F.mse_loss(reconstruction.float(), pixel_values.float()) + self.kl_weight * kl

    def _end_vae_phase(self, pixel_values: torch.Tensor) -> None:
        """Set the latent scale to 1 / std of this batch's latent means, once (``vae_steps_done`` moves
        past ``vae_steps``, so a resumed run keeps the scale it set)."""
        with torch.no_grad():
            latents = self.vae.encode(pixel_values).latent_dist.mean
            self.latent_scale.fill_(1.0 / latents.float().std().clamp_min(1e-6).item())
        self.vae_steps_done += 1

    # ---- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, class_labels: torch.Tensor, *, steps: int | None = None, seed: int | None = None,
               guidance_scale: float | None = None) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] drawn for the prompts of ``class_labels`` (B,).

        DDIM (eta 0, "trailing" spacing from the last training timestep) from latent noise drawn
        on the CPU with ``seed`` (the same samples on every device), classifier-free guidance
        ``prediction = empty + scale * (prompt - empty)``, then the VAE's decoder.
        """
        from diffusers import DDIMScheduler

        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        device = self.prompt_ids.device
        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config, timestep_spacing="trailing")
        scheduler.set_timesteps(steps or self.sample_steps, device=device)
        generator = torch.Generator().manual_seed(self.sample_seed if seed is None else seed)
        side = self.image_size // self.vae_factor
        shape = (len(class_labels), self.unet.config.in_channels, side, side)
        latents = (torch.randn(shape, generator=generator) * scheduler.init_noise_sigma).to(device)
        states = self.prompt_states()
        conditional = states[class_labels.to(device)]
        both = torch.cat([conditional, states[-1:].expand_as(conditional)])
        was_training = self.training
        self.eval()
        try:
            for timestep in scheduler.timesteps:
                if scale == 1.0:
                    predicted = self.unet(latents, timestep, encoder_hidden_states=conditional).sample
                else:  # one batch for both predictions
                    pair = self.unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=both).sample
                    with_prompt, without = pair.chunk(2)
                    predicted = without + scale * (with_prompt - without)
                latents = scheduler.step(predicted, timestep, latents, eta=0.0).prev_sample
            return self.decode(latents)
        finally:
            self.train(was_training)

    # ---- saving ----------------------------------------------------------------------------------
    def save_pretrained(self, directory) -> None:
        """A diffusers-format Stable Diffusion folder (the five parts; the latent scale in the VAE's
        ``scaling_factor``), plus ``probe_head.pt`` and ``ftviz_stable_diffusion.json``."""
        directory = Path(directory)
        self.vae.register_to_config(scaling_factor=float(self.latent_scale), sample_size=self.image_size)
        self.vae.save_pretrained(directory / "vae")
        self.unet.save_pretrained(directory / "unet")
        self.text_encoder.save_pretrained(directory / "text_encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.noise_scheduler.save_pretrained(directory / "scheduler")
        if self.probe_head is not None:
            mean, std = self.probe_statistics()
            torch.save({"state": self.probe_head.state_dict(), "mean": mean.cpu(), "std": std.cpu()},
                       directory / "probe_head.pt")
        settings = {"num_classes": self.num_classes, "class_names": self.class_names,
                    "prompt_template": self.prompt_template, "embed_timestep": self.embed_timestep}
        (directory / "ftviz_stable_diffusion.json").write_text(json.dumps(settings, indent=2) + "\n")


def _check_settings(num_train_timesteps: int, *, embed_timestep, uncond_prob, probe_gain, probe_reference,
                    sample_steps, samples_per_class, guidance_scale, vae_steps, kl_weight) -> None:
    """One-line errors for out-of-range model options, before anything is built on them."""
    if not 0 <= embed_timestep < num_train_timesteps:
        raise FtvizError(f"model.options.embed_timestep must be in [0, {num_train_timesteps}), got {embed_timestep}")
    if not 0.0 <= uncond_prob < 1.0:
        raise FtvizError(f"model.options.uncond_prob must be in [0, 1), got {uncond_prob}")
    if probe_gain <= 0 or probe_reference < 2:
        raise FtvizError("model.options.probe_gain must be > 0 and probe_reference >= 2")
    if sample_steps < 1 or samples_per_class < 1:
        raise FtvizError("model.options.sample_steps and samples_per_class must be >= 1")
    if num_train_timesteps % sample_steps:  # DDIM's "trailing" grid needs it (see diffusion.py)
        raise FtvizError(f"model.options.sample_steps must divide the {num_train_timesteps} training "
                         f"timesteps (e.g. 10, 20, 25, 50), got {sample_steps}")
    if guidance_scale < 0:
        raise FtvizError(f"model.options.guidance_scale must be >= 0 (1 = no guidance), got {guidance_scale}")
    if vae_steps < 0 or kl_weight < 0:
        raise FtvizError("model.options.vae_steps and kl_weight must be >= 0")


# ---- building and loading -----------------------------------------------------------------------
_MODEL_KEYWORDS = ("class_names", "prompt_template", "resolution", "probe_head", "probe_gain", "probe_reference",
                   "embed_timestep", "uncond_prob", "sample_steps", "samples_per_class", "sample_seed",
                   "guidance_scale")
_TINY_ONLY = ("vae_steps", "kl_weight", "num_train_timesteps", "beta_schedule", *TINY_ARCHITECTURE)


def _split_options(options: dict, *, pretrained: bool) -> tuple[dict, dict]:
    """(model settings, architecture options); unknown names and architecture options given
    with a checkpoint are one-line errors."""
    allowed = _MODEL_KEYWORDS if pretrained else _MODEL_KEYWORDS + _TINY_ONLY
    unknown = sorted(set(options) - set(allowed))
    if unknown and pretrained and set(unknown) <= set(_TINY_ONLY):
        raise FtvizError(f"model.options {unknown} cannot change a pretrained Stable Diffusion; "
                         'set model.pretrained = "none" (or use sd_tiny) to build a small one')
    if unknown:
        raise FtvizError(f"unknown Stable Diffusion option(s) {unknown}; choose from {', '.join(allowed)}")
    settings = {name: options[name] for name in _MODEL_KEYWORDS if name in options}
    if "probe_head" in settings:
        settings["probe_head"] = bool(settings["probe_head"])
    architecture = {name: options[name] for name in _TINY_ONLY if name in options}
    return settings, architecture


def _require_diffusers() -> None:
    try:
        import diffusers  # noqa: F401
    except ModuleNotFoundError:
        raise FtvizError("Stable Diffusion needs diffusers: pip install 'ftviz[diffusion]'") from None


def _check_folder(source: str) -> None:
    """A local folder must hold the five parts; a missing one is named."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return
    missing = [part for part in PARTS if not (folder / part).is_dir()]
    if missing:
        raise FtvizError(f"{source} is not a diffusers Stable Diffusion folder: it has no {', '.join(missing)} "
                         f"subfolder (it needs {', '.join(PARTS)})")


def _load_pretrained(source: str, *, num_classes: int, settings: dict) -> StableDiffusion:
    """The five parts of a diffusers-format folder or hub id, in float32; the VAE and the text
    encoder frozen; the probe head too when the folder was saved by ftviz."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ftviz.models.hub import explained_load_errors, quiet_transformers

    _check_folder(source)
    local = Path(source).expanduser()
    saved = local / "ftviz_stable_diffusion.json"
    if saved.is_file():  # the class names and template it was trained with, unless given anew
        stored = json.loads(saved.read_text())
        for name in ("class_names", "prompt_template"):
            if name not in settings and stored.get(name) is not None and stored.get("num_classes") == num_classes:
                settings[name] = stored[name]
    with explained_load_errors(source), quiet_transformers():
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch.float32)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    settings.setdefault("resolution", int(unet.config.sample_size) * vae_factor)  # the checkpoint's own
    model = StableDiffusion(vae, unet, text_encoder, tokenizer, scheduler, num_classes=num_classes,
                            source=str(source), **settings)
    head = local / "probe_head.pt"
    if model.probe_head is not None and head.is_file():
        try:  # tensors and plain values only: a shared folder runs no code when loaded
            state = torch.load(head, map_location="cpu", weights_only=True)
            model.probe_head.load_state_dict(state["state"])
        except Exception as error:  # damage, or a head of another size
            raise FtvizError(f"{head} cannot be used ({type(error).__name__}); delete it to train a new "
                             "probe head") from None
        model._saved_statistics = (state["mean"], state["std"])
    return model


def _build_tiny(*, num_classes: int, image_size: int, settings: dict, architecture: dict) -> StableDiffusion:
    """The small offline Stable Diffusion (see the module docstring), from config."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = {**TINY_ARCHITECTURE, "vae_steps": 150, "kl_weight": 1e-4, "num_train_timesteps": 1000,
            "beta_schedule": "squaredcos_cap_v2", **architecture}
    resolution = int(settings.pop("resolution", None) or image_size)
    names = settings.get("class_names") or [str(c) for c in range(num_classes)]
    template = settings.get("prompt_template", DEFAULT_TEMPLATE)
    prompts = class_prompts(template, names)
    tokenizer = make_tokenizer(prompts, max_length=arch["max_prompt_tokens"])
    vae_channels, unet_channels = tuple(arch["vae_channels"]), tuple(arch["unet_channels"])
    width = int(arch["text_width"])
    try:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=vae_channels,
            layers_per_block=int(arch["layers_per_block"]),
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
            latent_channels=int(arch["latent_channels"]), norm_num_groups=8, sample_size=resolution, scaling_factor=1.0,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
            num_hidden_layers=int(arch["text_layers"]), num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        # CLIP draws token embeddings with std 0.02, which a trained encoder outgrows; in a frozen
        # random one the layers then drown the words (the class token's state had cosine 0.95
        # between two digits' prompts). At nn.Embedding's std 1 each word stays its own (0.10).
        torch.nn.init.normal_(text_encoder.get_input_embeddings().weight, std=1.0)
        levels = len(unet_channels)
        unet = UNet2DConditionModel(
            sample_size=resolution // 2 ** (len(vae_channels) - 1), in_channels=int(arch["latent_channels"]),
            out_channels=int(arch["latent_channels"]), block_out_channels=unet_channels,
            layers_per_block=int(arch["layers_per_block"]),
            # Cross-attention at every level (Stable Diffusion leaves its 4th, 8x8 level without):
            # at two levels, the prompt would otherwise reach half the blocks.
            down_block_types=("CrossAttnDownBlock2D",) * levels,
            up_block_types=("CrossAttnUpBlock2D",) * levels,
            cross_attention_dim=width, attention_head_dim=8, norm_num_groups=8,
        )
        # As Stable Diffusion 2: v-prediction, and no clipping of the predicted latents (they are
        # not in [-1, 1]). With epsilon-prediction the cosine schedule's last timestep (signal
        # ~0) gives an exploding first estimate that only clipping to [-1, 1] tames, and that
        # clipping deforms the latents: sample accuracy fell with more DDIM steps.
        scheduler = DDPMScheduler(num_train_timesteps=int(arch["num_train_timesteps"]),
                                  beta_schedule=arch["beta_schedule"], prediction_type="v_prediction",
                                  clip_sample=False)
    except (TypeError, ValueError, NotImplementedError) as error:
        raise FtvizError(f"bad Stable Diffusion option: {str(error).splitlines()[0]}") from None
    return StableDiffusion(vae, unet, text_encoder, tokenizer, scheduler, num_classes=num_classes,
                           resolution=resolution, vae_steps=int(arch["vae_steps"]),
                           kl_weight=float(arch["kl_weight"]), latent_scale=1.0, **settings)


def _create_stable_diffusion(*, num_classes: int, image_size: int, source: str | None, class_names=None,
                             **options) -> StableDiffusion:
    _require_diffusers()
    if class_names is not None:
        options.setdefault("class_names", list(class_names))
    settings, architecture = _split_options(options, pretrained=source is not None)
    if source is not None:
        return _load_pretrained(source, num_classes=num_classes, settings=settings)
    return _build_tiny(num_classes=num_classes, image_size=image_size, settings=settings, architecture=architecture)


@register_model
def stable_diffusion(*, num_classes: int = 10, image_size: int = 32, pretrained: str = "",
                     **options) -> StableDiffusion:
    """Stable Diffusion from a diffusers-format folder or hub id (default
    ``stable-diffusion-v1-5/stable-diffusion-v1-5``), UNet fine-tuned; ``pretrained = "none"``
    builds the small offline architecture of :func:`sd_tiny`."""
    source = DEFAULT_HUB_ID if pretrained == "" else pretrained
    return _create_stable_diffusion(num_classes=num_classes, image_size=image_size,
                                    source=None if source == "none" else source, **options)


@register_model
def sd_tiny(*, num_classes: int = 10, image_size: int = 32, pretrained: str = "", **options) -> StableDiffusion:
    """The small offline Stable Diffusion: VAE of two levels (32, 64 channels, x2 down, 4 latent
    channels), CLIP text encoder of 2 layers x 64, cross-attention UNet of two levels (32, 64;
    D = 64), cosine schedule of 1000 steps with v-prediction; the VAE trains for the first ``vae_steps`` (150)
    micro-batches. With ``model.pretrained`` a folder or hub id it loads like :func:`stable_diffusion`."""
    source = None if pretrained in ("", "none") else pretrained
    return _create_stable_diffusion(num_classes=num_classes, image_size=image_size, source=source, **options)
