"""Linear layers whose weights are pre-packed once for oneDNN, for models that compute on the CPU.

``F.linear`` on the CPU re-lays the weight into oneDNN's blocked format on every call. Doing that once, at
the layer's first forward on the CPU (not at load, so loading stays a plain read), makes the same GEMM 1.1-1.9x faster in bf16 and 1.4-3x faster in fp32 on an AVX-512 CPU
(``benchmarks/``), with the same maths (only the summation order of the dot products can differ).

An LLM's layers are not packed at their first forward but by an :class:`IdlePacker` between requests: the first
prompts after a load run on the dense (mapped) weights, which on bf16 costs little, instead of waiting for the
re-layout of every weight (about 1 s per GB, mostly page faults of the fresh memory).

Until it is packed, an fp32 layer runs oneDNN's linear on its dense weight (``dense_onednn_available``).

Feature-detected: where torch lacks the oneDNN ops, or oneDNN cannot run the dtype, nothing is packed.
``LLMCOND_PACK=0`` in the environment switches packing off.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lib_llmcond.heap import release_free_memory

_PACKABLE = (torch.float32, torch.bfloat16)


@functools.cache
def packing_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed linear runs ``dtype`` here and agrees with ``F.linear`` on a small case."""
    if dtype not in _PACKABLE or os.environ.get("LLMCOND_PACK", "1") == "0":
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 5, 24, generator=g).to(dtype)
        w, b = torch.randn(40, 24, generator=g).to(dtype), torch.randn(40, generator=g).to(dtype)
        got = _packed_forward(x, torch.ops.mkldnn._reorder_linear_weight(w, None), b)
        want = F.linear(x, w, b)
        return got.shape == want.shape and bool(
            torch.allclose(got.float(), want.float(), atol=0.1, rtol=0.02)
        )
    except (AttributeError, RuntimeError, TypeError):  # older torch, or a build without oneDNN
        return False


def _packed_forward(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.cache
def dense_onednn_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN's linear takes an unpacked fp32 weight here and agrees with ``F.linear``: faster than
    ``F.linear``'s fp32 GEMM (13-30 % on this AVX-512 CPU) with no re-layout to pay, so the adapter's layers
    use it until they are packed (the one-shot CLI: always). bf16 ``F.linear`` already goes through oneDNN."""
    if dtype != torch.float32 or not packing_available(dtype):
        return False
    try:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 7, 24, generator=g)
        w, b = torch.randn(40, 24, generator=g), torch.randn(40, generator=g)
        got = _packed_forward(x, w, b)
        return got.shape == (2, 7, 40) and bool(torch.allclose(got, F.linear(x, w, b), atol=1e-4, rtol=1e-4))
    except (AttributeError, RuntimeError, TypeError):
        return False


def can_pack(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and not weight.is_meta and packing_available(weight.dtype)


class PackedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held in oneDNN's layout; moved off the CPU it falls back to ``F.linear``.

    Packed at the first CPU forward (``at_first_forward``, the adapters: fp32 packing pays back within one
    call) or by :meth:`pack` (an :class:`IdlePacker` between requests, the LLMs). The weight is held as one
    ``(packed, dense)`` pair swapped in a single assignment, so a forward on another thread sees either the
    dense or the packed weight, never neither; the dense one is dropped by that swap (no second copy kept).
    :meth:`dense_weight` rebuilds it.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, *, at_first_forward: bool = True
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self._weights: tuple[torch.Tensor | None, torch.Tensor | None] = (None, weight.detach())
        self.at_first_forward = at_first_forward
        self.pending = True  # not packed yet, and packable once on the CPU

    def pack(self) -> None:
        """Pack now (a no-op when packed, off the CPU or not packable)."""
        packed_w, dense = self._weights
        self.pending = False
        if packed_w is None and dense is not None and can_pack(dense):
            self._weights = (torch.ops.mkldnn._reorder_linear_weight(dense.contiguous(), None), None)

    @property
    def is_packed(self) -> bool:
        return self._weights[0] is not None

    def dense_weight(self) -> torch.Tensor:
        packed_w, dense = self._weights
        return dense if dense is not None else packed_w.to_dense()

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, for readers (a copy while packed: writing to it changes nothing)."""
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on_cpu = x.device.type == "cpu"
        if self.pending and self.at_first_forward and on_cpu:
            self.pack()
        packed_w, dense = self._weights  # one read: a concurrent pack() swaps the pair as a whole
        if packed_w is not None and on_cpu:
            return _packed_forward(x, packed_w, self.bias)
        if on_cpu and dense is not None and dense.is_contiguous() and dense_onednn_available(dense.dtype):
            return _packed_forward(x, dense, self.bias)
        return F.linear(x, dense if dense is not None else packed_w.to_dense(), self.bias)

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), ...: move the dense weight, repack on the CPU
        weight = fn(self.dense_weight())
        super()._apply(fn, *args, **kwargs)
        self._weights, self.pending = (None, weight), True
        return self

    def extra_repr(self) -> str:
        state = "packed" if self.is_packed else "to pack" if self.pending else "dense"
        return f"in_features={self.in_features}, out_features={self.out_features}, {state}"


