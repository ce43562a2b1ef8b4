"""Model registry in the style of timm: ``@register_model``, ``create_model``, ``list_models``.

Each family lives in its own file (``vit.py``, ``swin.py``, ``diffusion.py``,
``stable_diffusion.py``) and registers one thin function per variant at its bottom. A
registered function takes ``num_classes``, ``image_size``, ``pretrained`` (hub id or local
folder, "" for random weights) and architecture overrides, and returns an
:class:`ftviz.models.base.ProbeModel`.
``"timm/<architecture>"`` names any timm model (optional extra ``timm``, ``timm_models.py``).
"""

from __future__ import annotations

import importlib
from typing import Callable

from ftviz.errors import FtvizError

_model_entrypoints: dict[str, Callable] = {}
_FAMILY_MODULES = ("ftviz.models.vit", "ftviz.models.swin", "ftviz.models.diffusion",
                  "ftviz.models.stable_diffusion")
TIMM_PREFIX = "timm/"  # any timm architecture by name, built on demand (not listed)


def register_model(fn: Callable) -> Callable:
    """Register ``fn`` under its own name."""
    _model_entrypoints[fn.__name__] = fn
    return fn


def _import_families() -> None:
    for module in _FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # a family present but missing a dependency is a bug
                raise


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _import_families()
    return sorted(_model_entrypoints)


def create_model(name: str, **kwargs):
    """Build the model registered as ``name``, or ``"timm/<architecture>"`` through timm
    (:mod:`ftviz.models.timm_models`); ``None``-valued kwargs are dropped."""
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if name.startswith(TIMM_PREFIX):
        from ftviz.models.timm_models import create_timm_model

        return create_timm_model(name, **kwargs)
    _import_families()
    if name not in _model_entrypoints:
        raise FtvizError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}, or timm/<architecture>"
        )
    return _model_entrypoints[name](**kwargs)
