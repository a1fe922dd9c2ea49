import math

import numpy as np
import pytest
import torch

from lib_llmcond.conditioning import VECTOR_DIM, make_vector, pad_blocks, size_embedding


def reference_embedding(x: float, dim: int = 256) -> np.ndarray:
    """The SDXL size embedding written from its definition, one scalar at a time, in float64."""
    half = dim // 2
    f = np.array([math.exp(-math.log(10000.0) * j / half) for j in range(half)])
    return np.concatenate([np.cos(x * f), np.sin(x * f)])


@pytest.mark.parametrize("value", [0, 1, 64, 832, 1024, 1216, 4096])
def test_size_embedding_matches_definition(value):
    ours = size_embedding(torch.tensor([[float(value)]]))[0].double().numpy()
    # fp32 arguments: |x f| up to 4096 loses ~4096 * 2**-24 absolute in the angle
    assert np.max(np.abs(ours - reference_embedding(value))) < 5e-4


def test_vector_layout_order():
    pooled = torch.randn(2, 1280)
    v = make_vector(
        pooled, height=832, width=1216, crop_top=16, crop_left=32, target_height=1024, target_width=960
    )
    assert v.shape == (2, VECTOR_DIM)
    assert torch.equal(v[:, :1280], pooled)
    for i, value in enumerate([832, 1216, 16, 32, 1024, 960]):
        part = v[0, 1280 + 256 * i : 1280 + 256 * (i + 1)].double().numpy()
        assert np.allclose(part, reference_embedding(value), atol=5e-4), i
    assert torch.equal(v[0, 1280:], v[1, 1280:])


def test_target_defaults_to_size():
    a = make_vector(torch.zeros(1, 1280), height=768, width=1344)
    b = make_vector(torch.zeros(1, 1280), height=768, width=1344, target_height=768, target_width=1344)
    assert torch.equal(a, b)


def test_make_vector_rejects_wrong_width():
    with pytest.raises(ValueError, match="1280"):
        make_vector(torch.zeros(1, 2048), height=1024, width=1024)


def test_pad_blocks_uses_filler():
    filler = torch.full((3, 2), 7.0)
    a, b = torch.ones(6, 2), torch.zeros(3, 2)
    out = pad_blocks([a, b], filler)
    assert out.shape == (2, 6, 2)
    assert torch.equal(out[1, 3:], filler)
    with pytest.raises(ValueError):
        pad_blocks([torch.ones(4, 2), b], filler)
