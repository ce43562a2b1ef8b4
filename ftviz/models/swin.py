"""Swin Transformer from ``transformers`` (SwinForImageClassification).

Embedding = the pooled output of the last stage: the final layer norm, then the average over
the last stage's tokens (``SwinModel``'s ``pooler_output``). It is the vector the
classification head reads, so embedding and logits come from one forward pass.

Variants
--------
``swin_tiny_digits``
    Random init for small images (32 px digits): patch 4, window 4, two stages of widths 64
    and 128, so D = 128 like ``vit_tiny``; 8x8 then 4x4 tokens at 32 px.
``swin_tiny_patch4_window7_224``
    Swin-T at 224 px, by default ``microsoft/swin-tiny-patch4-window7-224`` from the hub (or
    a local copy: ``model.pretrained = "path/to/folder"``); ``pretrained = "none"`` builds the
    same architecture with random weights, offline. D = 768.

A checkpoint is loaded by :func:`ftviz.models.hub.load_pretrained`, as for ViT: float32, a
fresh head for the dataset's classes, and its own image-processor settings (ImageNet
statistics for the Microsoft checkpoints).
"""

from __future__ import annotations

from ftviz.errors import FtvizError
from ftviz.models import register_model
from ftviz.models.base import ProbeModel
from ftviz.models.hub import load_pretrained, pretrained_source, save_processor_config

SWIN_TINY_224_HUB_ID = "microsoft/swin-tiny-patch4-window7-224"


class SwinProbe(ProbeModel):
    """Wraps a ``SwinForImageClassification``; ``hf_model`` is kept whole for save_pretrained."""

    def __init__(self, hf_model, *, image_size: int, mean, std):
        super().__init__(image_size=image_size, mean=mean, std=std)
        self.hf_model = hf_model
        self.num_classes = hf_model.config.num_labels
        self.embedding_dim = hf_model.swin.num_features

    def embed(self, pixel_values):
        pooled = self.hf_model.swin(pixel_values).pooler_output  # (B, D), after layer norm
        return pooled, self.hf_model.classifier(pooled)

    def save_pretrained(self, directory) -> None:
        """Weights and config, plus the processor settings, so the folder reloads as it ran."""
        self.hf_model.save_pretrained(directory)
        save_processor_config(directory, self.image_size, self.pixel_mean.flatten().tolist(), self.pixel_std.flatten().tolist())


def _create_swin(
    *,
    num_classes: int,
    image_size: int,
    pretrained: str = "",
    default_pretrained: str = "",
    class_names=None,
    **architecture,
) -> SwinProbe:
    """A pretrained Swin when a source is given (not "none"), else a random one from ``architecture``."""
    source = pretrained_source(pretrained, default_pretrained, architecture, family="Swin")
    if source is not None:
        model, settings = load_pretrained(
            source, model_class="SwinForImageClassification", model_type="swin", family="Swin",
            num_classes=num_classes, class_names=class_names,
        )
        return SwinProbe(model, image_size=settings.size, mean=settings.mean, std=settings.std)
    import inspect

    from transformers import SwinConfig, SwinForImageClassification

    # SwinConfig keeps unknown keywords as attributes: catch a typo here, not never.
    known = set(inspect.signature(SwinConfig.__init__).parameters) - {"self"}
    unknown = sorted(set(architecture) - known)
    if unknown:
        raise FtvizError(
            f"bad Swin option(s) {unknown}; SwinConfig takes: "
            f"{', '.join(sorted(k for k in known if not k.startswith('_')))}"
        )
    settings = dict(image_size=image_size, num_labels=num_classes)
    settings.update(architecture)
    try:
        config = SwinConfig(**settings)
    except (TypeError, ValueError) as error:
        raise FtvizError(f"bad Swin option: {error}") from None
    if len(config.num_heads) != len(config.depths):
        raise FtvizError(
            f"Swin options depths {list(config.depths)} and num_heads {list(config.num_heads)} "
            "must have one entry per stage"
        )
    last_side = -(-config.image_size // config.patch_size) // 2 ** (len(config.depths) - 1)
    if config.window_size > last_side:
        # transformers shrinks such windows but keeps the relative-position table of the
        # configured size, and the forward pass fails (transformers 5.24): refuse it here.
        raise FtvizError(
            f"Swin window_size {config.window_size} is larger than its last stage "
            f"({last_side}x{last_side} tokens at {config.image_size} px, patch {config.patch_size}, "
            f"{len(config.depths)} stages); set model.options.window_size <= {last_side}"
        )
    model = SwinForImageClassification(config)
    return SwinProbe(model, image_size=config.image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@register_model
def swin_tiny_digits(*, num_classes: int = 10, image_size: int = 32, pretrained: str = "", **overrides) -> SwinProbe:
    """Patch 4, window 4, two stages (depths 2, 2) of widths 64/128: the offline Swin, D = 128.

    At 32 px the stages see 8x8 tokens (four shifted 4x4 windows) and 4x4 (one window), the
    same token budget as ``vit_tiny``. Below 32 px the window shrinks to the last stage's
    side (2 at 16 px), since a window may not exceed any stage.
    """
    if pretrained and pretrained != "none":  # the architecture comes from the checkpoint
        return _create_swin(num_classes=num_classes, image_size=image_size, pretrained=pretrained, **overrides)
    last_side = max(1, -(-image_size // 4) // 2)  # patch 4, then one 2x merge
    architecture = dict(
        patch_size=4,
        window_size=min(4, last_side),
        embed_dim=64,
        depths=[2, 2],
        num_heads=[2, 4],
        drop_path_rate=0.0,  # a few hundred steps on small data: stochastic depth only adds noise
    )
    architecture.update(overrides)
    return _create_swin(num_classes=num_classes, image_size=image_size, pretrained=pretrained, **architecture)


@register_model
def swin_tiny_patch4_window7_224(
    *, num_classes: int = 10, image_size: int = 224, pretrained: str = "", **overrides
) -> SwinProbe:
    """Swin-T at 224 px; by default ``microsoft/swin-tiny-patch4-window7-224`` (hub or local copy)."""
    if pretrained == "none":
        # SwinConfig's defaults are Swin-T: patch 4, window 7, widths 96..768, depths 2-2-6-2.
        return _create_swin(num_classes=num_classes, image_size=224, pretrained="none", **overrides)
    return _create_swin(
        num_classes=num_classes,
        image_size=224,
        pretrained=pretrained,
        default_pretrained=SWIN_TINY_224_HUB_ID,
        **overrides,
    )
