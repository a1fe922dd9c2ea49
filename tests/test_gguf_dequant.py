"""Dequantization per quant type against gguf-py's numpy reference (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

from lib_llmcond.encoders.gguf import dequant
from lib_llmcond.errors import ModelFileError

# byte offsets of the fp16 scale fields in each block (random bytes there could be inf/nan)
_FP16_FIELDS = {
    T.Q8_0: [0],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def _random_blocks(qtype: T, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Well-formed random blocks: random quant bytes, sane fp16 scales."""
    _, type_size = quants.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in _FP16_FIELDS[qtype]:
        scale = rng.uniform(-0.1, 0.1, size=n_blocks).astype(np.float16)
        blocks[:, off : off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return blocks


@pytest.mark.parametrize("qtype", list(_FP16_FIELDS), ids=lambda t: t.name)
def test_random_blocks_match_gguf_py(qtype: T) -> None:
    rng = np.random.default_rng(int(qtype))
    type_size = quants.GGML_QUANT_SIZES[qtype][1]
    rows, blocks_per_row = 3, 2
    raw = _random_blocks(qtype, rows * blocks_per_row, rng).reshape(rows, blocks_per_row * type_size)
    expected = quants.dequantize(raw, qtype).astype(np.float32)
    got = dequant.dequantize(torch.from_numpy(raw), int(qtype), expected.shape)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "qtype", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.BF16, T.F16], ids=lambda t: t.name
)
def test_quantized_by_gguf_py_roundtrip(qtype: T) -> None:
    """Blocks written by gguf-py's quantizer decode to what gguf-py decodes, close to the source values."""
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    raw = quants.quantize(x, qtype)
    expected = quants.dequantize(raw, qtype).astype(np.float32)
    got = dequant.dequantize(torch.from_numpy(raw.view(np.uint8)), int(qtype), x.shape)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert np.abs(got.numpy() - x).max() < 0.3  # 4-bit types: half a step of ~0.5


def test_float_types_and_dtype() -> None:
    x = torch.randn(3, 8)
    raw = x.numpy().view(np.uint8)
    assert torch.equal(dequant.dequantize(torch.from_numpy(raw), 0, (3, 8)), x)
    got = dequant.dequantize(torch.from_numpy(raw), 0, (3, 8), dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, x.bfloat16())


def test_unknown_type_is_a_clear_error() -> None:
    with pytest.raises(ModelFileError, match=r"IQ2_XXS.*Q8_0"):
        dequant.dequantize(torch.zeros(66, dtype=torch.uint8), int(T.IQ2_XXS), (256,))


@pytest.mark.cuda
@pytest.mark.parametrize("qtype", list(_FP16_FIELDS), ids=lambda t: t.name)
def test_cuda_matches_cpu(qtype: T) -> None:
    raw = torch.from_numpy(_random_blocks(qtype, 8, np.random.default_rng(3)))
    n = 8 * quants.GGML_QUANT_SIZES[qtype][0]
    cpu = dequant.dequantize(raw, int(qtype), (n,))
    gpu = dequant.dequantize(raw.cuda(), int(qtype), (n,))
    torch.testing.assert_close(gpu.cpu(), cpu)
