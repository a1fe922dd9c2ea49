"""Bad GGUF files give a ModelFileError naming the file, the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lib_llmcond.encoders.gguf.reader import hf_config, open_gguf
from lib_llmcond.errors import ModelFileError


def _write(path: Path, arch: str = "gemma3", qtype=None) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_uint32("custom.key", 7)
    w.add_array("custom.strings", [f"t{i}" for i in range(300)])
    data = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    if qtype is None:
        w.add_tensor("token_embd.weight", data)
    else:
        w.add_tensor("token_embd.weight", np.zeros((4, 66), np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_reads_a_valid_file(tmp_path: Path) -> None:
    gf = open_gguf(_write(tmp_path / "ok.gguf"))
    assert gf.architecture == "gemma3" and gf.metadata["custom.key"] == 7
    assert gf.strings("custom.strings")[299] == "t299"
    assert gf.tensors["token_embd.weight"].shape == (4, 32)
    assert hf_config(gf)["query_pre_attn_scalar"] == 256


def test_unknown_architecture(tmp_path: Path) -> None:
    gf = open_gguf(_write(tmp_path / "mamba.gguf", arch="mamba"))
    with pytest.raises(
        ModelFileError, match=r"mamba\.gguf: unsupported GGUF architecture 'mamba'.*gemma3, qwen3"
    ):
        hf_config(gf)


def test_unknown_quant_type(tmp_path: Path) -> None:
    import gguf

    path = _write(tmp_path / "iq.gguf", qtype=gguf.GGMLQuantizationType.IQ2_XXS)
    with pytest.raises(ModelFileError, match=r"iq\.gguf: unsupported GGUF quantization type IQ2_XXS.*Q4_K"):
        open_gguf(path)


@pytest.mark.parametrize("keep", [3, 20, 200, -100])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    full = _write(tmp_path / "full.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[:keep])
    with pytest.raises(ModelFileError, match=r"cut\.gguf: .*(truncated|not a GGUF).*"):
        open_gguf(cut)


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        open_gguf(bad)
    with pytest.raises(ModelFileError, match="not found"):
        open_gguf(tmp_path / "missing.gguf")
