"""Pure-torch dequantization of GGML blocks, one table entry per quant type.

Quantized data is a uint8 tensor of whole blocks, ``[..., n_bytes]``. Each block decoder receives the blocks as a
``[n_blocks, type_size]`` uint8 tensor and returns ``[n_blocks, block_size]`` float32 values. Q2_K and Q3_K are
written per element: for element ``i`` of a 256-value super-block, fixed index tables say which byte and which bit
shift hold its quant, high bits and scale. The common Q4_K/Q5_K/Q6_K use the same layouts by reshapes (faster).
Everything is plain tensor ops and runs on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...errors import ModelFileError

# GGML type ids (ggml.h), stable across llama.cpp versions.
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 10, 11, 12, 13, 14, 30
QK_K = 256

Decoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class QuantType:
    name: str
    block_size: int  # values per block
    type_size: int  # bytes per block
    decode: Decoder


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian fp16 at byte ``start`` of each block, as a float32 column ``[n, 1]``."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _i(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int16)


_TABLES: dict[tuple[str, torch.device], dict[str, torch.Tensor]] = {}


def _table(
    name: str, device: torch.device, build: Callable[[], dict[str, list[int]]]
) -> dict[str, torch.Tensor]:
    key = (name, device)
    if key not in _TABLES:
        _TABLES[key] = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in build().items()}
    return _TABLES[key]


def _gather_bits(field: torch.Tensor, index: torch.Tensor, shift: torch.Tensor, mask: int) -> torch.Tensor:
    """``(field[:, index[i]] >> shift[i]) & mask`` for every element ``i``, as int16."""
    return (_i(field[:, index]) >> shift.to(torch.int16)) & mask


# --- 32-value block types -------------------------------------------------------------------------------------------


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """16 bytes -> 32 values: low nibbles are elements 0..15, high nibbles 16..31."""
    return torch.cat([_i(qs) & 0x0F, _i(qs) >> 4], dim=1)


def _bits(x: torch.Tensor, width: int) -> torch.Tensor:
    """Split every byte of ``x [..., k]`` into ``8 // width`` fields, lowest first: ``[..., k * 8 // width]``."""
    shifts = torch.arange(0, 8, width, device=x.device, dtype=torch.int16)
    return ((_i(x)[..., None] >> shifts) & ((1 << width) - 1)).flatten(-2)


def _fifth_bits(qh: torch.Tensor) -> torch.Tensor:
    """4 bytes (a little-endian uint32) -> bit j for element j (0..31)."""
    return _bits(qh, 1)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * b[:, 2:34].contiguous().view(torch.int8).float()


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * (_nibbles(b[:, 2:18]) - 8).float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b, 0) * _nibbles(b[:, 4:20]).float() + _f16(b, 2)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 6:22]) | (_fifth_bits(b[:, 2:6]) << 4)
    return _f16(b, 0) * (q - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 8:24]) | (_fifth_bits(b[:, 4:8]) << 4)
    return _f16(b, 0) * q.float() + _f16(b, 2)


# --- K-quants (256-value super-blocks) ------------------------------------------------------------------------------


