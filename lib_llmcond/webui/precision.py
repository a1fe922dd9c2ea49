"""Run the LLM and adapter outside the host's precision tricks (host VRAM: ``webui/memory.py``).

A1111 computes conds inside ``devices.autocast()``: ``torch.autocast`` (fp16 on CUDA) or ``devices.manual_cast``,
which patches ``forward`` of ``nn.Linear``, ``nn.LayerNorm`` ... globally and keeps the original as
``org_forward`` on the class. Gemma must never run in fp16, so both are undone for the duration of our encode
and put back afterwards (unless the host ended its manual cast meanwhile). The patches are process-wide, as the
host's own are: the hosts run one generation at a time (``queue_lock``). Forge2's ``devices.autocast()`` is a no-op; its ``torch.inference_mode`` is harmless.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

_PATCHABLE = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.MultiheadAttention,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.Embedding,
)


@contextlib.contextmanager
def outside_host_autocast() -> Iterator[None]:
    """No autocast on any device type and no manual-cast patches while the block runs."""
    undone: dict[type, Any] = {}
    for cls in _PATCHABLE:
        original = cls.__dict__.get("org_forward")
        if original is not None:
            undone[cls] = cls.__dict__["forward"]
            cls.forward = original
    try:
        with contextlib.ExitStack() as stack:
            for device_type in ("cuda", "cpu") if torch.cuda.is_available() else ("cpu",):
                with contextlib.suppress(RuntimeError, TypeError):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            yield
    finally:
        for cls, patched in undone.items():
            if "org_forward" in cls.__dict__:  # the host's manual_cast is still active: put its patch back
                cls.forward = patched
