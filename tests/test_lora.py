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


def test_adding_or_replacing_a_lora_changes_the_identity_and_what_the_engine_returns(tmp_path):
    import os

    from lib_llmcond.engine import EncodeOptions, Engine
    from lib_llmcond.models import identity
    from lib_llmcond.tiny import build_tiny_adapter, build_tiny_gemma

    llm = build_tiny_gemma(tmp_path / "gemma")
    adapter = build_tiny_adapter(tmp_path / "adapter.safetensors")
    engine = Engine(cache_size=8)
    opts = EncodeOptions(llm=str(llm), adapter=str(adapter), device="cpu", llm_dtype="float32", memory="keep")
    shapes = {"layers.0.self_attn.q_proj": (64, 64)}

    def encode():
        return identity(llm), engine.signature(opts), engine.encode_texts(["a cat"], opts)[0].crossattn

    plain = encode()
    write_lora(llm / "lora", ["q_proj"], alpha=8, shapes=shapes)
    added = encode()
    cfg = llm / "lora" / "adapter_config.json"
    cfg.write_text(cfg.read_text().replace('"lora_alpha": 8', '"lora_alpha": 9'))  # same size, new content
    later = added[0].mtime_ns + 10**9
    os.utime(cfg, ns=(later, later))
    replaced = encode()
    for a, b in ((plain, added), (added, replaced)):
        assert a[0].fingerprint != b[0].fingerprint and a[1] != b[1]  # identity and host cache-key signature
        assert not torch.equal(a[2], b[2])  # the registry reloaded: no stale model, no stale cached encoding
    assert (
        len([e for e in engine._models.entries() if e.key[0] == "llm"]) == 1
    )  # the old versions were dropped
