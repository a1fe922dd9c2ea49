"""What a model or adapter file is (``python -m lib_llmcond info``) and whether an LLM and an adapter fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib_llmcond.errors import LlmcondError, ModelFileError

# adapter presets and the LLM hidden sizes they take (reference.md §2)
PARTNERS = {1152: "gemma-3-1b (RouWei-Gemma v0.0alpha/v0.1)", 2304: "t5gemma-2b encoder (RouWei t5gemma)"}


def _llm_dir_info(path: Path) -> dict[str, Any]:
    from lib_llmcond.encoders.weights import iter_tensors, read_config, weight_files

    _, cfg = read_config(path)
    params, dtypes, tensors = 0, set(), 0
    for _, _key, _file, entry in iter_tensors(weight_files(path), cfg.family):
        params += entry.nbytes // entry.torch_dtype.itemsize
        tensors += 1
        dtypes.add(entry.dtype)
    return {
        "kind": "LLM (HF directory)",
        "family": cfg.family,
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_layers,
        "heads": f"{cfg.num_heads} query / {cfg.num_kv_heads} key-value, head_dim {cfg.head_dim}",
        "vocab_size": cfg.vocab_size,
        "parameters": f"{params:,} (encoder part, without LM head)",
        "tensors": tensors,
        "dtype_on_disk": ", ".join(sorted(dtypes)),
        "compatible_adapters": f"adapters taking {cfg.hidden_size}-d hidden states",
    }


def _gguf_info(path: Path) -> dict[str, Any]:
    try:
        from lib_llmcond.encoders.gguf.reader import describe_gguf
    except ImportError as e:
        raise ModelFileError("GGUF support is not installed", path=path, fix="pip install gguf") from e
    return describe_gguf(path)


def _adapter_info(path: Path) -> dict[str, Any]:
    from lib_llmcond.adapters.loader import inspect_adapter

    a = inspect_adapter(path)
    return {
        "kind": "adapter",
        "family": a.family,
        "layout": a.layout,
        "llm_dim": a.llm_dim,
        "blocks": ", ".join(f"{k} {v}" for k, v in a.blocks.items()),
        "max_input_tokens": a.max_input_tokens,
        "output": f"{a.output_tokens} x {a.output_dim} tokens + {a.pooled_dim} pooled",
        "parameters": f"{a.params:,}",
        "tensors": a.tensors,
        "dtype_on_disk": a.dtype,
        "compatible_llms": PARTNERS.get(a.llm_dim, f"LLMs with hidden size {a.llm_dim}"),
    }


def describe_path(path: Path) -> dict[str, Any]:
    if path.is_dir():
        return {"path": str(path), **_llm_dir_info(path)}
    if not path.is_file():
        raise ModelFileError("no such file or folder", path=path, fix="check the path")
    if path.suffix.lower() == ".gguf":
        return {"path": str(path), **_gguf_info(path)}
    return {"path": str(path), **_adapter_info(path)}


def llm_hidden_size(path: Path) -> int:
    if path.suffix.lower() == ".gguf":
        return int(_gguf_info(path)["hidden_size"])
    from lib_llmcond.encoders.weights import read_config

    return read_config(path)[1].hidden_size


def describe_pair(llm_path: str | Path, adapter_path: str | Path) -> tuple[bool, str]:
    """(fits, one line for the UI) for an LLM and an adapter, without loading any weights."""
    from lib_llmcond.adapters.loader import check_pair, inspect_adapter

    llm_path, adapter_path = Path(llm_path), Path(adapter_path)
    try:
        hidden = llm_hidden_size(llm_path)
        a = inspect_adapter(adapter_path)
    except LlmcondError as e:
        return False, str(e)
    reason = check_pair(hidden, a)
    head = f"LLM {llm_path.name} ({hidden}-d) -> adapter {adapter_path.name} ({a.family}, {a.output_tokens} tokens)"
    return (reason is None), (head if reason is None else f"{head}: {reason}")
