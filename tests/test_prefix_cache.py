"""The chat template's shared prefix runs once per LLM: results equal running it with every prompt."""

import pytest
import torch

from lib_llmcond.encoders.llm import load_llm
from lib_llmcond.encoders.weights import load_transformer
from lib_llmcond.text.paths import GemmaChatPath, PromptTokens, shared_prefix
from lib_llmcond.tiny.llm import write_tiny_llm


@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
@pytest.mark.parametrize("p", [3, 9])  # before and beyond the tiny sliding window (8)
def test_prefix_state_then_rest_equals_one_pass(tmp_path, family, p):
    _, model = load_transformer(write_tiny_llm(tmp_path, family, seed=2), dtype=torch.float32)
    ids = torch.randint(3, 512, (2, 21))
    ids[1] = ids[0]
    ids[1, p + 4 :] = 0  # second row: shorter, right padded
    mask = torch.ones_like(ids)
    mask[1, p + 4 :] = 0
    with torch.no_grad():
        whole = model(ids, mask)
        state = model.prefix_state(ids[:1, :p])
        rest = model(ids[:, p:], mask[:, p:], prefix=state)
    assert torch.allclose(state.hidden[0], whole[0, :p], atol=1e-5)
    assert torch.allclose(rest[0], whole[0, p:], atol=1e-5)
    assert torch.allclose(rest[1, :4], whole[1, p : p + 4], atol=1e-5)


def test_bidirectional_models_have_no_prefix_state(tmp_path):
    _, model = load_transformer(write_tiny_llm(tmp_path, "t5gemma"), dtype=torch.float32)
    with pytest.raises(ValueError, match="causal"):
        model.prefix_state(torch.ones(1, 4, dtype=torch.long))


def _rows(path, tok, prompts):
    return [path.tokenize(p, tok) for p in prompts]


def test_shared_prefix_is_the_common_template_part(demo):
    llm_dir, _ = demo
    llm = load_llm(llm_dir, dtype=torch.float32)
    path = GemmaChatPath()
    rows = _rows(path, llm.tokenizer, ["a cat", "two dogs on a hill", ""])
    batch = path.batch(rows, llm.tokenizer)
    assert batch.shared_prefix == rows[0].adapter_start > 0
    other = PromptTokens([99, *rows[0].ids[1:]], rows[0].offsets, rows[0].adapter_start, 0, 0)
    assert shared_prefix([rows[0], other]) == 0
    cut = PromptTokens(rows[0].ids[:5] + [7] * 30, rows[0].offsets, rows[0].adapter_start, 0, 0)
    assert shared_prefix([rows[0], cut]) == 5


def test_hidden_states_with_the_cached_prefix_equal_a_full_pass(demo, monkeypatch):
    llm_dir, _ = demo
    llm = load_llm(llm_dir, dtype=torch.float32)
    path = GemmaChatPath()
    calls = []
    real = llm.model.prefix_state
    monkeypatch.setattr(llm.model, "prefix_state", lambda ids: calls.append(ids) or real(ids))
    for prompts in (["a cat"], ["a red fox in the snow, " * 6, "x"], ["a cat"]):
        batch = path.batch(_rows(path, llm.tokenizer, prompts), llm.tokenizer)
        cached = llm.hidden_states(batch)
        batch.shared_prefix = 0
        full = llm.hidden_states(batch)
        assert cached.shape == full.shape
        for i, r in enumerate(batch.rows):
            assert torch.allclose(cached[i, : len(r.ids)], full[i, : len(r.ids)], atol=1e-5)
    assert len(calls) == 1  # one system prompt: its state is computed once
    batch = GemmaChatPath("Draw what the user asks.").batch(
        _rows(GemmaChatPath("Draw what the user asks."), llm.tokenizer, ["a cat"]), llm.tokenizer
    )
    llm.hidden_states(batch)
    assert len(calls) == 2  # another system prompt: its own state
