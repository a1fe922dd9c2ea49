"""Safetensors files, read by us: the header parsed and checked before any tensor is touched, then each
tensor either read into our own memory or mapped on its own.

A tensor mapped on its own leaves memory when its last user drops it: a linear layer packed for oneDNN
(``cpu_linear``) releases its file pages, where one mapping of the whole file would keep every page it ever
touched resident until the model is unloaded. Small tensors are always read (a mapping per norm is waste).
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from lib_llmcond.errors import ModelFileError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
}  # fmt: skip
REDOWNLOAD = "Download the file again (compare its size with the source) or pick another file"
MAX_HEADER = 100 * 2**20
MIN_MAPPED = 2**20  # bytes; smaller tensors are read


@dataclass(frozen=True)
class Entry:
    dtype: str  # as in the file: "BF16", "F32", ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class SafetensorsFile:
    path: Path
    entries: dict[str, Entry]
    meta: dict[str, str] = field(default_factory=dict)


def read_header(path: str | Path) -> SafetensorsFile:
    """The file's tensor table; a short, truncated or malformed file raises :class:`ModelFileError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER:
                raise ValueError(f"header length {n} does not fit in a {size}-byte file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
        entries = {str(key): _entry(key, info, 8 + n, size) for key, info in header.items()}
    except OSError as err:
        raise ModelFileError(
            f"cannot read the file: {err.strerror or err}", path=path, fix=REDOWNLOAD
        ) from err
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error) as err:
        raise ModelFileError(f"not a readable safetensors file: {err}", path=path, fix=REDOWNLOAD) from err
    return SafetensorsFile(path, entries, meta)


def _entry(key: str, info: dict, data_start: int, size: int) -> Entry:
    start, end = (int(o) for o in info["data_offsets"])
    shape = tuple(int(s) for s in info["shape"])
    if info["dtype"] not in DTYPES:
        raise ValueError(f"tensor {key!r} has dtype {info['dtype']}, which llmcond does not read")
    numel = 1
    for s in shape:
        numel *= s
    entry = Entry(str(info["dtype"]), shape, data_start + start, data_start + end)
    if end > size - data_start or start > end or entry.nbytes != numel * entry.torch_dtype.itemsize:
        raise ValueError(f"tensor {key!r} lies outside the file's data (truncated?)")
    return entry


def read_tensor(f: BinaryIO, entry: Entry, path: Path, key: str) -> torch.Tensor:
    """One tensor copied into our own memory with plain reads (``f``: the file opened in binary mode)."""
    raw = torch.empty(entry.nbytes, dtype=torch.uint8)
    try:
        f.seek(entry.start)
        got = f.readinto(memoryview(raw.numpy())) if entry.nbytes else 0
    except OSError as err:  # a disk or network-share error mid-read
        raise ModelFileError(f"cannot read tensor {key!r} ({err})", path=path, fix=REDOWNLOAD) from err
    if got != entry.nbytes:
        raise ModelFileError(f"tensor {key!r} is cut short", path=path, fix=REDOWNLOAD)
    return raw.view(entry.torch_dtype).reshape(entry.shape)


def map_tensor(f: BinaryIO, entry: Entry, path: Path, key: str) -> torch.Tensor:
    """One tensor backed by its own private (copy-on-write) mapping of the file: nothing is read until it is
    used, and the mapping closes with the last tensor viewing it. Small or misaligned tensors are read."""
    gran = mmap.ALLOCATIONGRANULARITY
    base = entry.start // gran * gran
    offset = entry.start - base
    if entry.nbytes < MIN_MAPPED or offset % entry.torch_dtype.itemsize:
        return read_tensor(f, entry, path, key)
    try:
        mapped = mmap.mmap(f.fileno(), entry.end - base, offset=base, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):  # a file system without mappings: read it
        return read_tensor(f, entry, path, key)
    numel = entry.nbytes // entry.torch_dtype.itemsize
    tensor = torch.frombuffer(mapped, dtype=entry.torch_dtype, count=numel, offset=offset)
    return tensor.reshape(entry.shape)