def packed(linear: nn.Module, *, at_first_forward: bool = True) -> nn.Module:
    """``linear`` as a :class:`PackedLinear` when it is a plain ``nn.Linear`` whose weight can be packed, else
    ``linear`` itself (subclasses may change ``forward``; an already packed layer stays as it is)."""
    if type(linear) is not nn.Linear or not can_pack(linear.weight):
        return linear
    return PackedLinear(linear.weight, linear.bias, at_first_forward=at_first_forward)


def pack_linears(root: nn.Module, *, at_first_forward: bool = True) -> int:
    """Replace every ``nn.Linear`` under ``root`` by a packable one where possible; returns how many.
    ``at_first_forward=False``: nothing is packed until :meth:`PackedLinear.pack` (an :class:`IdlePacker`)."""
    count = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            new = packed(child, at_first_forward=at_first_forward)
            if new is not child:
                setattr(parent, name, new)
                count += 1
    return count


class IdlePacker:
    """Packs the pending :class:`PackedLinear` layers under a module in a background thread, one layer at a
    time and never while a forward runs: a forward registers in :meth:`forward` and waits at most for the one
    layer in progress; the thread waits until no forward is registered. :meth:`start` it between requests.

    Memory stays bounded: a layer's dense (mapped) weight is dropped by the swap that installs its packed copy,
    so at most one layer exists twice at any time (plus the dense weight a running forward still holds)."""

    def __init__(self, root: nn.Module) -> None:
        self._root = root
        self._cond = threading.Condition()
        self._forwards = 0
        self._packing = False
        self._stop = False
        self._thread: threading.Thread | None = None

    def pending(self) -> list[PackedLinear]:
        return [m for m in self._root.modules() if isinstance(m, PackedLinear) and m.pending]

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        """Hold off packing for the duration of a forward."""
        with self._cond:
            self._forwards += 1
            self._cond.wait_for(lambda: not self._packing)
        try:
            yield
        finally:
            with self._cond:
                self._forwards -= 1
                self._cond.notify_all()

    def start(self) -> bool:
        """Start packing in the background unless it runs or nothing is left; True when a thread runs."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return True
            layers = self.pending()
            if not layers:
                return False
            self._stop = False
            self._thread = threading.Thread(
                target=self._run, args=(layers,), name="llmcond-pack", daemon=True
            )
            self._thread.start()
            _STARTED.add(self)
            return True

    def _run(self, layers: list[PackedLinear]) -> None:
        try:
            self._pack_all(layers)
        finally:
            release_free_memory()  # dense weights that lived in the heap (GGUF) leave with the last swap

    def _pack_all(self, layers: list[PackedLinear]) -> None:
        for layer in layers:
            with self._cond:
                self._cond.wait_for(lambda: self._forwards == 0 or self._stop)
                if self._stop:
                    return
                self._packing = True
            try:
                layer.pack()
            except RuntimeError:  # out of memory, say: the layer stays dense, which computes the same
                return
            finally:
                with self._cond:
                    self._packing = False
                    self._cond.notify_all()

    def stop(self) -> None:
        """Stop after the layer in progress and wait for the thread (call it before moving the module)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running thread; True when no layer is left to pack."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.pending()


_STARTED: weakref.WeakSet[IdlePacker] = weakref.WeakSet()


@atexit.register
def _stop_packers() -> None:
    """A packing thread still inside a oneDNN call when the interpreter shuts down aborts the process: stop
    them (after the layer in progress) before that."""
    for packer in list(_STARTED):
        packer.stop()


def defer_packing(root: nn.Module) -> IdlePacker | None:
    """Turn the layers under ``root`` that would pack at their first forward into layers packed by the returned
    :class:`IdlePacker` (None when there is nothing to pack): for a module loaded in front of a prompt."""
    layers = [m for m in root.modules() if isinstance(m, PackedLinear) and m.pending]
    for layer in layers:
        layer.at_first_forward = False
    return IdlePacker(root) if layers else None
