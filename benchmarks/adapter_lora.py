"""What an adapter LoRA costs: merging it into a patched copy, the copy's first forward (which packs its new
weights for oneDNN on the CPU) and its steady forward, against the base adapter.

Random weights of a real preset (``gemma``: 305 M parameters; ``tiny`` for a smoke run) and a random rank-``--rank`` LoRA on every
target of the stem table (all linears and the q/k/v projections). Prints a Markdown table and writes JSON.

    python -m benchmarks.adapter_lora [--preset gemma] [--rank 32] [--tokens 77] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import save_file

from lib_llmcond.adapters.llm_to_sdxl import PRESETS, LLMToSDXLAdapter, LLMToSDXLConfig
from lib_llmcond.adapters.lora import PREFIX, patch_adapter, stem_table
from lib_llmcond.tiny.adapter import llm_to_sdxl_state_dict

DEFAULT_OUT = Path(__file__).parent / "results-committed" / "adapter_lora.json"
CONFIGS = {**PRESETS, "tiny": LLMToSDXLConfig(llm_dim=40, n_wide=1, n_narrow=1, dim=64, mlp_hidden=96)}


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def base_adapter(preset: str) -> LLMToSDXLAdapter:
    config = CONFIGS[preset]
    with torch.device("meta"):
        module = LLMToSDXLAdapter(config)
    module.load_state_dict(llm_to_sdxl_state_dict(config), assign=True)
    module.requires_grad_(False).eval()
    module.pack_for_cpu()
    return module


def params(preset: str) -> int:
    with torch.device("meta"):
        return sum(t.numel() for t in LLMToSDXLAdapter(CONFIGS[preset]).state_dict().values())


def write_lora(adapter: LLMToSDXLAdapter, rank: int, path: Path) -> int:
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for key, target in stem_table(adapter).items():
        out_f, in_f = target.shape
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=g) * 0.01
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=g) * 0.01
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return sum(1 for k in tensors if k.startswith(PREFIX) and k.endswith("lora_up.weight"))


def timed_forward(adapter: LLMToSDXLAdapter, hidden: torch.Tensor) -> float:
    t0 = time.perf_counter()
    adapter(hidden)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gemma", choices=sorted(CONFIGS))
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=77)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()

    base = base_adapter(args.preset)
    hidden = torch.randn(1, args.tokens, base.llm_dim, generator=torch.Generator().manual_seed(2))
    base_first = timed_forward(base, hidden)  # packs the base
    base_steady = min(timed_forward(base, hidden) for _ in range(3))
    rss_base = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        lora = Path(tmp) / "lora.safetensors"
        targets = write_lora(base, args.rank, lora)
        t0 = time.perf_counter()
        patched = patch_adapter(base, [(lora, 1.0)])
        merge = time.perf_counter() - t0
        file_mb = lora.stat().st_size / 2**20
    assert patched.results[0].applied
    first = timed_forward(patched.adapter, hidden)
    steady = min(timed_forward(patched.adapter, hidden) for _ in range(3))
    result = {
        "preset": args.preset,
        "params": params(args.preset),
        "rank": args.rank,
        "targets": targets,
        "lora_file_mb": round(file_mb, 1),
        "tokens": args.tokens,
        "merge_s": round(merge, 3),
        "patched_first_forward_s": round(first, 3),
        "patched_steady_forward_s": round(steady, 3),
        "base_first_forward_s": round(base_first, 3),
        "base_steady_forward_s": round(base_steady, 3),
        "rss_base_mb": round(rss_base),
        "rss_with_patched_copy_mb": round(rss_mb()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    print("| quantity | value |\n|---|---|")
    for k, v in result.items():
        print(f"| {k} | {v} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
