"""Our native encoders against transformers' own model classes on tiny random models (every weight random)."""

import pytest
import torch

from lib_llmcond.encoders.weights import load_transformer
from lib_llmcond.tiny.llm import write_tiny_llm

pytestmark = pytest.mark.oracle


def _reference(family: str, directory, dtype):
    import transformers

    if family == "t5gemma":  # the reference loads the encoder alone from the full seq2seq checkpoint
        cls, extra = transformers.T5GemmaEncoderModel, {"is_encoder_decoder": False}
    else:
        cls, extra = (
            {"gemma3": transformers.Gemma3ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM}[family],
            {},
        )
    return cls.from_pretrained(directory, dtype=dtype, attn_implementation="eager", **extra).eval()


def _hidden(family: str, model, ids, mask):
    if family == "t5gemma":
        return model(input_ids=ids, attention_mask=mask).last_hidden_state
    return model(ids, output_hidden_states=True).hidden_states[-1]


@pytest.fixture(scope="module", params=["gemma3", "qwen3", "t5gemma"])
def family_dir(request, tmp_path_factory):
    return request.param, write_tiny_llm(tmp_path_factory.mktemp(request.param), request.param, seed=3)


@pytest.mark.parametrize("length", [5, 21])  # 21 > the tiny sliding window of 8
def test_fp32_matches_transformers(family_dir, length):
    family, directory = family_dir
    _, ours = load_transformer(directory, dtype=torch.float32)
    ref = _reference(family, directory, torch.float32)
    ids = torch.randint(3, 512, (2, length), generator=torch.Generator().manual_seed(length))
    mask = torch.ones_like(ids)
    if family == "t5gemma":  # left padding with a mask, as the reference's tokenizer pads
        ids[1, : length // 3], mask[1, : length // 3] = 0, 0
    with torch.no_grad():
        expected = _hidden(family, ref, ids, mask)
        got = ours(ids, mask)
    assert (expected - got).abs().max().item() <= 1e-5


def test_bf16_close_to_transformers(family_dir):
    family, directory = family_dir
    _, ours = load_transformer(directory, dtype=torch.bfloat16)
    ref = _reference(family, directory, torch.bfloat16)
    ids = torch.randint(0, 512, (1, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _hidden(family, ref, ids, torch.ones_like(ids)).float()
        got = ours(ids, torch.ones_like(ids)).float()
    cos = torch.nn.functional.cosine_similarity(expected, got, dim=-1)
    assert cos.min().item() > 0.999
    assert got.dtype == torch.float32 and ours.embed_tokens.weight.dtype == torch.bfloat16
