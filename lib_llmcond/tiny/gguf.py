"""TINY TEST MODELS: convert a small HF model directory to a GGUF file in llama.cpp's conventions.

Covers what our tests need of llama.cpp's converter: gemma3 and qwen3 tensor names, Gemma RMSNorm weights stored as
``w + 1``, the metadata keys our reader uses, and the tokenizer metadata (SentencePiece ``llama`` or byte-level
``gpt2``). Quantization through gguf-py (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1; gguf-py writes no K-quants).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from lib_llmcond.encoders.gguf.reader import BLOCK_NAMES, GLOBAL_NAMES, NORM_PLUS_ONE

_ARCH = {"gemma3_text": "gemma3", "gemma3": "gemma3", "qwen3": "qwen3"}
_KEEP_F32 = ("norm",)  # llama.cpp keeps 1-d norm weights in F32


def write_tiny_gguf(hf_dir: str | Path, out_path: str | Path, *, qtype: str = "F32") -> Path:
    import gguf

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    config = json.loads((hf_dir / "config.json").read_text())
    config = config.get("text_config", config)
    arch = _ARCH[config["model_type"]]
    writer = gguf.GGUFWriter(str(out_path), arch)
    _write_hparams(writer, arch, config)
    _write_tokenizer(writer, hf_dir)
    writer.add_file_type(0 if qtype == "F32" else 1)
    qt = gguf.GGMLQuantizationType[qtype]
    for name, array in _hf_tensors(hf_dir):
        gname = _gguf_name(arch, name)
        if gname is None:
            continue
        if arch in NORM_PLUS_ONE and gname.endswith("norm.weight"):
            array = array + 1.0
        _add_tensor(writer, gname, array.astype(np.float32), qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _write_hparams(w, arch: str, c: dict) -> None:
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    w.add_context_length(int(c.get("max_position_embeddings", 32768)))
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(c.get("num_key_value_heads", heads))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
    w.add_rope_freq_base(float(c.get("rope_theta", 10000.0)))
    if arch == "gemma3":
        w.add_sliding_window(int(c.get("sliding_window", 512)))


def _write_tokenizer(w, hf_dir: Path) -> None:
    if (hf_dir / "tokenizer.model").is_file():
        _write_spm(w, hf_dir)
    elif (hf_dir / "tokenizer.json").is_file():
        _write_bpe(w, hf_dir)


def _spm_pieces(model: bytes) -> list[tuple[str, float, int]]:
    """(piece, score, type) of each ModelProto.pieces entry (field 1: piece 1, score 2, type 3; type 1 if absent)."""
    from lib_llmcond.text.spm_model import proto_fields

    out = []
    for field, value in proto_fields(model):
        if field != 1 or not isinstance(value, bytes):
            continue
        piece, score, kind = "", 0.0, 1
        for f, v in proto_fields(value):
            if f == 1:
                piece = v.decode("utf-8")
            elif f == 2:
                score = struct.unpack("<f", v)[0]
            elif f == 3:
                kind = v
        out.append((piece, score, kind))
    return out


def _write_spm(w, hf_dir: Path) -> None:
    import sentencepiece as spm

    data = (hf_dir / "tokenizer.model").read_bytes()
    sp = spm.SentencePieceProcessor()
    sp.load_from_serialized_proto(data)
    pieces = _spm_pieces(data)
    w.add_tokenizer_model("llama")
    w.add_token_list([p for p, _, _ in pieces])
    w.add_token_scores([s for _, s, _ in pieces])
    w.add_token_types([t for _, _, t in pieces])
    specials = (
        (w.add_bos_token_id, sp.bos_id()),
        (w.add_eos_token_id, sp.eos_id()),
        (w.add_unk_token_id, sp.unk_id()),
        (w.add_pad_token_id, sp.pad_id()),
    )
    for setter, i in specials:
        if i >= 0:
            setter(i)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(_spm_add_dummy_prefix(data))


def _spm_add_dummy_prefix(model: bytes) -> bool:
    """NormalizerSpec.add_dummy_prefix (ModelProto field 3, its field 3), read from the protobuf bytes."""
    from lib_llmcond.text.spm_model import proto_fields

    for field, value in proto_fields(model):
        if field == 3 and isinstance(value, bytes):
            for f, v in proto_fields(value):
                if f == 3 and isinstance(v, int):
                    return bool(v)
    return True


def _write_bpe(w, hf_dir: Path) -> None:
    data = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    entries = {int(i): (t, 1) for t, i in model["vocab"].items()}
    for a in data.get("added_tokens") or []:
        entries[int(a["id"])] = (a["content"], 3 if a.get("special", True) else 4)
    size = max(entries) + 1
    tokens = [entries.get(i, (f"[PAD{i}]", 5))[0] for i in range(size)]
    types = [entries.get(i, (f"[PAD{i}]", 5))[1] for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    cfg_path = hf_dir / "tokenizer_config.json"
    config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    for key, setter in (("eos_token", w.add_eos_token_id), ("pad_token", w.add_pad_token_id)):
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value in tokens:
            setter(tokens.index(value))
    w.add_add_bos_token(False)


def _hf_tensors(hf_dir: Path):
    from safetensors.numpy import load_file

    for path in sorted(hf_dir.glob("*.safetensors")):
        yield from load_file(str(path)).items()


def _gguf_name(arch: str, hf: str) -> str | None:
    for prefix in ("model.language_model.", "model."):
        if hf.startswith(prefix):
            hf = hf[len(prefix) :]
            break
    base, _, kind = hf.rpartition(".")
    for gguf_base, ours in GLOBAL_NAMES.items():
        if base == ours:
            return f"{gguf_base}.{kind}"
    parts = base.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers":
        for gguf_part, ours in BLOCK_NAMES[arch].items():
            if parts[2] == ours:
                return f"blk.{parts[1]}.{gguf_part}.{kind}"
    return None  # lm_head and anything we never load


def _add_tensor(w, name: str, array: np.ndarray, qt) -> None:
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    if qt == T.F32 or array.ndim < 2 or name.split(".")[-2].endswith(_KEEP_F32):
        w.add_tensor(name, array)
    elif qt == T.F16:
        w.add_tensor(name, array.astype(np.float16))
    else:
        w.add_tensor(name, quants.quantize(array, qt), raw_dtype=qt)
