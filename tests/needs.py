"""Optional test dependencies: skipped where an environment legitimately lacks them, a failure where it must have
them. ``dev/test.sh`` names what each environment must have in ``LLMCOND_REQUIRE`` (comma-separated groups):
``.venv`` the oracles (transformers' model classes, accelerate, the real GGUF package), the UI environments gradio,
FastAPI, playwright + chromium (and diffusers in gradio 4); ``.venv-a1111`` (A1111's pins) has no oracles and
skips them. So a broken install in an environment meant to check something fails instead of reporting green.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

ENV = "LLMCOND_REQUIRE"
GROUPS = ("oracles", "tokenizers", "ui", "browser", "diffusers")


def required(group: str) -> bool:
    assert group in GROUPS, group
    return group in {g.strip() for g in os.environ.get(ENV, "").split(",")}


def missing(group: str, reason: str) -> None:
    """Skip, or fail when this environment must have ``group``."""
    if required(group):
        pytest.fail(
            f"{reason} (this environment must have '{group}': {ENV}={os.environ.get(ENV)})", pytrace=False
        )
    pytest.skip(reason, allow_module_level=True)  # also at import time, as pytest.importorskip


def module(name: str, group: str) -> ModuleType:
    """``pytest.importorskip`` that fails instead where ``group`` is required (any import error counts)."""
    try:
        return importlib.import_module(name)
    except Exception as e:  # a broken install raises more than ImportError
        missing(group, f"cannot import {name!r}: {type(e).__name__}: {e}")
        raise  # not reached: missing() raises
