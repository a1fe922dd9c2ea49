"""Module skeletons: built on the meta device with their initialisers skipped, filled from a file next.

``torch.device("meta")`` alone still runs every ``reset_parameters``; the first meta ``normal_`` in a process
costs about a second (torch sets up its Python meta kernels). Skipping the in-place initialisers on meta
tensors avoids that, and they would write nothing anyway. The mode is thread-local, as ``torch.device`` is,
so modules other threads build meanwhile (the host loading a checkpoint) initialise as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode


class _SkipMetaInit(TorchFunctionMode):
    """In-place ops (``normal_``, ``uniform_``, ``zero_``, ``nn.init.kaiming_uniform_`` ...) on a meta tensor
    return it unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            target = args[0] if args else kwargs.get("tensor")  # nn.init passes it by keyword
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


@contextmanager
def meta_skeleton() -> Iterator[None]:
    """Build modules here: parameters and buffers on the meta device, no initialisation, no memory."""
    with torch.device("meta"), _SkipMetaInit():
        yield
