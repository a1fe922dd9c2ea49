"""TINY RANDOM LLMs in the exact HF directory layout, for tests, the demo and benchmarks (not real weights).

Every weight is random (norm weights too), and tiny configs keep both sliding and global layers. The same
writer produces real-shaped random models from :data:`REAL_SHAPES` for benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lib_llmcond.encoders.config import config_from_hf
from lib_llmcond.encoders.transformer import TextTransformer

# HF config.json contents per family for a tiny model (values chosen to exercise every code path)
TINY: dict[str, dict[str, Any]] = {
    "gemma3": {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "sliding_window": 8,
        "sliding_window_pattern": 2,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "query_pre_attn_scalar": 16,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 32768,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    },
    "qwen3": {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "attention_bias": False,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
    },
    "t5gemma": {
        "model_type": "t5gemma",
        "architectures": ["T5GemmaForConditionalGeneration"],
        "is_encoder_decoder": True,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "encoder": {
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10_000.0,
            "sliding_window": 6,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            "query_pre_attn_scalar": 16,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 8192,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
        },
    },
}

# Real shapes (reference.md §1) for benchmarks: same writers, random weights.
REAL_SHAPES: dict[str, dict[str, Any]] = {
    "gemma-3-1b": {
        **TINY["gemma3"],
        "vocab_size": 262144,
        "hidden_size": 1152,
        "intermediate_size": 6912,
        "num_hidden_layers": 26,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)],
        "query_pre_attn_scalar": 256,
    },
    "qwen3-4b": {
        **TINY["qwen3"],
        "vocab_size": 151936,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
    },
}

PREFIX = {"gemma3": "model.", "qwen3": "model.", "t5gemma": "model.encoder."}


def random_state(model: torch.nn.Module, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random values for every parameter: N(0, 0.02) for matrices, N(0, 0.3) for norm weights."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        std = 0.3 if p.dim() == 1 else 0.02
        state[name] = (torch.randn(p.shape, generator=gen) * std).to(dtype)
    return state


def write_tiny_llm(
    directory: str | Path,
    family: str = "gemma3",
    *,
    vocab_size: int = 512,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    config: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` of a random model; ``config`` replaces the tiny preset."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    raw = {**(config or TINY[family]), "vocab_size": vocab_size, **overrides}
    if family == "t5gemma":  # the encoder and decoder sections carry the vocabulary too
        raw["encoder"] = {**raw["encoder"], "vocab_size": vocab_size}
        raw["decoder"] = {**raw.get("decoder", raw["encoder"]), "vocab_size": vocab_size}
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")
    cfg = config_from_hf(raw)
    with torch.device("meta"):
        model = TextTransformer(cfg)
    state = random_state(model, seed, dtype)
    prefix = PREFIX[family]
    tensors = {prefix + k: v.contiguous() for k, v in state.items()}
    if (
        family == "t5gemma"
    ):  # a full seq2seq checkpoint: the decoder is stored too, and must be skipped on load
        tensors["model.decoder.embed_tokens.weight"] = state["embed_tokens.weight"].clone()
        tensors["model.decoder.norm.weight"] = state["norm.weight"].clone()
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return directory
