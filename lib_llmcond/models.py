"""Model discovery in folders, file identity (fingerprints), and safe name resolution.

Names shown in the UI and accepted by the API are paths relative to a model folder. A name is resolved only by
looking it up among the files discovered in the configured folders, so ``..``, absolute paths and symlinks that
lead outside a folder can never reach a file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lib_llmcond.errors import ModelFileError

LLM_SUBFOLDERS = ("LLM", "llm")
ADAPTER_SUBFOLDERS = ("llm_adapters",)
ADAPTER_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
LLM_FILE_SUFFIXES = (".gguf",)
MAX_DEPTH = 4
LORA_SUBFOLDER = "lora"  # an LLM folder's PEFT LoRA, merged at load (encoders/lora.py): part of its identity
_SAMPLE = 1 << 16  # bytes per fingerprint sample
_SAMPLES_PER_FILE = 16


@dataclass(frozen=True)
class ModelEntry:
    name: str  # path relative to its folder, with '/' separators: what the UI and API show
    path: Path
    kind: str  # "llm" | "adapter"
    format: str  # "hf_dir" | "gguf" | "safetensors" | "pickle"


@dataclass(frozen=True)
class Identity:
    """What makes a loaded model the same as the file on disk: size, mtime and a content fingerprint."""

    path: str
    size: int
    mtime_ns: int
    fingerprint: str  # hex sha256 over sampled content

    @property
    def short_hash(self) -> str:
        return self.fingerprint[:10]


def default_folders(models_root: str | Path, kind: str, extra: Iterable[str | Path] = ()) -> list[Path]:
    """The conventional folders under a WebUI ``models`` directory, then any extra folders, de-duplicated."""
    names = LLM_SUBFOLDERS if kind == "llm" else ADAPTER_SUBFOLDERS
    folders = [Path(models_root) / n for n in names] + [Path(e) for e in extra if str(e).strip()]
    seen: set[str] = set()
    out = []
    for f in folders:
        key = os.path.normcase(os.path.realpath(f))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _inside(path: Path, folder_real: str) -> bool:
    real = os.path.realpath(path)
    return real == folder_real or real.startswith(folder_real.rstrip(os.sep) + os.sep)


def _classify(path: Path, kind: str) -> str | None:
    if kind == "llm":
        if path.is_dir() and (path / "config.json").is_file():
            return "hf_dir"
        if path.is_file() and path.suffix.lower() in LLM_FILE_SUFFIXES:
            return "gguf"
        return None
    if path.is_file() and path.suffix.lower() in ADAPTER_SUFFIXES:
        return "safetensors" if path.suffix.lower() == ".safetensors" else "pickle"
    return None


def _walk(folder: Path, kind: str) -> Iterable[tuple[Path, str]]:
    folder_real = os.path.realpath(folder)
    stack = [(folder, 0)]
    while stack:
        current, depth = stack.pop()
        try:
            children = sorted(current.iterdir())
        except OSError:
            continue
        for child in children:
            if child.name.startswith(".") or not _inside(child, folder_real):
                continue
            fmt = _classify(child, kind)
            if fmt:
                yield child, fmt
            elif child.is_dir() and depth + 1 < MAX_DEPTH:
                stack.append((child, depth + 1))


def find_models(folders: Sequence[str | Path], kind: str) -> list[ModelEntry]:
    """Every LLM (HF directory with config.json, or .gguf) or adapter file below ``folders``, sorted by name."""
    if kind not in ("llm", "adapter"):
        raise ValueError(f"kind must be 'llm' or 'adapter', not {kind!r}")
    entries: dict[str, ModelEntry] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path, fmt in _walk(folder, kind):
            name = path.relative_to(folder).as_posix()
            entries.setdefault(name, ModelEntry(name, path, kind, fmt))
    return sorted(entries.values(), key=lambda e: e.name.lower())


def resolve_model(name: str, folders: Sequence[str | Path], kind: str) -> Path:
    """The file behind a UI/API model name; only names of discovered files are accepted."""
    for entry in find_models(folders, kind):
        if entry.name == name:
            return entry.path
    where = ", ".join(str(f) for f in folders) or "(no folders configured)"
    label = "LLM" if kind == "llm" else "adapter"
    raise ModelFileError(
        f"no {label} named {name!r} in the model folders ({where})",
        fix=f"put the {label} into one of those folders, press the refresh button and choose it from the list",
    )


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _weight_files(path: Path) -> list[Path]:
    """The files that make the model: a file, or a folder's files and those of its ``lora/`` subfolder."""
    if path.is_file():
        return [path]
    lora = path / LORA_SUBFOLDER
    return _files_in(path) + (_files_in(lora) if lora.is_dir() else [])


def _sample_file(h: hashlib._Hash, path: Path, size: int) -> None:
    with open(path, "rb") as f:
        if size <= _SAMPLE * _SAMPLES_PER_FILE:
            h.update(f.read())
            return
        step = (size - _SAMPLE) // (_SAMPLES_PER_FILE - 1)
        for i in range(_SAMPLES_PER_FILE):
            f.seek(i * step)
            h.update(f.read(_SAMPLE))


_identity_cache: dict[tuple[str, int, int], Identity] = {}
_identity_lock = threading.Lock()


def identity(path: str | Path) -> Identity:
    """Size, newest mtime and a sampled-content fingerprint of a model file or directory (cached by stat)."""
    path = Path(path)
    try:
        files = _weight_files(path)
        stats = [(f, f.stat()) for f in files]
    except OSError as e:
        raise ModelFileError(
            f"cannot read the model: {e.strerror or e}", path=path, fix="check the path"
        ) from e
    size = sum(s.st_size for _, s in stats)
    mtime = max((s.st_mtime_ns for _, s in stats), default=0)
    key = (os.path.realpath(path), size, mtime)
    with _identity_lock:
        cached = _identity_cache.get(key)
    if cached:
        return cached
    h = hashlib.sha256()
    for f, s in stats:
        name = (
            f.name if path in (f, f.parent) else f.relative_to(path).as_posix()
        )  # hashes as before lora/ counted
        h.update(f"{name}\0{s.st_size}\0".encode())
        _sample_file(h, f, s.st_size)
    ident = Identity(str(path), size, mtime, h.hexdigest())
    with _identity_lock:
        _identity_cache[key] = ident
    return ident


def describe_pair(llm_path: str | Path, adapter_path: str | Path) -> tuple[bool, str]:
    """(fits, one line for the UI): see :func:`lib_llmcond.info.describe_pair`."""
    from lib_llmcond.info import describe_pair as describe

    return describe(llm_path, adapter_path)
