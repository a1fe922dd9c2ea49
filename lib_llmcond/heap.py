"""Give freed heap memory back to the operating system (glibc's ``malloc_trim``; a no-op elsewhere).

glibc keeps memory freed by large temporaries (GGUF dequantization at load, the activations of a long prompt
on the CPU) and by the dense weights a packer replaced inside its heaps, where it still counts as resident.
Trimming after those steps returns it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

# a CPU forward over at least this many tokens leaves enough freed activations to be worth a trim (a trim costs
# 2-10 ms: under 1 % of such a forward; shorter prompts leave little and would pay it on every call)
TRIM_AFTER_TOKENS = 256


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True where that was possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_after_forward(device: torch.device, tokens: int) -> None:
    """After a forward on ``device`` over ``tokens`` tokens: trim the heap where that freed a lot on the CPU."""
    if device.type == "cpu" and tokens >= TRIM_AFTER_TOKENS:
        release_free_memory()
