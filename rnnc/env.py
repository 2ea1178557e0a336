"""rnnc's environment switches, read in one way."""

from __future__ import annotations

import os

__all__ = ["switched_off"]

#: The values that switch an ``RNNC_*`` feature off (any case, spaces around ignored).
OFF = ("0", "false", "no", "off")


def switched_off(name: str) -> bool:
    """Whether the environment variable ``name`` switches its feature off."""
    return os.environ.get(name, "").strip().lower() in OFF
