"""Tokenizer: loading, special tokens in text, offsets, fallbacks, and equality with transformers' Gemma tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lib_llmcond.errors import ModelFileError
from lib_llmcond.text.tokenizer import load_tokenizer
from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

TEXTS = [
    "a girl with long red hair, masterpiece",
    "héllo wörld 汉字 😀 naïve — “quotes”",
    "  leading  spaces\t tab\n\nnew line \n",
    "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "1girl, 12345 cats!! 3.14",
    "<unk><pad><mask><eos>x<eos",
    "",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_gemma_tokenizer(tmp_path_factory.mktemp("tok") / "gemma", prefix27=True)


def test_special_ids_and_config(tiny_dir):
    tok = load_tokenizer(tiny_dir)
    assert tok.kind == "sentencepiece"
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"
    assert tok.add_bos and not tok.add_eos
    assert tok.token_id("<start_of_turn>") is not None
    assert tok.token_id("<end_of_turn>") is not None
    assert tok.token_id("surely-not-a-piece") is None


def test_encode_adds_nothing_and_reads_special_text(tiny_dir):
    tok = load_tokenizer(tiny_dir)
    text = "cat<eos>dog<start_of_turn>"
    enc = tok.encode(text)
    assert tok.bos_id not in enc.ids
    spans = {text[a:b]: i for i, (a, b) in zip(enc.ids, enc.offsets)}
    assert spans["<eos>"] == tok.eos_id
    assert spans["<start_of_turn>"] == tok.token_id("<start_of_turn>")
    assert tok.encode("").ids == []


@pytest.mark.parametrize("text", TEXTS)
def test_offsets_are_character_spans(tiny_dir, text):
    enc = load_tokenizer(tiny_dir).encode(text)
    assert len(enc.ids) == len(enc.offsets)
    covered = set()
    prev_start = 0
    for a, b in enc.offsets:
        assert 0 <= a < b <= len(text)  # never empty, never outside
        assert a >= prev_start  # in order (byte pieces of one character share its span)
        prev_start = a
        covered.update(range(a, b))
    assert covered == set(range(len(text)))


def test_byte_fallback_pieces_share_the_character_span(tiny_dir):
    tok = load_tokenizer(tiny_dir)
    text = "x汉"
    enc = tok.encode(text)
    han = [o for o in enc.offsets if o == (1, 2)]
    assert len(han) == 3  # three UTF-8 bytes, each carrying the character's span


def test_deterministic_files(tmp_path):
    a = write_tiny_gemma_tokenizer(tmp_path / "a", prefix27=True)
    b = write_tiny_gemma_tokenizer(tmp_path / "b", prefix27=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_unreadable_tokenizer_json_falls_back_to_sentencepiece(tiny_dir, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(tiny_dir, d)
    (d / "tokenizer.json").write_text('{"version": "9.9", "model": {"type": "FutureModel"}}')
    tok = load_tokenizer(d)
    assert tok.kind == "sentencepiece"
    for text in TEXTS:
        assert tok.encode(text) == load_tokenizer(tiny_dir).encode(text)


def test_missing_or_corrupt_files_raise_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_tokenizer(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError) as err:
        load_tokenizer(empty)
    assert str(empty) in str(err.value) and "tokenizer.model" in str(err.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="sentencepiece"):
        load_tokenizer(bad)


@pytest.mark.oracle
@pytest.mark.parametrize("prefix27", [True, False])
def test_same_ids_and_offsets_as_gemma_tokenizer_fast(tmp_path, prefix27):
    from transformers import GemmaTokenizerFast

    from lib_llmcond.tiny.tokenizer import add_tokenizer_json

    d = write_tiny_gemma_tokenizer(tmp_path / "g", prefix27=prefix27)
    ref = GemmaTokenizerFast.from_pretrained(str(d))
    ours_spm = load_tokenizer(d)
    add_tokenizer_json(d)
    ours_json = load_tokenizer(d)
    assert (ours_spm.kind, ours_json.kind) == ("sentencepiece", "tokenizers")
    assert ref.padding_side == ours_spm.padding_side == ours_json.padding_side
    for text in TEXTS:
        want = ref(text, add_special_tokens=False, return_offsets_mapping=True)
        for ours in (ours_spm, ours_json):
            got = ours.encode(text)
            assert got.ids == want["input_ids"], text
            assert got.offsets == [tuple(o) for o in want["offset_mapping"]], text
        assert ref(text)["input_ids"][:1] == [ours_spm.bos_id]  # what add_bos stands for


def test_model_file_alone_gives_its_special_ids(tiny_dir, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes((tiny_dir / "tokenizer.model").read_bytes())
    tok = load_tokenizer(tmp_path)
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.padding_side == "right"  # transformers' default when no config says otherwise
    assert tok.encode("a<bos>").ids[-1] == 2


def test_many_special_tokens_stay_fast(tiny_dir, tmp_path):
    import json
    import time

    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    # real Gemma files declare thousands of added tokens; these map to existing ids only for the speed check
    for i in range(6000):
        config["added_tokens_decoder"][str(10_000 + i)] = {"content": f"<unused{i}>", "special": True}
    d = tmp_path / "many"
    shutil.copytree(tiny_dir, d)
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(d)
    text = "a girl with long red hair, <unused17> masterpiece " * 200
    t0 = time.perf_counter()
    enc = tok.encode(text)
    assert time.perf_counter() - t0 < 0.5
    assert enc.ids.count(10_017) == 200


def test_prefix27_needs_a_large_enough_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        write_tiny_gemma_tokenizer(tmp_path / "small", vocab_size=400, prefix27=True)
    write_tiny_gemma_tokenizer(tmp_path / "small_plain", vocab_size=400)  # fine without prefix27
