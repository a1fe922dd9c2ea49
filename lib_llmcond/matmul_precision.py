"""fp32 matmul precision inside our calls: exact fp32, or TF32 where the card has it.

The hosts set TF32 process-wide (A1111 turns it on at start), so an "fp32" adapter there is really TF32 unless
the caller switches it off. :func:`matmul_precision` sets the mode for the duration of one encode and restores
the host's setting afterwards. torch >= 2.9 has a new per-backend ``fp32_precision`` switch next to the legacy
``allow_tf32`` flag; both are honoured, whichever this torch has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "tf32")
TF32_MIN_CAPABILITY = (8, 0)  # Ampere and later run TF32 natively


def tf32_capable(device: torch.device) -> bool:
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return tuple(torch.cuda.get_device_capability(device)) >= TF32_MIN_CAPABILITY


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``tf32`` on a TF32-capable CUDA device, else ``fp32``. The CPU is always ``fp32``."""
    if name not in PRECISIONS:
        raise ValueError(f"adapter precision must be one of {PRECISIONS}, not {name!r}")
    if device.type != "cuda":
        return "fp32"
    if name == "auto":
        return "tf32" if tf32_capable(device) else "fp32"
    return name


def _matmul_backend():
    return torch.backends.cuda.matmul


def _get_mode() -> tuple[str, object]:
    backend = _matmul_backend()
    if hasattr(backend, "fp32_precision"):
        with contextlib.suppress(RuntimeError):
            return "new", backend.fp32_precision
    return "legacy", backend.allow_tf32


def _set_mode(kind: str, value: object) -> None:
    backend = _matmul_backend()
    if kind == "new":
        backend.fp32_precision = value
    else:
        backend.allow_tf32 = bool(value)


@contextlib.contextmanager
def matmul_precision(mode: str, device: torch.device) -> Iterator[None]:
    """fp32 matmuls on ``device`` run as ``mode`` (``fp32`` or ``tf32``) inside the block; restored after."""
    if device.type != "cuda":
        yield
        return
    kind, saved = _get_mode()
    tf32 = mode == "tf32"
    _set_mode(kind, ("tf32" if tf32 else "ieee") if kind == "new" else tf32)
    try:
        yield
    finally:
        _set_mode(kind, saved)
