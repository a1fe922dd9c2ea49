"""Read a GGUF file: metadata, tensor directory, memory-mapped tensor bytes, names mapped to ours.

Our own header parser (the format is a short, fixed layout), because gguf-py's ``GGUFReader`` builds a numpy view
per vocabulary string and takes ~10 s on a 262k-token file. Here large string arrays (the vocabulary, BPE merges)
are only skipped over and decoded on demand (``GGUFFile.strings``), so opening a file costs milliseconds.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFileError
from .dequant import quant_type

GGUF_MAGIC = b"GGUF"
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_NP = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
STRING, ARRAY = 8, 9


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class LazyStrings:
    """A string array left undecoded in the file: ``count`` strings starting at byte ``offset``."""

    offset: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str  # llama.cpp name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # torch order (GGUF stores ne reversed: ne[0] is the row length)
    type_id: int
    offset: int  # absolute byte offset in the file
    n_bytes: int

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """The raw bytes as rows: ``shape[:-1] + (bytes per row,)``."""
        qt = quant_type(self.type_id)
        return (*self.shape[:-1], self.shape[-1] // qt.block_size * qt.type_size)


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    data: np.ndarray = field(repr=False)  # the whole file, memory-mapped copy-on-write, uint8
    data_offset: int = 0  # where tensor data starts (the header, metadata and tensor directory come before)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_key(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def strings(self, key: str) -> list[str]:
        """A string-array metadata value, decoded (the vocabulary: ~0.1-0.3 s for 262k tokens)."""
        value = self.metadata.get(key)
        if isinstance(value, LazyStrings):
            return _decode_strings(self.data, value, self.path)
        return list(value) if value is not None else []

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of tensor ``name`` as a uint8 ``byte_shape`` view into the mapped file (no copy)."""
        info = self.tensors[name]
        return self.data[info.offset : info.offset + info.n_bytes].reshape(info.byte_shape)