def _q2_k_table() -> dict[str, list[int]]:
    # 2 halves of 128; in each, 4 shifts of the same 32 bytes.
    i = range(QK_K)
    return {
        "q_idx": [32 * (k // 128) + k % 32 for k in i],
        "q_shift": [2 * ((k % 128) // 32) for k in i],
        "sub": [k // 16 for k in i],
    }


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    t = _table("q2_k", b.device, _q2_k_table)
    scales, qs = _i(b[:, 0:16]), b[:, 16:80]
    q = _gather_bits(qs, t["q_idx"], t["q_shift"], 3).float()
    sc = scales[:, t["sub"]]
    return _f16(b, 80) * (sc & 0x0F).float() * q - _f16(b, 82) * (sc >> 4).float()


def _q3_k_table() -> dict[str, list[int]]:
    i = range(QK_K)
    return {
        "q_idx": [32 * (k // 128) + k % 32 for k in i],
        "q_shift": [2 * ((k % 128) // 32) for k in i],
        "h_idx": [k % 32 for k in i],
        "h_shift": [4 * (k // 128) + (k % 128) // 32 for k in i],
        "sub": [k // 16 for k in i],
    }


def _q3_k_scales(packed: torch.Tensor) -> torch.Tensor:
    """12 bytes -> 16 signed 6-bit scales: low 4 bits in bytes 0..7 (two per byte), high 2 bits in bytes 8..11."""
    j = torch.arange(16, device=packed.device)
    low = (_i(packed[:, j % 8]) >> (4 * (j // 8)).to(torch.int16)) & 0x0F
    high = (_i(packed[:, 8 + j % 4]) >> (2 * (j // 4)).to(torch.int16)) & 0x03
    return (low | (high << 4)) - 32


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    t = _table("q3_k", b.device, _q3_k_table)
    hmask, qs = b[:, 0:32], b[:, 32:96]
    q = _gather_bits(qs, t["q_idx"], t["q_shift"], 3)
    h = _gather_bits(hmask, t["h_idx"], t["h_shift"], 1)
    sc = _q3_k_scales(b[:, 96:108])[:, t["sub"]]
    return _f16(b, 108) * (sc * (q - 4 * (1 - h))).float()


def _k4_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes -> 8 6-bit scales and 8 6-bit mins (the Q4_K/Q5_K packing)."""
    p = _i(packed)
    sc = torch.cat([p[:, 0:4] & 63, (p[:, 8:12] & 0x0F) | ((p[:, 0:4] >> 6) << 4)], dim=1)
    mn = torch.cat([p[:, 4:8] & 63, (p[:, 8:12] >> 4) | ((p[:, 4:8] >> 6) << 4)], dim=1)
    return sc, mn


def _k4_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """128 bytes -> 256 values: per 32-byte chunk, 32 low nibbles then 32 high nibbles."""
    q = _i(qs).reshape(-1, 4, 1, 32)
    return torch.cat([q & 0x0F, q >> 4], dim=2).reshape(-1, QK_K)


def _k4_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """d * scale * q - dmin * min over 8 sub-blocks of 32."""
    sc, mn = _k4_scales_mins(b[:, 4:16])
    d, dmin = _f16(b, 0), _f16(b, 2)
    out = (d * sc.float())[:, :, None] * q.reshape(-1, 8, 32).float() - (dmin * mn.float())[:, :, None]
    return out.reshape(-1, QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    return _k4_affine(b, _k4_nibbles(b[:, 16:144]))


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # the fifth bit of element i is bit (i // 32) of qh[i % 32]
    high = _bits(b[:, 16:48], 1).reshape(-1, 32, 8).transpose(1, 2).reshape(-1, QK_K)
    return _k4_affine(b, _k4_nibbles(b[:, 48:176]) | (high << 4))


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # 2 halves of 128 values; in each, quarter k of 32 takes its low 4 bits from ql bytes 32*(k&1).. (the high
    # nibble when k >= 2) and its high 2 bits from qh (32 bytes) at shift 2k; one int8 scale per 16 values.
    ql = _i(b[:, 0:128]).reshape(-1, 2, 1, 64)
    low = torch.cat([ql & 0x0F, ql >> 4], dim=2).reshape(-1, 2, 128)
    high = (
        _bits(b[:, 128:192].reshape(-1, 2, 32), 2).reshape(-1, 2, 32, 4).transpose(2, 3).reshape(-1, 2, 128)
    )
    q = ((low | (high << 4)) - 32).reshape(-1, 16, 16).float()
    sc = b[:, 192:208].contiguous().view(torch.int8).float()
    return ((_f16(b, 208) * sc)[:, :, None] * q).reshape(-1, QK_K)


# --- float types ----------------------------------------------------------------------------------------------------


def _f32(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float32)


def _f16_plain(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).float()


def _bf16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.bfloat16).float()


QUANT_TYPES: dict[int, QuantType] = {
    F32: QuantType("F32", 1, 4, _f32),
    F16: QuantType("F16", 1, 2, _f16_plain),
    BF16: QuantType("BF16", 1, 2, _bf16),
    Q8_0: QuantType("Q8_0", 32, 34, _q8_0),
    Q4_0: QuantType("Q4_0", 32, 18, _q4_0),
    Q4_1: QuantType("Q4_1", 32, 20, _q4_1),
    Q5_0: QuantType("Q5_0", 32, 22, _q5_0),
    Q5_1: QuantType("Q5_1", 32, 24, _q5_1),
    Q2_K: QuantType("Q2_K", QK_K, 84, _q2_k),
    Q3_K: QuantType("Q3_K", QK_K, 110, _q3_k),
    Q4_K: QuantType("Q4_K", QK_K, 144, _q4_k),
    Q5_K: QuantType("Q5_K", QK_K, 176, _q5_k),
    Q6_K: QuantType("Q6_K", QK_K, 210, _q6_k),
}

FLOAT_TYPES = frozenset({F32, F16, BF16})
_FLOAT_DTYPES = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}


def quant_type(type_id: int, *, path: object = None, tensor: str | None = None) -> QuantType:
    """The table entry for ``type_id``; a ``ModelFileError`` naming the type if we cannot decode it."""
    qt = QUANT_TYPES.get(int(type_id))
    if qt is None:
        name = _ggml_type_name(type_id)
        where = f" (tensor {tensor})" if tensor else ""
        supported = ", ".join(q.name for q in QUANT_TYPES.values())
        raise ModelFileError(
            f"unsupported GGUF quantization type {name}{where}",
            path=path,
            fix=f"Use a GGUF file quantized as one of: {supported}.",
        )
    return qt


def _ggml_type_name(type_id: int) -> str:
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(int(type_id)).name
    except Exception:
        return f"#{int(type_id)}"


def dequantize(
    data: torch.Tensor, type_id: int, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Decode raw GGUF bytes ``data`` (uint8, any shape holding whole blocks) into a ``shape`` tensor of ``dtype``.

    Runs on ``data``'s device. Float types are reinterpreted without arithmetic.
    """
    qt = quant_type(type_id)
    if type_id in FLOAT_TYPES:
        raw = data.reshape(-1).view(_FLOAT_DTYPES[type_id])
        return raw.reshape(shape).to(dtype)
    blocks = data.reshape(-1, qt.type_size)
    return qt.decode(blocks).reshape(shape).to(dtype)


def byte_row_size(type_id: int, row_len: int) -> int:
    """Bytes of one row of ``row_len`` values (rows always hold whole blocks in GGUF)."""
    qt = quant_type(type_id)
    return row_len // qt.block_size * qt.type_size
