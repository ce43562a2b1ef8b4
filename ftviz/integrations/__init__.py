"""Adapters from other training loops to :class:`ftviz.recorder.Recorder`.

``from ftviz.integrations import FtvizCallback`` (a ``transformers.TrainerCallback``);
transformers is imported on first use of the name, so ``import ftviz.integrations`` stays light.
"""

from __future__ import annotations

__all__ = ["FtvizCallback"]


def __getattr__(name: str):
    if name == "FtvizCallback":
        from ftviz.integrations.transformers import FtvizCallback

        return FtvizCallback
    raise AttributeError(f"module 'ftviz.integrations' has no attribute {name!r}")
