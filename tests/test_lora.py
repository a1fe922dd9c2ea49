"""PEFT LoRA merging against a hand computation, and its refusals."""

import json

import pytest
import torch
from safetensors.torch import save_file

from lib_llmcond.encoders.llm import load_llm
from lib_llmcond.encoders.lora import merge_lora
from lib_llmcond.encoders.weights import load_transformer
from lib_llmcond.errors import IncompatibleModelsError
from lib_llmcond.tiny.llm import write_tiny_llm
from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer


def write_lora(
    d, targets, r=4, alpha=8, rslora=False, module_names=("layers.0.self_attn.q_proj",), shapes=None
):
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": targets, "use_rslora": rslora}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for name in module_names:
        out_f, in_f = (shapes or {}).get(name, (64, 64))
        tensors[f"base_model.model.model.{name}.lora_A.weight"] = torch.randn(r, in_f, generator=g)
        tensors[f"base_model.model.model.{name}.lora_B.weight"] = torch.randn(out_f, r, generator=g)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    return tensors


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_equals_hand_computation(tmp_path, rslora):
    d = write_tiny_llm(tmp_path / "q", "qwen3")
    _, model = load_transformer(d, dtype=torch.float32)
    before = model.layers[0].self_attn.q_proj.weight.clone()
    t = write_lora(tmp_path / "lora", ["q_proj", "v_proj"], r=4, alpha=8, rslora=rslora)
    assert merge_lora(model, tmp_path / "lora") == 1
    a = t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    scale = 8 / 2 if rslora else 8 / 4  # alpha / sqrt(r) or alpha / r
    expected = before + scale * (b @ a)
    assert torch.allclose(model.layers[0].self_attn.q_proj.weight, expected, atol=1e-6)


def test_lora_subfolder_is_merged_at_load(tmp_path):
    d = write_tiny_llm(tmp_path / "q", "qwen3")
    write_tiny_gemma_tokenizer(d)
    plain = load_llm(d, dtype=torch.float32).model.layers[0].self_attn.q_proj.weight.clone()
    write_lora(d / "lora", ["q_proj"])
    merged = load_llm(d, dtype=torch.float32).model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(plain, merged)


def test_mismatched_lora_is_refused(tmp_path):
    d = write_tiny_llm(tmp_path / "q", "qwen3")
    _, model = load_transformer(d, dtype=torch.float32)
    write_lora(tmp_path / "a", ["q_proj"], module_names=("layers.9.self_attn.q_proj",))
    with pytest.raises(IncompatibleModelsError, match="does not have"):
        merge_lora(model, tmp_path / "a")
    write_lora(tmp_path / "b", ["q_proj"], shapes={"layers.0.self_attn.q_proj": (32, 64)})
    with pytest.raises(IncompatibleModelsError, match="delta"):
        merge_lora(model, tmp_path / "b")
