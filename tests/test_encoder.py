"""Native encoder behaviour that needs no oracle: padding invariance, loading errors, dtype."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_llmcond.encoders.config import config_from_hf
from lib_llmcond.encoders.weights import load_transformer
from lib_llmcond.errors import ModelFileError
from lib_llmcond.tiny.llm import TINY, write_tiny_llm


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp("g3"), "gemma3", seed=5)


@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
def test_right_padded_batch_equals_rows_alone(tmp_path, family):
    _, model = load_transformer(write_tiny_llm(tmp_path, family), dtype=torch.float32)
    a = torch.randint(3, 512, (1, 20))  # longer than the sliding window
    b = torch.randint(3, 512, (1, 7))
    batch = torch.zeros(2, 20, dtype=torch.long)
    batch[0], batch[1, :7] = a[0], b[0]
    mask = torch.zeros(2, 20, dtype=torch.long)
    mask[0], mask[1, :7] = 1, 1
    with torch.no_grad():
        both = model(batch, mask)
        alone_a, alone_b = model(a, torch.ones_like(a)), model(b, torch.ones_like(b))
    assert torch.allclose(both[0], alone_a[0], atol=1e-5)
    assert torch.allclose(both[1, :7], alone_b[0], atol=1e-5)


def test_loads_straight_into_bf16(gemma_dir):
    _, model = load_transformer(gemma_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())


def test_missing_config(tmp_path):
    with pytest.raises(ModelFileError, match="no config.json"):
        load_transformer(tmp_path, dtype=torch.float32)


def test_unknown_family(tmp_path):
    with pytest.raises(ModelFileError, match="unsupported model type 'llama'"):
        config_from_hf({"model_type": "llama"}, path=tmp_path / "config.json")


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**TINY["gemma3"], "vocab_size": 512}))
    with pytest.raises(ModelFileError, match="no .safetensors"):
        load_transformer(tmp_path, dtype=torch.float32)


def test_wrong_shape_missing_and_unexpected(tmp_path, gemma_dir):
    state = load_file(str(gemma_dir / "model.safetensors"))
    cfg_text = (gemma_dir / "config.json").read_text()

    def write(d, st):
        d.mkdir()
        (d / "config.json").write_text(cfg_text)
        save_file(st, str(d / "model.safetensors"))
        return d

    bad_shape = dict(state, **{"model.norm.weight": torch.zeros(3)})
    with pytest.raises(ModelFileError, match=r"model.norm.weight has shape \[3\]"):
        load_transformer(write(tmp_path / "shape", bad_shape), dtype=torch.float32)
    missing = {k: v for k, v in state.items() if k != "model.norm.weight"}
    with pytest.raises(ModelFileError, match="missing tensors: norm.weight"):
        load_transformer(write(tmp_path / "missing", missing), dtype=torch.float32)
    extra = dict(state, **{"model.layers.0.surprise": torch.zeros(2)})
    with pytest.raises(ModelFileError, match="unexpected tensors: model.layers.0.surprise"):
        load_transformer(write(tmp_path / "extra", extra), dtype=torch.float32)


def test_truncated_weights(tmp_path, gemma_dir):
    d = tmp_path / "trunc"
    d.mkdir()
    (d / "config.json").write_text((gemma_dir / "config.json").read_text())
    data = (gemma_dir / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load_transformer(d, dtype=torch.float32)