def _error(path: Path, what: str) -> ModelFileError:
    return ModelFileError(
        what,
        path=path,
        fix="The file is not a complete GGUF model: download it again or re-export it with llama.cpp.",
    )


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise _Truncated
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise _Truncated
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                raise _Truncated
            pos += 8 + unpack(buf, pos)[0]
        if pos > end:
            raise _Truncated
        self.pos = pos

    def value(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            return self.array()
        if vtype not in _SCALARS:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.take(_SCALARS[vtype])

    def array(self) -> Any:
        itype, count = self.take("<I"), self.take("<Q")
        if itype == STRING:
            if count <= 64:
                return [self.string() for _ in range(count)]
            start = self.pos
            self.skip_strings(count)
            return LazyStrings(start, count)
        if itype == ARRAY:
            return [self.array() for _ in range(count)]
        if itype not in _NP:
            raise ValueError(f"unknown metadata array type {itype}")
        dt = np.dtype(_NP[itype])
        end = self.pos + dt.itemsize * count
        if end > len(self.buf):
            raise _Truncated
        values = np.frombuffer(self.buf[self.pos : end], dtype=dt)
        self.pos = end
        return values


def _decode_strings(data: np.ndarray, lazy: LazyStrings, path: Path) -> list[str]:
    buf = memoryview(data)
    out, pos = [], lazy.offset
    unpack = struct.Struct("<Q").unpack_from
    for _ in range(lazy.count):
        n = unpack(buf, pos)[0]
        out.append(bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", errors="replace"))
        pos += 8 + n
    return out


def open_gguf(path: str | Path) -> GGUFFile:
    """Parse the header and tensor directory of a GGUF file and memory-map its data (copy-on-write)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("GGUF file not found", path=path, fix="Check the path and the file name.")
    data = np.memmap(path, dtype=np.uint8, mode="c") if path.stat().st_size else np.zeros(0, np.uint8)
    cur = _Cursor(memoryview(data))
    try:
        if bytes(data[:4]) != GGUF_MAGIC:
            raise ModelFileError(
                "not a GGUF file (wrong magic bytes)",
                path=path,
                fix="Choose a .gguf model file or a model directory.",
            )
        cur.pos = 4
        version = cur.take("<I")
        if version not in (2, 3):
            raise ModelFileError(
                f"unsupported GGUF version {version}", path=path, fix="Re-export it with llama.cpp."
            )
        n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.take("<I"))
        infos = [_tensor_info(cur) for _ in range(n_tensors)]
    except _Truncated:
        raise _error(path, "the GGUF header is truncated") from None
    except (ValueError, struct.error, OverflowError) as exc:
        raise _error(path, f"the GGUF header is corrupt ({exc})") from None
    align = int(metadata.get("general.alignment", 32))
    start = (cur.pos + align - 1) // align * align
    tensors = {}
    for name, shape, type_id, rel in infos:
        info = _make_info(path, name, shape, type_id, start + rel)
        if info.offset + info.n_bytes > len(data):
            raise _error(path, f"the tensor data is truncated (tensor {name} ends past the end of the file)")
        tensors[name] = info
    return GGUFFile(path, version, metadata, tensors, data, start)


def _tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string()
    n_dims = cur.take("<I")
    if n_dims > 8:
        raise ValueError(f"tensor {name} has {n_dims} dimensions")
    ne = [cur.take("<Q") for _ in range(n_dims)]
    type_id, offset = cur.take("<I"), cur.take("<Q")
    return name, tuple(reversed(ne)), type_id, offset


def _make_info(path: Path, name: str, shape: tuple[int, ...], type_id: int, offset: int) -> TensorInfo:
    qt = quant_type(type_id, path=path, tensor=name)
    numel = int(np.prod(shape)) if shape else 1
    if shape and shape[-1] % qt.block_size:
        raise _error(path, f"tensor {name} rows are not whole {qt.name} blocks")
    return TensorInfo(name, shape, type_id, offset, numel // qt.block_size * qt.type_size)


# --- names -------------------------------------------------------------------------------------------------------

_COMMON = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# llama.cpp block tensor -> HF module, per architecture (the norms around the MLP differ by family).
BLOCK_NAMES: dict[str, dict[str, str]] = {
    "gemma3": {
        **_COMMON,
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    "qwen3": {**_COMMON, "ffn_norm": "post_attention_layernorm"},
}
GLOBAL_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm"}
SKIPPED = {"output", "rope_freqs"}  # LM head (we never use it) and precomputed rope tables
NORM_PLUS_ONE = {"gemma3"}  # llama.cpp stores Gemma RMSNorm weights as w + 1
_BLOCK = re.compile(r"blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$")


def hf_name(arch: str, gguf_name: str) -> str | None:
    """Our (HF-style) parameter name for a llama.cpp tensor name; None for tensors we do not use."""
    m = _BLOCK.match(gguf_name)
    if m:
        part = BLOCK_NAMES[arch].get(m.group(2))
        return None if part is None else f"layers.{m.group(1)}.{part}.{m.group(3)}"
    base, _, kind = gguf_name.rpartition(".")
    if base in SKIPPED:
        return None
    return f"{GLOBAL_NAMES[base]}.{kind}" if base in GLOBAL_NAMES else None


def is_stored_plus_one(arch: str, gguf_name: str) -> bool:
    return arch in NORM_PLUS_ONE and gguf_name.endswith("norm.weight")


def check_architecture(gf: GGUFFile) -> str:
    arch = gf.architecture
    if arch not in BLOCK_NAMES:
        raise ModelFileError(
            f"unsupported GGUF architecture {arch or '(none)'!r}",
            path=gf.path,
            fix=f"llmcond runs GGUF text encoders of these architectures: {', '.join(sorted(BLOCK_NAMES))}.",
        )
    return arch


# --- hyperparameters ---------------------------------------------------------------------------------------------

GEMMA3_DEFAULTS = {"query_pre_attn_scalar": 256, "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6}


def hf_config(gf: GGUFFile) -> dict[str, Any]:
    """The file's hyperparameters as an HF ``config.json``-style dict (Gemma-3 defaults where metadata lacks them)."""
    arch = check_architecture(gf)
    k = gf.arch_key
    heads = int(k("attention.head_count"))
    hidden = int(k("embedding_length"))
    n_layers = int(k("block_count"))
    cfg: dict[str, Any] = {
        "vocab_size": _vocab_size(gf),
        "hidden_size": hidden,
        "intermediate_size": int(k("feed_forward_length")),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(k("attention.head_count_kv", heads)),
        "head_dim": int(k("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(f"{k('attention.layer_norm_rms_epsilon', 1e-6):.7g}"),  # stored as float32
        "rope_theta": float(f"{k('rope.freq_base', 10000.0):.7g}"),
        "max_position_embeddings": int(k("context_length", 32768)),
    }
    if arch == "gemma3":
        pattern = int(k("attention.sliding_window_pattern", GEMMA3_DEFAULTS["sliding_window_pattern"]))
        cfg.update(
            model_type="gemma3_text",
            query_pre_attn_scalar=GEMMA3_DEFAULTS["query_pre_attn_scalar"],
            rope_local_base_freq=GEMMA3_DEFAULTS["rope_local_base_freq"],
            sliding_window=int(k("attention.sliding_window", 512)),
            sliding_window_pattern=pattern,
            layer_types=[
                "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
            ],
            hidden_activation="gelu_pytorch_tanh",
        )
    else:
        cfg.update(
            model_type="qwen3", hidden_act="silu", tie_word_embeddings="output.weight" not in gf.tensors
        )
    return cfg


def _vocab_size(gf: GGUFFile) -> int:
    emb = gf.tensors.get("token_embd.weight")
    if emb is None:
        raise ModelFileError(
            "the GGUF has no token_embd.weight tensor", path=gf.path, fix="Re-export it with llama.cpp."
        )
    return emb.shape[0]


# --- for the model list and `info` -------------------------------------------------------------------------------

FAMILY_OF_ARCH = {"gemma3": "gemma3", "qwen3": "qwen3"}


def gguf_family(path: str | Path) -> str:
    """Our family name ("gemma3", "qwen3") of a GGUF file, from its metadata only."""
    gf = open_gguf(path)
    return FAMILY_OF_ARCH[check_architecture(gf)]


def describe_gguf(path: str | Path) -> dict[str, Any]:
    """What `info` shows of a GGUF file: family, shapes, quantization types with their sizes."""
    from collections import Counter

    gf = open_gguf(path)
    cfg = hf_config(gf)
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for info in gf.tensors.values():
        name = quant_type(info.type_id).name
        counts[name] += 1
        sizes[name] += info.n_bytes
    quants = ", ".join(
        f"{n} x{counts[n]} ({sizes[n] / 2**20:.1f} MiB)" for n in sorted(counts, key=lambda n: -sizes[n])
    )
    return {
        "kind": "llm",
        "format": "gguf",
        "family": FAMILY_OF_ARCH[gf.architecture],
        "name": str(gf.metadata.get("general.name", "")),
        "hidden_size": cfg["hidden_size"],
        "layers": cfg["num_hidden_layers"],
        "heads": f"{cfg['num_attention_heads']} query / {cfg['num_key_value_heads']} key-value, "
        f"head_dim {cfg['head_dim']}",
        "vocab_size": cfg["vocab_size"],
        "tensors": len(gf.tensors),
        "quantization": quants,
        "file_size": f"{gf.path.stat().st_size / 2**20:.1f} MiB",
        "tokenizer": str(gf.metadata.get("tokenizer.ggml.model", "(none)")),
        "compatible_adapters": f"adapters taking {cfg['hidden_size']}-d hidden states",
    }
