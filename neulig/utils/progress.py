"""When to draw progress bars (``progress: auto|on|off`` in conf/config.yaml); no heavy imports.

``auto`` draws them only for a person watching: stderr is a terminal, not under pytest or CI, and
this process is rank zero (a DDP child never draws). ``on`` forces them (still rank zero only);
``off`` never draws. YAML reads a bare ``on``/``off`` as a boolean, so ``True``/``False`` are
accepted as ``on``/``off``.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, TextIO

from neulig.errors import NeuligError
from neulig.utils.log import is_rank_zero

MODES = ("auto", "on", "off")


def progress_mode(value: object) -> str:
    """The mode named by a config value; a NeuligError names the allowed ones."""
    mode = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    if mode not in MODES:
        raise NeuligError(f"progress={value!r} is not a progress mode; choose one of {', '.join(MODES)}")
    return mode


def under_automation(env: Mapping[str, str]) -> bool:
    """True under pytest or a CI runner (``CI`` set to anything but empty/0/false)."""
    return "PYTEST_CURRENT_TEST" in env or env.get("CI", "").strip().lower() not in ("", "0", "false")


def progress_enabled(value: object, stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether this process draws progress bars on ``stream`` (default stderr) for mode ``value``."""
    mode = progress_mode(value)
    if mode == "off" or not is_rank_zero():
        return False
    if mode == "on":
        return True
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not under_automation(os.environ if env is None else env)
