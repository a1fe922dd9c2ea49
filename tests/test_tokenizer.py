"""Tokenizers and the Gemma chat path: rendered text, one <bos>, the computed skip, offsets."""

import pytest

from lib_llmcond.errors import ModelFileError
from lib_llmcond.text.paths import GEMMA_SYSTEM_PROMPT, GemmaChatPath
from lib_llmcond.text.tokenizer import SPTokenizer, load_tokenizer
from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

TEXTS = [
    "a girl with long silver hair, (red:1.2) dress",
    "  leading and trailing spaces  ",
    "## Character 1\nA knight.\n\n## Scene\nA castle at sunset.",
    "Красивый закат 夕焼けの海と猫 😀 Émilie à côté",
    "digits 1234567 and symbols #@%^&*",
    "tabs\tand\u00a0nbsp",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_tiny_gemma_tokenizer(tmp_path_factory.mktemp("tok"), prefix27=True)


def test_default_prefix_is_27_tokens_with_one_bos(tok_dir):
    tok = load_tokenizer(tok_dir)
    row = GemmaChatPath().tokenize("a cat", tok)
    assert row.adapter_start == 27
    assert row.ids.count(tok.bos_id) == 1 and row.ids[0] == tok.bos_id
    assert all(o is None for o in row.offsets[:27])
    assert tok.token_id("<start_of_turn>") == row.ids[1] and tok.token_id("<end_of_turn>") in row.ids[27:]


def test_skip_follows_the_system_prompt(tok_dir):
    tok = load_tokenizer(tok_dir)
    short = GemmaChatPath("Draw it.").tokenize("a cat", tok)
    prefix_ids = tok.encode("<bos><start_of_turn>user\nDraw it.\n\n").ids
    assert short.adapter_start == len(prefix_ids) != 27
    assert short.ids[: short.adapter_start] == prefix_ids


@pytest.mark.parametrize("text", TEXTS)
def test_offsets_point_into_the_callers_prompt(tok_dir, text):
    tok = load_tokenizer(tok_dir)
    row = GemmaChatPath().tokenize(text, tok)
    spans = [o for o in row.offsets if o is not None]
    assert row.total_prompt_tokens == len(spans)
    assert all(a[0] <= b[0] for a, b in zip(spans, spans[1:]))  # in order (byte pieces share a character)
    covered = {i for s, e in spans for i in range(s, e)}
    lead = len(text) - len(text.lstrip())
    assert covered == set(range(lead, lead + len(text.strip())))


def test_rendered_text_is_the_reference_template(tok_dir):
    path = GemmaChatPath()
    assert path.prefix == f"<bos><start_of_turn>user\n{GEMMA_SYSTEM_PROMPT}\n\n"
    assert path.suffix == "<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize("text", TEXTS)
def test_piece_walk_fallback_equals_proto_offsets(tok_dir, text, monkeypatch):
    tok = load_tokenizer(tok_dir)
    assert isinstance(tok, SPTokenizer)
    expected = tok.encode(text)
    monkeypatch.setattr(
        tok._sp, "encode_as_proto", lambda _t: (_ for _ in ()).throw(ImportError("no protobuf"))
    )
    got = tok.encode(text)
    assert got.ids == expected.ids
    assert got.offsets == expected.offsets


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="no usable tokenizer"):
        load_tokenizer(tmp_path)


@pytest.mark.oracle
@pytest.mark.parametrize("text", TEXTS)
def test_same_ids_as_transformers_gemma_tokenizers(tok_dir, tmp_path, text):
    from transformers import GemmaTokenizer, GemmaTokenizerFast

    rendered = GemmaChatPath().prefix + text.strip() + GemmaChatPath.suffix
    slow = GemmaTokenizer(vocab_file=str(tok_dir / "tokenizer.model"), add_bos_token=False)
    ours = load_tokenizer(tok_dir).encode(rendered).ids
    assert ours == slow(rendered, add_special_tokens=False).input_ids
    fast = GemmaTokenizerFast.from_pretrained(tok_dir)  # converted to tokenizer.json, read by `tokenizers`
    fast.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").unlink(missing_ok=True)
    via_json = load_tokenizer(tmp_path)
    assert type(via_json).__name__ == "HFTokenizer"
    assert via_json.encode(rendered).ids == fast(rendered, add_special_tokens=False).input_ids == ours
