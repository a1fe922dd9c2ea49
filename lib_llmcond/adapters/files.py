"""Tensor files of adapters, read lazily to fp32: ``.safetensors``, or a pickle (``.pth/.pt/.bin``) only
through ``torch.load(weights_only=True)``: a pickle can run code, and we never let it."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelFileError
from ..safetensors_file import REDOWNLOAD, SafetensorsFile, map_tensor, read_header, read_tensor

SAFETENSORS = (".safetensors",)
PICKLES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPERS = ("state_dict", "model", "module", "ema", "params", "weights", "resampler")


@dataclass
class TensorFile:
    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]  # on disk, e.g. "BF16" or "bfloat16"
    meta: dict[str, str] = field(default_factory=dict)  # safetensors metadata / a pickle's plain values
    _tensors: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)  # a loaded pickle
    _header: SafetensorsFile | None = field(default=None, repr=False)  # a safetensors file's table

    @property
    def dtype(self) -> str:
        kinds = sorted(set(self.dtypes.values()))
        return kinds[0] if len(kinds) == 1 else "mixed: " + ", ".join(kinds)

    @contextlib.contextmanager
    def reader(self, *, mapped: bool = False) -> Iterator[Callable[[str], torch.Tensor]]:
        """A function reading one tensor as a contiguous fp32 CPU tensor in our own memory (never a view of
        a mapped file, which must stay replaceable while loaded); the file is opened once and read with
        plain reads, so the peak is the fp32 weights plus one tensor. ``mapped``: fp32 tensors of a
        safetensors file stay mapped from it instead (no copy; for a process that exits after its prompts)."""
        if self._tensors is not None:
            yield lambda key: _fp32(self._tensors[key])
            return
        entries = self._header.entries if self._header else {}
        with self.path.open("rb") as f:

            def read(key: str) -> torch.Tensor:
                entry = entries[key]
                if mapped and entry.torch_dtype == torch.float32:
                    return map_tensor(f, entry, self.path, key)
                t = read_tensor(f, entry, self.path, key)
                return t if t.dtype == torch.float32 else t.to(torch.float32)

            yield read


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """Always a copy in our own memory: tensors from safetensors or ``torch.load(mmap=True)`` may still be
    views of the mapped file, which must stay replaceable (and, on Windows, deletable) while loaded."""
    out = torch.empty(tuple(t.shape), dtype=torch.float32)
    out.copy_(t.detach())
    return out


def open_tensor_file(path: str | Path) -> TensorFile:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("no such file", path=path, fix="Check the path and the models folder")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS:
        return _open_safetensors(path)
    if suffix in PICKLES:
        return _open_pickle(path)
    raise ModelFileError(
        f"unknown adapter file type {suffix or '(none)'!r}",
        path=path,
        fix="Adapters are .safetensors files (or .pth/.pt/.bin tensor-only pickles)",
    )


def _open_safetensors(path: Path) -> TensorFile:
    """The header is parsed and checked first: a truncated file is caught before any tensor is read."""
    header = read_header(path)
    shapes = {k: e.shape for k, e in header.entries.items()}
    dtypes = {k: e.dtype for k, e in header.entries.items()}
    return TensorFile(path, shapes, dtypes, header.meta, _header=header)


def _open_pickle(path: Path) -> TensorFile:
    obj = _torch_load(path)
    tensors = _unwrap(obj)
    if tensors is None:
        raise ModelFileError(
            "the pickle holds no flat table of tensors (a state dict)",
            path=path,
            fix="Save the adapter's state_dict() (ideally as .safetensors)",
        )
    return TensorFile(
        path,
        {k: tuple(v.shape) for k, v in tensors.items()},
        {k: str(v.dtype).replace("torch.", "") for k, v in tensors.items()},
        _plain_values(obj),
        tensors,
    )


def _torch_load(path: Path) -> object:
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, TypeError) as err:  # legacy (non-zip) format or an old torch: no mmap
            if "weights_only" in str(err).lower() or "unpickl" in str(err).lower():
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            "this pickle holds Python objects besides tensors; llmcond refuses to unpickle it because a pickle "
            "can run code (it loads only what torch.load(weights_only=True) accepts)",
            path=path,
            fix="Get a .safetensors version of this file, or convert it in a trusted environment",
        ) from err
    except Exception as err:
        raise ModelFileError(
            f"cannot read this file ({type(err).__name__}: {err})", path=path, fix=REDOWNLOAD
        ) from err


def _unwrap(obj: object) -> dict[str, torch.Tensor] | None:
    """A flat {name: tensor} table, possibly under one wrapper key; DDP's ``module.`` prefix removed."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        table = {str(k): v for k, v in obj.items()}
        if all(k.startswith("module.") for k in table):
            table = {k[len("module.") :]: v for k, v in table.items()}
        return table
    if isinstance(obj, Mapping):
        for name in _WRAPPERS:
            if name in obj:
                found = _unwrap(obj[name])
                if found is not None:
                    return found
    return None


def _plain_values(obj: object, depth: int = 0) -> dict[str, str]:
    """Numbers and strings stored next to the tensors (e.g. a training ``config`` dict), flattened."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping) and depth < 3:
        for k, v in obj.items():
            if isinstance(v, (int, float, str, bool)):
                out.setdefault(str(k), str(v))
            elif isinstance(v, Mapping) and not any(isinstance(x, torch.Tensor) for x in v.values()):
                for kk, vv in _plain_values(v, depth + 1).items():
                    out.setdefault(kk, vv)
    return out
