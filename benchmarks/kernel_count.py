"""How many device kernels one accelerator encode launches, counted on the CPU.

On a GPU a cond + uncond pair of the benchmark shapes is bound by kernel count, not arithmetic (see
``gpu_check``'s profile): every small elementwise kernel costs a few microseconds even inside a CUDA graph. This
script runs :func:`lib_llmcond.gpu_encode.forward` on narrow models with the real layer structure (layer count,
heads, layer types, norms; widths shrunk, the count does not depend on them) with the accelerator branches taken,
and counts the aten ops that launch work: every op but views and allocations. A CPU count is a proxy: a few
ops launch more than one kernel on CUDA (cuDNN attention, GEMMs with split-K), none launch fewer.

    python -m benchmarks.kernel_count            # a table per model, ops by count
"""

from __future__ import annotations

import argparse
from collections import Counter
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SKIP = {"empty", "empty_strided", "empty_like", "detach", "lift_fresh", "_local_scalar_dense", "set_"}


class OpCounter(TorchDispatchMode):
    """Counts aten ops that launch work (views and allocations skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in SKIP:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def narrow_config(family_config: dict) -> dict:
    """The same layer structure with small widths (kernel counts do not depend on widths)."""
    heads, kv = family_config["num_attention_heads"], family_config["num_key_value_heads"]
    return {
        **family_config,
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 96,
        "head_dim": 16,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "query_pre_attn_scalar": 16,
    }


def narrowed(m) -> dict:
    """``m``'s config.json with the LLM's widths shrunk (T5Gemma keeps its encoder under ``encoder``)."""
    if m.family == "t5gemma":
        return {**m.config, "encoder": narrow_config(m.config["encoder"])}
    return narrow_config(m.config)


def count(
    llm_config: dict, adapter_preset: str, rows: int, tokens: int, prefix_len: int, lean: bool = True
) -> Counter:
    """Ops of one static encode; ``lean`` False: the LLM's op-by-op layers (the CPU's) for comparison."""
    from lib_llmcond import gpu_encode
    from lib_llmcond.adapters.llm_to_sdxl import PRESETS, LLMToSDXLAdapter
    from lib_llmcond.encoders import transformer
    from lib_llmcond.encoders.config import config_from_hf
    from lib_llmcond.encoders.llm import LLM
    from lib_llmcond.encoders.transformer import TextTransformer, fuse_projections

    cfg = config_from_hf(llm_config)
    torch.manual_seed(0)
    model = TextTransformer(cfg).to(torch.bfloat16).eval()
    fuse_projections(model)
    llm = LLM(None, cfg, model, None, torch.bfloat16, torch.device("cpu"))  # type: ignore[arg-type]
    preset = PRESETS[adapter_preset]
    adapter = LLMToSDXLAdapter(
        type(preset)(
            llm_dim=cfg.hidden_size, n_wide=preset.n_wide, n_narrow=preset.n_narrow, dim=64, mlp_hidden=96
        )
    )
    prefix = tuple(range(3, 3 + prefix_len)) if cfg.causal else ()
    b, n = rows, gpu_encode.bucket(tokens)
    slots = gpu_encode.bucket(min(tokens, adapter.max_input_tokens))
    inputs = {
        "ids": torch.randint(3, 500, (b, n)),
        "mask": torch.ones(b, n, dtype=torch.long),
        "pos": torch.arange(len(prefix), len(prefix) + n).expand(b, n),
        "gather": torch.arange(b * slots).view(b, slots),
        "positions": torch.arange(slots).expand(b, slots),
        "keep": torch.ones(b, slots, dtype=torch.bool),
    }
    with mock.patch.object(transformer, "on_accelerator", lambda device: lean):
        gpu_encode.forward(llm, adapter, inputs, prefix, False)  # the warm-up a capture runs first (prefix
        # state, norm scales, the adapter's query constants: made once, outside the graph)
        with OpCounter() as counter:
            gpu_encode.forward(llm, adapter, inputs, prefix, False)
    return counter.ops


def main(argv: list[str] | None = None) -> None:
    from benchmarks.models import bench_models

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2, help="2: a cond + uncond pair")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--prefix", type=int, default=27, help="cached chat-template prefix (causal models)")
    args = parser.parse_args(argv)
    print("| model | rows x tokens | layers | ops that launch work | by op (top 12) |\n|---|---|---|---|---|")
    for key in ("gemma", "t5gemma"):
        m = bench_models()[key]
        for lean in (False, True):
            ops = count(narrowed(m), m.adapter_preset, args.rows, args.tokens, args.prefix, lean)
            top = ", ".join(f"{op} {k}" for op, k in ops.most_common(12))
            layers = "lean" if lean else "op by op"
            print(f"| {m.name} | {args.rows} x {args.tokens} | {layers} | {sum(ops.values())} | {top} |")


if __name__ == "__main__":
    main()
