"""Vision Transformer from ``transformers`` (ViTForImageClassification).

Embedding = the CLS token of the last hidden state, after the final layer norm: the same
vector the classification head reads, so embedding and logits come from one forward pass.

Pretrained weights come from a hub id or a local folder (``model.pretrained``): any
ViTForImageClassification-compatible checkpoint (``ViTModel`` backbones such as
``google/vit-base-patch16-224-in21k`` included), loaded by :func:`ftviz.models.hub.load_pretrained`
as every family's: float32, the head always fresh (sized for the dataset's classes), and the
checkpoint's own image-processor settings (size, mean, std) applied on the device.
"""

from __future__ import annotations

from ftviz.errors import FtvizError
from ftviz.models import register_model
from ftviz.models.base import ProbeModel
from ftviz.models.hub import load_pretrained, pretrained_source, save_processor_config

IN21K = "google/vit-base-patch16-224-in21k"  # the article's backbone


class ViTProbe(ProbeModel):
    """Wraps a ``ViTForImageClassification``; ``hf_model`` is kept whole for save_pretrained."""

    def __init__(self, hf_model, *, image_size: int, mean, std):
        super().__init__(image_size=image_size, mean=mean, std=std)
        self.hf_model = hf_model
        self.num_classes = hf_model.config.num_labels
        self.embedding_dim = hf_model.config.hidden_size
        # A processor size other than the one the position embeddings were trained at.
        self.interpolate_pos_encoding = int(image_size) != int(hf_model.config.image_size)

    def embed(self, pixel_values):
        hidden = self.hf_model.vit(
            pixel_values, interpolate_pos_encoding=self.interpolate_pos_encoding
        ).last_hidden_state  # (B, 1 + patches, D)
        cls = hidden[:, 0]
        return cls, self.hf_model.classifier(cls)

    def save_pretrained(self, directory) -> None:
        """Weights and config, plus the processor settings, so the folder reloads as it ran."""
        self.hf_model.save_pretrained(directory)
        save_processor_config(directory, self.image_size, self.pixel_mean.flatten().tolist(), self.pixel_std.flatten().tolist())


def _create_vit(
    *,
    num_classes: int,
    image_size: int,
    pretrained: str = "",
    default_pretrained: str = "",
    class_names=None,
    architecture: dict | None = None,
    overrides: dict | None = None,
) -> ViTProbe:
    """A pretrained ViT from ``pretrained`` (or ``default_pretrained``), else a random one.

    ``architecture`` is the variant's shape, ``overrides`` the user's ``model.options``; only
    a randomly initialised model (``pretrained = "none"`` or no default) can take overrides.
    """
    overrides = dict(overrides or {})
    source = pretrained_source(pretrained, default_pretrained, overrides, family="ViT")
    if source is not None:
        model, settings = load_pretrained(
            source, model_class="ViTForImageClassification", model_type="vit", family="ViT",
            num_classes=num_classes, class_names=class_names, attn_implementation="sdpa",
        )
        return ViTProbe(model, image_size=settings.size, mean=settings.mean, std=settings.std)
    from transformers import ViTConfig, ViTForImageClassification

    settings = dict(image_size=image_size, num_labels=num_classes, attn_implementation="sdpa")
    settings.update(architecture or {})
    settings.update(overrides)
    try:
        config = ViTConfig(**settings)
    except TypeError as error:
        raise FtvizError(f"bad ViT option: {error}") from None
    if config.image_size % config.patch_size:
        raise FtvizError(
            f"image size {config.image_size} is not a multiple of patch_size {config.patch_size}; "
            "change data.image_size or model.options.patch_size"
        )
    model = ViTForImageClassification(config)
    return ViTProbe(model, image_size=config.image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@register_model
def vit_tiny(*, num_classes: int = 10, image_size: int = 32, pretrained: str = "", **overrides) -> ViTProbe:
    """Width 128, 4 layers, patch 4: the offline default, trains in seconds on a CPU.

    With ``pretrained`` (a folder or hub id) it loads that ViT instead, whatever its size.
    """
    architecture = dict(
        patch_size=4, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512
    )
    return _create_vit(
        num_classes=num_classes, image_size=image_size, pretrained=pretrained,
        architecture=architecture, overrides=overrides,
    )


@register_model
def vit_base_patch16_224(
    *, num_classes: int = 10, image_size: int = 224, pretrained: str = "", **overrides
) -> ViTProbe:
    """ViT-B/16 at 224 px; by default the article's ``google/vit-base-patch16-224-in21k``.

    ``pretrained = "none"`` gives random weights (for throughput measurements).
    """
    architecture = dict(patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    return _create_vit(
        num_classes=num_classes, image_size=224, pretrained=pretrained, default_pretrained=IN21K,
        architecture=architecture, overrides=overrides,
    )


@register_model
def vit(*, num_classes: int = 10, image_size: int = 32, pretrained: str = "", **overrides) -> ViTProbe:
    """Any ViT checkpoint named by ``model.pretrained`` (hub id or local folder): required.

    ``pretrained = "none"`` builds a random ViT of ``vit_tiny``'s shape changed by ``model.options``.
    """
    if pretrained == "":
        raise FtvizError(
            "model 'vit' loads a checkpoint: set model.pretrained to a hub id or a local folder "
            "(or use vit_tiny / vit_base_patch16_224 for a fixed architecture)"
        )
    architecture = dict(
        patch_size=4, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512
    )
    return _create_vit(
        num_classes=num_classes, image_size=image_size, pretrained=pretrained,
        architecture=architecture, overrides=overrides,
    )
