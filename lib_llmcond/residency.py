"""Where one module's weights live: on the CPU, on an accelerator, or both (a pinned host copy kept once).

Weights never change after loading, so moving back to the CPU never copies anything: the device tensors are
dropped and the pinned copy made at load is put back. Moving to the device allocates new tensors there and
fills them from the pinned copy asynchronously (``devices.upload``). Parameters and buffers are handled alike
(GGUF modules keep their quantized bytes as buffers); a parameter shared by two modules (tied weights) is one
tensor with one copy. ``PackedLinear`` (CPU oneDNN layout) keeps its weight outside parameters and buffers, so
models bound for an accelerator are loaded unpacked, and a packed one is refused here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lib_llmcond import devices, placement
from lib_llmcond.cpu_linear import PackedLinear

CPU = torch.device("cpu")


@dataclass
class _Slot:
    """One distinct tensor and the modules holding it (several for tied weights)."""

    param: nn.Parameter | None  # None: a buffer
    owners: list[tuple[nn.Module, str]]

    def get(self) -> torch.Tensor:
        if self.param is not None:
            return self.param.data
        owner, name = self.owners[0]
        return owner._buffers[name]

    def set(self, tensor: torch.Tensor) -> None:
        if self.param is None:
            for owner, name in self.owners:
                owner._buffers[name] = tensor
        elif torch._has_compatible_shallow_copy_type(self.param, tensor):
            self.param.data = tensor  # as ``Module.to`` does: the parameter object stays
        else:  # a tensor type ``.data`` cannot take (as ``Module._apply`` does: a new parameter)
            self.param = nn.Parameter(tensor, requires_grad=False)
            for owner, name in self.owners:
                owner._parameters[name] = self.param


def _slots(module: nn.Module) -> list[_Slot]:
    params: dict[int, _Slot] = {}
    buffers: dict[int, _Slot] = {}
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                params.setdefault(id(p), _Slot(p, [])).owners.append((m, name))
        for name, b in m._buffers.items():
            if b is not None:
                buffers.setdefault(id(b), _Slot(None, [])).owners.append((m, name))
    return [*params.values(), *buffers.values()]


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's weights: distinct parameters and buffers, plus packed linears' weights."""
    total = sum(tensor_bytes(s.get()) for s in _slots(module))
    for m in module.modules():
        if isinstance(m, PackedLinear):
            total += m.out_features * m.in_features * m.dense_weight().element_size()
    return total


class Residency:
    """The placement of one module's weights. ``host_copy``: keep a pinned CPU copy (offloading); without it
    the module lives on one device and is freed, not moved back, when it leaves (``to(cpu)`` refuses)."""

    def __init__(self, module: nn.Module, *, host_copy: bool) -> None:
        if any(isinstance(m, PackedLinear) for m in module.modules()):
            raise ValueError("a module with CPU-packed linears cannot be moved; load it with pack=False")
        self._module = module
        self._slots = _slots(module)
        first = self._slots[0].get() if self._slots else torch.empty(0)
        self.device: torch.device = first.device
        self.nbytes = sum(tensor_bytes(s.get()) for s in self._slots)
        self._host: list[torch.Tensor] | None = None
        if host_copy:
            if self.device != CPU:
                raise ValueError("the host copy is made from CPU weights; build the residency before moving")
            self._host = [devices.pin(s.get()) for s in self._slots]
            for slot, pinned in zip(self._slots, self._host):
                slot.set(pinned)  # the pageable originals are freed now

    @property
    def has_host_copy(self) -> bool:
        return self._host is not None

    def to(self, device: torch.device) -> None:
        if device == self.device:
            return
        if device == CPU:
            if self._host is None:
                raise ValueError("no host copy to go back to: drop the module instead")
            for slot, pinned in zip(self._slots, self._host):
                slot.set(pinned)  # no device-to-host copy: the weights never changed
        else:
            sources = self._host if self._host is not None else [s.get() for s in self._slots]
            for slot, source in zip(self._slots, sources):
                slot.set(devices.upload(source, device))
        self.device = device
        placement.moved(self._module)

    def drop_host_copy(self) -> None:
        """Forget the pinned copy (once the module is on its device for good)."""
        self._host = None
