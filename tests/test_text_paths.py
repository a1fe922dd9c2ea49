"""Text paths: the Gemma-3 chat template and its computed skip, T5Gemma padding/truncation, the Qwen3 plain path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_llmcond.text.paths import (
    GEMMA_SYSTEM_PROMPT,
    GemmaChatPath,
    PlainPath,
    T5GemmaPath,
    _window,
    text_path,
)
from lib_llmcond.text.tokenizer import load_tokenizer
from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

REF_SYSTEM = (
    "You are expert in understanding of user prompts for image generations. "
    "Create an image according to the prompt from user."
)
PROMPT = "  a girl with long red hair, héllo wörld 汉字 😀 masterpiece \n"


@pytest.fixture(scope="module")
def tok27(tmp_path_factory):
    return load_tokenizer(write_tiny_gemma_tokenizer(tmp_path_factory.mktemp("t") / "g27", prefix27=True))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return write_tiny_gemma_tokenizer(tmp_path_factory.mktemp("t") / "g", prefix27=True)


def test_rendered_text_is_exactly_the_reference(tok27):
    path = GemmaChatPath()
    assert GEMMA_SYSTEM_PROMPT == REF_SYSTEM
    want = f"<bos><start_of_turn>user\n{REF_SYSTEM}\n\n{PROMPT.strip()}<end_of_turn>\n<start_of_turn>model\n"
    assert path.prefix + PROMPT.strip() + path.suffix == want
    assert path.tokenize(PROMPT, tok27).ids == tok27.encode(want).ids


def test_one_bos_and_skip_27(tok27):
    row = GemmaChatPath().tokenize(PROMPT, tok27)
    assert row.ids[0] == tok27.bos_id and row.ids.count(tok27.bos_id) == 1
    assert row.adapter_start == 27
    assert all(o is None for o in row.offsets[:27])
    assert row.adapter_end == len(row.ids)
    # the adapter sees the prompt's tokens then the 5-token trailer
    trailer = tok27.encode("<end_of_turn>\n<start_of_turn>model\n").ids
    assert len(trailer) == 5 and row.ids[-5:] == trailer
    assert row.adapter_end - row.adapter_start == row.total_prompt_tokens + 5


def test_skip_follows_another_system_prompt(tok27):
    path = GemmaChatPath(system_prompt="Draw it.")
    row = path.tokenize("a cat", tok27)
    prefix_ids = tok27.encode(
        path.prefix
    ).ids  # the prefix ends in a whole-token "\n\n", so it tokenizes alone
    assert row.ids[: len(prefix_ids)] == prefix_ids
    assert row.adapter_start == len(prefix_ids) != 27
    assert [o is None for o in row.offsets[: row.adapter_start]] == [True] * row.adapter_start


def test_empty_prompt_sends_only_the_trailer(tok27):
    row = GemmaChatPath().tokenize("   ", tok27)
    assert row.total_prompt_tokens == 0
    assert row.adapter_end - row.adapter_start == 5


def test_offsets_map_to_the_callers_prompt(tok27):
    row = GemmaChatPath().tokenize(PROMPT, tok27)
    lead = len(PROMPT) - len(PROMPT.lstrip())
    spans = [o for o in row.offsets if o is not None]
    assert len(spans) == row.total_prompt_tokens > 0
    covered = sorted({i for a, b in spans for i in range(a, b)})
    assert covered == list(range(lead, lead + len(PROMPT.strip())))
    text = "".join(PROMPT[a:b] for a, b in dict.fromkeys(spans))  # overlapping byte pieces share one span
    assert text == PROMPT.strip()
    # a word found through its token spans
    i = PROMPT.index("wörld")
    assert any(a <= i < b for a, b in spans)


def test_right_padded_batch(tok27):
    path = GemmaChatPath()
    rows = [path.tokenize(p, tok27) for p in ("a cat", PROMPT, "")]
    batch = path.batch(rows, tok27)
    n = [len(r.ids) for r in rows]
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.position_ids.shape == (3, max(n))
    for r, row in enumerate(rows):
        assert batch.input_ids[r, : n[r]].tolist() == row.ids
        assert batch.attention_mask[r].tolist() == [1] * n[r] + [0] * (max(n) - n[r])
        assert (batch.input_ids[r, n[r] :] == tok27.pad_id).all()
        assert batch.position_ids[r, : n[r]].tolist() == list(range(n[r]))
        assert batch.adapter_slices[r] == slice(row.adapter_start, n[r])
    assert batch.adapter_mask is False
    assert path.batch(rows, tok27, pad_to=max(n) + 3).input_ids.shape == (3, max(n) + 3)


def test_gemma_adapter_offsets_and_the_512_cut(tok27):
    path = GemmaChatPath()
    prompt = " ".join(f"w{i % 7}" for i in range(400)) + " END"
    row = path.tokenize(prompt, tok27)
    assert row.total_prompt_tokens > 512
    offsets = path.adapter_offsets(row, tok27)
    assert len(offsets) == row.adapter_end - row.adapter_start
    assert offsets[:512] == row.offsets[row.adapter_start : row.adapter_start + 512]
    a, b = offsets[512]  # the first prompt token past the adapter's budget: where the cut report points
    assert prompt[a:b].strip() and prompt.index(prompt[a:b], a) == a


def test_t5gemma_tokens_padding_and_mask(tok27):
    path = T5GemmaPath()
    row = path.tokenize("a cat", tok27)
    assert row.ids == [tok27.bos_id, *tok27.encode("a cat").ids, tok27.eos_id]
    assert row.offsets[0] is None and row.offsets[-1] is None
    assert tok27.padding_side == "left"
    batch = path.batch([row], tok27)
    n = len(row.ids)
    assert batch.input_ids[0, :n].tolist() == row.ids  # only real tokens run ...
    assert batch.attention_mask[0, :n].tolist() == [1] * n
    assert batch.position_ids[0, :n].tolist() == list(range(512 - n, 512))  # ... where left padding puts them
    assert batch.adapter_mask is True and batch.adapter_left_pad == [512 - n]
    offsets = path.adapter_offsets(row, tok27)
    assert len(offsets) == 512 and offsets[: 512 - n] == [None] * (512 - n)


def test_t5gemma_truncation_loses_eos(tok27):
    path = T5GemmaPath()
    prompt = " ".join(f"w{i % 5}" for i in range(700))
    row = path.tokenize(prompt, tok27)
    assert row.total_prompt_tokens == len(tok27.encode(prompt).ids) > 512
    batch = path.batch([row], tok27)
    kept = batch.input_ids[0][batch.attention_mask[0] == 1].tolist()
    assert len(kept) == 512 and kept[0] == tok27.bos_id and tok27.eos_id not in kept
    assert kept[1:] == tok27.encode(prompt).ids[:511]
    assert batch.position_ids[0, :512].tolist() == list(range(512))


def test_plain_path(tok27):
    path = text_path("qwen3")
    assert isinstance(path, PlainPath)
    rows = [path.tokenize(p, tok27) for p in ("a cat", "a girl with long red hair", "")]
    assert rows[0].ids == tok27.encode("a cat").ids and rows[2].total_prompt_tokens == 0
    batch = path.batch(rows, tok27)
    n = [len(r.ids) for r in rows]
    assert batch.input_ids.shape == (3, max(n)) and batch.adapter_mask
    assert batch.attention_mask[0].tolist() == [1] * n[0] + [0] * (max(n) - n[0])


@pytest.mark.oracle
def test_gemma_ids_equal_transformers(tok_dir):
    from transformers import GemmaTokenizerFast

    ref = GemmaTokenizerFast.from_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)
    path = GemmaChatPath()
    for prompt in (PROMPT, "a cat", ""):
        want = ref(path.prefix + prompt.strip() + path.suffix, add_special_tokens=False)["input_ids"]
        assert path.tokenize(prompt, tok).ids == want


@pytest.mark.oracle
@pytest.mark.parametrize("words", [3, 700])
def test_t5gemma_rows_match_the_reference_call(tok_dir, words):
    from transformers import GemmaTokenizerFast

    ref = GemmaTokenizerFast.from_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)
    prompt = " ".join(f"w{i % 5}" for i in range(words))
    want = ref(prompt + "<eos>", return_tensors="pt", padding="max_length", max_length=512, truncation=True)
    real = want["attention_mask"][0] == 1
    path = T5GemmaPath()
    batch = path.batch([path.tokenize(prompt, tok)], tok)
    k = int(real.sum())
    assert batch.input_ids[0, :k].tolist() == want["input_ids"][0][real].tolist()
    assert batch.position_ids[0, :k].tolist() == torch.arange(512)[real].tolist()
    assert batch.adapter_left_pad == [int((~real).sum())] if tok.padding_side == "left" else [0]


def test_text_path_families():
    assert text_path("gemma3") == GemmaChatPath()
    assert text_path("gemma3", "Be brief.").system_prompt == "Be brief."
    assert isinstance(text_path("t5gemma", "ignored"), T5GemmaPath)


def _window_by_rule(spans, start, end):
    """The per-token rule, token by token: inside [start, end) kept, straddling clipped, elsewhere None."""
    return [
        (s, e) if start <= s < e <= end else (max(s, start), min(e, end)) if s < end and e > start else None
        for s, e in spans
    ]


@st.composite
def ordered_spans(draw):
    """Spans in text order as tokenizers give them: starts and ends non-decreasing, overlaps and repeats
    (byte pieces of one character), zero-width ones."""
    spans, s = [], draw(st.integers(-5, 5))
    for _ in range(draw(st.integers(0, 25))):
        s += draw(st.integers(0, 3))
        e = max(s, spans[-1][1] if spans else s) + draw(st.integers(0, 4))
        spans.append((s, e))
    return spans


@settings(max_examples=500, deadline=None)
@given(ordered_spans(), st.integers(-6, 60), st.integers(0, 30))
def test_window_follows_the_per_token_rule(spans, start, width):
    assert _window(spans, start, start + width) == _window_by_rule(spans, start, start + width)


@pytest.mark.parametrize("prompt", [PROMPT, "", "x", "  <start_of_turn> a\n\nb ", "汉字😀 " * 40])
def test_gemma_offsets_follow_the_per_token_rule(tok27, prompt):
    """Offsets straight from the tokenizer in the rendered text, cut to the prompt by the rule, equal the
    path's (which counts them from the prompt and bisects)."""
    path = GemmaChatPath()
    stripped, lead = prompt.strip(), len(prompt) - len(prompt.lstrip())
    enc = tok27.encode(path.prefix + stripped + path.suffix)
    start = len(path.prefix)
    expected = [
        None if o is None else (o[0] - start + lead, o[1] - start + lead)
        for o in _window_by_rule(enc.offsets, start, start + len(stripped))
    ]
    skip = sum(1 for s, _ in enc.offsets if s < start)
    expected[:skip] = [None] * skip
    row = path.tokenize(prompt, tok27)
    assert row.ids == enc.ids and row.offsets == expected and row.adapter_start == skip
