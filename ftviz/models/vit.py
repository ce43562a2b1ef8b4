"""Vision Transformer from ``transformers`` (ViTForImageClassification).

Embedding = the CLS token of the last hidden state, after the final layer norm: the same
vector the classification head reads, so embedding and logits come from one forward pass.

Pretrained weights come from a hub id or a local folder (``model.pretrained``): any
ViTForImageClassification-compatible checkpoint (``ViTModel`` backbones such as
``google/vit-base-patch16-224-in21k`` included). The backbone is loaded, the head is always
fresh (sized for the dataset's classes), and the checkpoint's own image-processor settings
(size, mean, std; see :mod:`ftviz.models.hub`) are applied on the device.
"""

from __future__ import annotations

from ftviz.errors import FtvizError
from ftviz.models import register_model
from ftviz.models.base import ProbeModel
from ftviz.models.hub import pretrained_source

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


def save_processor_config(directory, size: int, mean, std) -> None:
    """Write a ``preprocessor_config.json`` that ``ViTImageProcessor`` reads back."""
    try:
        from transformers import ViTImageProcessorPil as Processor  # no torchvision needed
    except ImportError:  # older transformers
        from transformers import ViTImageProcessor as Processor
    Processor(size={"height": int(size), "width": int(size)}, image_mean=list(mean), image_std=list(std)).save_pretrained(directory)


def load_pretrained_vit(source: str, num_classes: int, class_names=None):
    """Load a ViT checkpoint (hub id or local folder) with a fresh head for ``num_classes``.

    Returns (model, image_size, mean, std) from the checkpoint's own image-processor settings
    (its ``preprocessor_config.json``; mean = std = 0.5 at the model's size without one).
    """
    import torch
    from transformers import AutoConfig, ViTForImageClassification

    from ftviz.models.hub import hub_error, load_processor_settings, quiet_transformers

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as error:  # OSError, ValueError, hub errors: all mean "cannot get it"
        raise hub_error(source, error) from None
    if config.model_type != "vit":
        raise FtvizError(
            f"{source} is a {config.model_type!r} checkpoint, not a ViT; choose the model family that "
            f"matches it (ftviz models) or another model.pretrained"
        )
    names = [str(name) for name in (class_names or range(num_classes))]
    config.num_labels = num_classes
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    try:
        with quiet_transformers():
            model = ViTForImageClassification.from_pretrained(
                source, config=config, ignore_mismatched_sizes=True, attn_implementation="sdpa", dtype=torch.float32
            )
    except Exception as error:
        raise hub_error(source, error) from None
    _reset_head(model)
    settings = load_processor_settings(source, default_size=model.config.image_size)
    return model, settings.size, settings.mean, settings.std


def _reset_head(model) -> None:
    """A fresh classifier even when the checkpoint had one of the right size (HF's own init)."""
    import torch

    with torch.no_grad():
        torch.nn.init.trunc_normal_(model.classifier.weight, std=model.config.initializer_range)
        torch.nn.init.zeros_(model.classifier.bias)


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
        model, size, mean, std = load_pretrained_vit(source, num_classes, class_names)
        return ViTProbe(model, image_size=size, mean=mean, std=std)
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
