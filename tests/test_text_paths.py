"""Text paths: the Gemma-3 chat template and its computed skip, T5Gemma padding/truncation, the Qwen3 plain path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_llmcond.text.paths import (
    GEMMA_SYSTEM_PROMPT,
    GemmaChatPath,
    QwenPlainPath,
    T5GemmaPath,
    text_path_for,
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


def test_rendered_text_is_exactly_the_reference():
    path = GemmaChatPath()
    assert GEMMA_SYSTEM_PROMPT == REF_SYSTEM
    want = f"<bos><start_of_turn>user\n{REF_SYSTEM}\n\n{PROMPT.strip()}<end_of_turn>\n<start_of_turn>model\n"
    assert path.render(PROMPT) == want


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
    path = GemmaChatPath(system_prompt="Draw what the user asks for, in great detail.")
    row = path.tokenize("a cat", tok27)
    prefix_ids = tok27.encode(
        path.prefix()
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
    with pytest.raises(ValueError):
        path.batch(rows, tok27, pad_to=2)


def test_gemma_budget_and_cut(tok27):
    words = [f"w{i % 7}" for i in range(400)]
    prompt = " ".join(words) + " END"
    row = GemmaChatPath().tokenize(prompt, tok27)
    assert row.total_prompt_tokens > 512
    assert row.adapter_prompt_tokens == 512  # the adapter keeps the first 512 after the skip
    first_cut = row.offsets[row.adapter_start + 512]
    assert row.cut_span == first_cut
    short = GemmaChatPath().tokenize("a cat", tok27)
    assert short.cut_span is None and short.adapter_prompt_tokens == short.total_prompt_tokens


def test_t5gemma_tokens_padding_and_mask(tok27):
    path = T5GemmaPath()
    row = path.tokenize("a cat", tok27)
    assert row.ids == [tok27.bos_id, *tok27.encode("a cat").ids, tok27.eos_id]
    assert row.offsets[0] is None and row.offsets[-1] is None
    batch = path.batch([row], tok27)
    n = len(row.ids)
    assert batch.input_ids.shape == (1, 512)
    assert tok27.padding_side == "left"
    assert batch.input_ids[0, -n:].tolist() == row.ids
    assert (batch.input_ids[0, :-n] == tok27.pad_id).all()
    assert batch.attention_mask[0].tolist() == [0] * (512 - n) + [1] * n
    assert batch.position_ids[0].tolist() == list(range(512))  # as the encoder numbers a padded row
    assert batch.adapter_mask is True and batch.adapter_slices == [slice(0, 512)]


def test_t5gemma_truncation_loses_eos(tok27):
    prompt = " ".join(f"w{i % 5}" for i in range(700))
    row = T5GemmaPath().tokenize(prompt, tok27)
    assert len(row.ids) == 512
    assert row.ids[0] == tok27.bos_id and tok27.eos_id not in row.ids
    assert row.ids[1:] == tok27.encode(prompt).ids[:511]
    assert row.total_prompt_tokens == len(tok27.encode(prompt).ids)
    assert row.adapter_prompt_tokens == 511
    assert row.cut_span == tok27.encode(prompt).offsets[511]


def test_qwen_plain_path(tok27):
    path = text_path_for("qwen3")
    assert isinstance(path, QwenPlainPath)
    rows = [path.tokenize(p, tok27) for p in ("a cat", " ".join(["cat"] * 300))]
    assert rows[0].ids == tok27.encode("a cat").ids
    assert len(rows[1].ids) == 256 and rows[1].cut_span is not None
    batch = path.batch(rows, tok27)
    assert batch.input_ids.shape == (2, 256)
    assert batch.attention_mask[0].tolist()[: len(rows[0].ids) + 1] == [1] * len(rows[0].ids) + [0]
    assert batch.adapter_slices[0] == slice(0, len(rows[0].ids)) and batch.adapter_mask


@pytest.mark.oracle
def test_gemma_ids_equal_transformers(tok_dir):
    from transformers import GemmaTokenizerFast

    ref = GemmaTokenizerFast.from_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)
    path = GemmaChatPath()
    for prompt in (PROMPT, "a cat", ""):
        want = ref(path.render(prompt), add_special_tokens=False)["input_ids"]
        assert path.tokenize(prompt, tok).ids == want


@pytest.mark.oracle
@pytest.mark.parametrize("words", [3, 700])
def test_t5gemma_batch_equals_reference_call(tok_dir, words):
    from transformers import GemmaTokenizerFast

    ref = GemmaTokenizerFast.from_pretrained(str(tok_dir))
    tok = load_tokenizer(tok_dir)
    prompt = " ".join(f"w{i % 5}" for i in range(words))
    want = ref(prompt + "<eos>", return_tensors="pt", padding="max_length", max_length=512, truncation=True)
    path = T5GemmaPath()
    batch = path.batch([path.tokenize(prompt, tok)], tok)
    assert torch.equal(batch.input_ids, want["input_ids"])
    assert torch.equal(batch.attention_mask, want["attention_mask"])


def test_text_path_for_families():
    assert text_path_for("gemma3") == GemmaChatPath()
    assert text_path_for("gemma3", "Be brief.").system_prompt == "Be brief."
    assert isinstance(text_path_for("t5gemma", "ignored"), T5GemmaPath)
    with pytest.raises(ValueError, match="gemma3"):
        text_path_for("llama")
