"""Tokenizer details: special tokens in text, character offsets, fallbacks, special ids, and equality (ids and
offsets) with transformers' GemmaTokenizerFast through both the SentencePiece and the tokenizer.json path."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_llmcond.errors import ModelFileError
from lib_llmcond.text.tokenizer import load_tokenizer
from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

TEXTS = [
    "a girl with long red hair, masterpiece",
    "héllo wörld 汉字 😀 naïve — “quotes”",
    "  leading  spaces\t tab\n\nnew line \n",
    "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "1girl, 12345 cats!! 3.14",
    "<unk><pad><eos>x<eos",
    "",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_gemma_tokenizer(tmp_path_factory.mktemp("tok") / "gemma", prefix27=True)


def test_special_ids_and_config(tiny_dir):
    tok = load_tokenizer(tiny_dir)
    assert tok.kind == "sentencepiece"
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.padding_side == "left" and tok.special.add_bos
    assert tok.token_id("<start_of_turn>") is not None and tok.token_id("<end_of_turn>") is not None
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
    covered, prev = set(), (0, 0)
    for a, b in enc.offsets:
        assert 0 <= a < b <= len(text)  # never empty, never outside
        assert a >= prev[0] and b >= prev[1]  # in order (the byte pieces of one character share its span)
        prev = (a, b)
        covered.update(range(a, b))
    assert covered == set(range(len(text)))


def test_byte_fallback_pieces_share_the_character_span(tiny_dir):
    enc = load_tokenizer(tiny_dir).encode("x\U0002a6a5")  # a rare CJK character: four byte pieces
    assert enc.offsets.count((1, 2)) == 4


def test_deterministic_files(tmp_path):
    a = write_tiny_gemma_tokenizer(tmp_path / "a", prefix27=True)
    b = write_tiny_gemma_tokenizer(tmp_path / "b", prefix27=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_prefix27_needs_a_large_enough_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        write_tiny_gemma_tokenizer(tmp_path / "small", vocab_size=400, prefix27=True)
    write_tiny_gemma_tokenizer(tmp_path / "plain", vocab_size=400)


def test_unreadable_tokenizer_json_falls_back_to_sentencepiece(tiny_dir, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(tiny_dir, d)
    (d / "tokenizer.json").write_text('{"version": "9.9", "model": {"type": "FutureModel"}}')
    tok = load_tokenizer(d)
    assert tok.kind == "sentencepiece"
    for text in TEXTS:
        assert tok.encode(text) == load_tokenizer(tiny_dir).encode(text)


def test_model_file_alone_gives_its_special_ids(tiny_dir, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes((tiny_dir / "tokenizer.model").read_bytes())
    tok = load_tokenizer(tmp_path)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.encode("a<bos>").ids[-1] == 2


def test_missing_or_corrupt_files_raise_model_file_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError) as err:
        load_tokenizer(empty)
    assert str(empty) in str(err.value) and "tokenizer.model" in str(err.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="tokenizer.model"):
        load_tokenizer(bad)


def test_many_special_tokens_stay_fast(tiny_dir, tmp_path):
    """Real Gemma files declare thousands of added tokens; matching them must not cost per-token time."""
    d = tmp_path / "many"
    shutil.copytree(tiny_dir, d)
    base, tok = load_tokenizer(d), load_tokenizer(d)
    specials = [f"<unused{i}>" for i in range(6000)]
    tok.__init__(tok._sp, tok.special, specials)  # the same tokenizer with 6000 more special strings
    text = "a girl with long red hair, <unused masterpiece " * 300

    def seconds(t) -> float:
        t0 = time.perf_counter()
        t.encode(text)
        return time.perf_counter() - t0

    assert seconds(tok) < 2 * seconds(base) + 0.1


@pytest.mark.oracle
@pytest.mark.parametrize("prefix27", [True, False])
def test_ids_and_offsets_equal_gemma_tokenizer_fast(tmp_path, prefix27):
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


def test_config_json_is_valid(tiny_dir):
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert config["padding_side"] == "left" and config["add_bos_token"] is True


def test_protobuf_free_piece_reader_agrees_with_sentencepiece(tiny_dir):
    import sentencepiece as spm

    from lib_llmcond.text.spm_model import CONTROL, USER_DEFINED, piece_types, pieces_of_type

    data = (tiny_dir / "tokenizer.model").read_bytes()
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(data)
    types = piece_types(data)
    assert [p for p, _ in types] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert [i for i, (_, k) in enumerate(types) if k == CONTROL] == [
        i for i in range(sp.get_piece_size()) if sp.is_control(i)
    ]
    assert [i for i, (_, k) in enumerate(types) if k == 6] == [
        i for i in range(sp.get_piece_size()) if sp.is_byte(i)
    ]
    assert pieces_of_type(data, USER_DEFINED) == [
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "\n\n",
        "\n",
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from([*list("ab cd,.\n\t▁éü汉😀<>_0"), "<eos>", "<unk>", "  "]), max_size=30).map(
        "".join
    )
)
def test_spans_by_piece_length_equal_the_proto_spans(tiny_dir, text):
    """The fast path (spans from the pieces' lengths, taken only where the pieces spell the text) gives
    SentencePiece's own spans: ids and offsets equal the proto path's on any text."""
    tok = _tokenizer(tiny_dir)
    fast, proto = tok._encode_plain(text), tok._encode_by_proto(text)
    assert fast.ids == proto.ids and fast.offsets == proto.offsets


_TOKENIZERS: dict = {}


def _tokenizer(directory: Path):
    if directory not in _TOKENIZERS:
        _TOKENIZERS[directory] = load_tokenizer(directory)
    return _TOKENIZERS[directory]
