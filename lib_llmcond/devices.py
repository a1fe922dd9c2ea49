"""The few device operations the model registry needs, each one small function (tests replace them on a CPU).

CUDA-only calls (free memory, pinned host memory, capability) live here and nowhere else, so the registry's
decisions can be checked without a GPU by monkeypatching these functions.
"""

from __future__ import annotations

import os

import torch

from lib_llmcond.errors import LlmcondError


def cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def current_cuda_index() -> int:
    return torch.cuda.current_device()


def capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of this CUDA device (its own index, not the current device's)."""
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a CUDA stream runs ahead of Python; the CPU never does)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve(name: str) -> torch.device:
    """``auto`` -> the current CUDA device or the CPU; ``cuda`` -> ``cuda:<current>``; ``cuda:N`` checked."""
    name = str(name).strip()
    count = cuda_count()
    if name == "auto":
        name = "cuda" if count else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise LlmcondError(f"unknown device {name!r}", fix="choose auto, cpu, cuda or cuda:N") from e
    if device.type != "cuda":
        return device
    if not count:
        raise LlmcondError(
            f"the device {name!r} was chosen but this torch has no CUDA device", fix="choose cpu or auto"
        )
    index = current_cuda_index() if device.index is None else device.index
    if index >= count:
        raise LlmcondError(
            f"the device 'cuda:{index}' was chosen but this machine has {count} CUDA device(s)"
            f" (cuda:0 to cuda:{count - 1})",
            fix="choose one of those, auto or cpu",
        )
    return torch.device("cuda", index)


def free_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation on ``device`` can use: the driver's free memory plus torch's cached free blocks
    (as the Forge memory manager counts). None where unknown (not CUDA): no budget is enforced there."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(0, cached))


def available_ram() -> int | None:
    """Bytes of host memory still available (None where unknown)."""
    try:
        import psutil  # every host ships it

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def pin(tensor: torch.Tensor) -> torch.Tensor:
    """A page-locked copy of a CPU tensor (so uploads can be asynchronous); the tensor itself without CUDA or
    where the system refuses to lock more memory (uploads from it are then synchronous)."""
    if not torch.cuda.is_available():
        return tensor
    try:
        return tensor.pin_memory()
    except RuntimeError:
        return tensor


def upload(source: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A new tensor on ``device`` filled from ``source`` without waiting (ordered on the current stream)."""
    target = torch.empty_like(source, device=device)
    target.copy_(source, non_blocking=True)
    return target


def empty_cache(device: torch.device) -> None:
    """Return torch's cached blocks on ``device`` to the driver (other processes and the host see them)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
