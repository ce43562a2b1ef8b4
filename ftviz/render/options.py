"""Render settings shared by the page and the painter: output formats, colour modes, checks.

The settings, their defaults and their allowed values are :class:`ftviz.config.RenderConfig`'s;
this module only names the colour modes for menus and hands the page and painter a plain dict.
"""

from __future__ import annotations

import dataclasses

from ftviz.config import COLOR_BY, RenderConfig, check_section

OUTPUT_FORMATS = ("html", "gif", "mp4", "png")
_COLOR_LABELS = {
    "label": "given label",
    "prediction": "prediction",
    "outlier_score": "outlier score",
    "label_issue": "label-issue flag",
    "noise": "injected noise",
    "suspicion": "label suspicion",
}
# Menu order and names; a mode added to RenderConfig without a label fails here, at import.
COLOR_MODES = {mode: _COLOR_LABELS[mode] for mode in COLOR_BY}


def render_options(section: RenderConfig | None) -> dict:
    """A :class:`RenderConfig` (None: its defaults) as plain options, validated (one-line errors).

    The section is checked again here because the page and painter are also called with a
    section built in code, which :func:`ftviz.config.validate` never saw.
    """
    section = RenderConfig() if section is None else section
    check_section(section, "render")
    return dataclasses.asdict(section)


def available_modes(data) -> list[str]:
    """The colour modes ``data`` (an AnimationData) can show, in menu order."""
    modes = []
    for mode in COLOR_MODES:
        if mode == "noise" and not data.has_noise:
            continue
        if mode == "suspicion" and data.suspicion is None:
            continue
        modes.append(mode)
    return modes
