"""Any timm architecture by name: ``model.name = "timm/<architecture>"`` (optional extra ``timm``).

Built with ``timm.create_model(architecture, num_classes=C, **model.options)``. Embedding =
the pooled pre-logits features, ``forward_head(forward_features(x), pre_logits=True)``: the
vector the classifier reads (after the head's pooling and norm), and the logits come from the
same ``forward_features`` pass. Preprocessing on the device with the model's own data config
(``timm.data.resolve_model_data_config``: mean, std, input size); processors that crop
(``crop_pct`` < 1) are resized straight to the input size, as for transformers checkpoints.

``model.pretrained``: "" = timm's pretrained weights for the architecture (from the hub or
its cache; offline without a cached copy is a one-line error), "none" = random weights (then
``model.options`` such as ``img_size``, ``patch_size``, ``depth`` shape it), or a local
weights file (``.safetensors``/``.pth``) or folder saved by :meth:`TimmProbe.save_pretrained`.

>>> create_model("timm/vit_tiny_patch16_224", num_classes=10, pretrained="none",
...              img_size=32, patch_size=4)                          # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ftviz.errors import FtvizError
from ftviz.models.base import ProbeModel
from ftviz.models.hub import hub_error, pretrained_source

PREFIX = "timm/"


class TimmProbe(ProbeModel):
    """Wraps a timm model; ``timm_model`` is kept whole for ``save_pretrained``."""

    def __init__(self, timm_model, *, image_size: int, mean, std):
        super().__init__(image_size=image_size, mean=mean, std=std)
        self.timm_model = timm_model
        self.num_classes = int(timm_model.num_classes)
        # timm >= 1.0 names the pre-logits width head_hidden_size (it differs from
        # num_features where the head has its own hidden layer).
        self.embedding_dim = int(getattr(timm_model, "head_hidden_size", None) or timm_model.num_features)

    def embed(self, pixel_values):
        features = self.timm_model.forward_features(pixel_values)
        embedding = self.timm_model.forward_head(features, pre_logits=True)
        return embedding.flatten(1), self.timm_model.forward_head(features)

    def save_pretrained(self, directory) -> None:
        """config.json + model.safetensors in timm's hub layout (``pretrained`` can load it back)."""
        from timm.models import save_for_hf

        save_for_hf(self.timm_model, str(directory))


def _import_timm():
    try:
        import timm
    except ImportError as error:
        raise FtvizError(
            f"timm models need timm and a torchvision that matches torch ({type(error).__name__}: {error}); "
            "install them with pip install 'ftviz[timm]'"
        ) from None
    except RuntimeError as error:  # "operator torchvision::nms does not exist"
        raise FtvizError(
            f"timm's torchvision was not built for this torch {_torch_version()} ({error}); a CPU-only torch "
            "needs torchvision from the PyTorch CPU index (PyPI has only CUDA builds of it)"
        ) from None
    return timm


def _torch_version() -> str:
    import torch

    return torch.__version__


def create_timm_model(name: str, *, num_classes: int = 10, image_size: int = 224, pretrained: str = "",
                      **options) -> TimmProbe:
    """The :class:`TimmProbe` for ``"timm/<architecture>"``; see the module docstring.

    ``image_size`` (``data.image_size``) is not passed to timm: a ViT's input size is its
    ``img_size`` option, and the images are resized to the size the model reports.
    """
    architecture = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if not architecture:
        raise FtvizError('model.name "timm/" names no architecture; e.g. "timm/resnet18" (see timm.list_models())')
    timm = _import_timm()
    if not timm.is_model(architecture.split(".")[0]):
        raise FtvizError(
            f"timm has no architecture {architecture!r}; pick one of timm.list_models() "
            "(e.g. timm/resnet18, timm/vit_small_patch16_224)"
        )
    source = pretrained_source(pretrained, PREFIX + architecture, options, family=f"timm model {architecture}")
    kwargs = dict(options, num_classes=num_classes)
    if source is not None and source != PREFIX + architecture:
        local = Path(source).expanduser()
        if not local.exists():
            raise FtvizError(f"model.pretrained {source!r}: no such file or folder; give timm weights "
                             "(.safetensors/.pth, or a folder saved by ftviz) or \"\" for timm's own")
        if local.is_dir():
            local = next((local / f for f in ("model.safetensors", "pytorch_model.bin") if (local / f).is_file()), local)
        kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
    try:
        model = timm.create_model(architecture, pretrained=source is not None, **kwargs)
    except TypeError as error:
        raise FtvizError(f"bad model.options for timm/{architecture}: {error}") from None
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise FtvizError(f"timm has no architecture {architecture!r}; pick one of timm.list_models()") from None
        raise hub_error(source or PREFIX + architecture, error) from None
    except Exception as error:  # hub, network and file errors
        raise hub_error(source or PREFIX + architecture, error) from None
    data_config = timm.data.resolve_model_data_config(model)
    return TimmProbe(model, image_size=_input_side(model, data_config), mean=tuple(data_config["mean"]),
                     std=tuple(data_config["std"]))


def _input_side(model, data_config) -> int:
    """The side the model was built for: a ViT's ``patch_embed.img_size`` (set by the img_size
    option) wins over the pretrained config's ``input_size``, which keeps the variant's default."""
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if size:
        return int(size[-1] if isinstance(size, (tuple, list)) else size)
    return int(data_config["input_size"][-1])
