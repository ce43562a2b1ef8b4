"""``ftviz models``: the names the model registry knows (``model.name``)."""

from __future__ import annotations


def register(add) -> None:
    add("models", cmd_models, "list the registered models")


def cmd_models(args) -> None:
    from ftviz.models import list_models

    print("\n".join(list_models()))
