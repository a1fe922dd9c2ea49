"""Our native encoders against transformers' own model classes on tiny random models (every weight random)."""

import pytest
import torch

from lib_llmcond.encoders.weights import load_transformer
from lib_llmcond.tiny.llm import write_tiny_llm

pytestmark = pytest.mark.oracle


def _reference(family: str, directory, dtype):
    import transformers

    cls = {"gemma3": transformers.Gemma3ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM}[family]
    return cls.from_pretrained(directory, dtype=dtype, attn_implementation="eager").eval()


@pytest.fixture(scope="module", params=["gemma3", "qwen3"])
def family_dir(request, tmp_path_factory):
    return request.param, write_tiny_llm(tmp_path_factory.mktemp(request.param), request.param, seed=3)


@pytest.mark.parametrize("length", [5, 21])  # 21 > the tiny sliding window of 8
def test_fp32_matches_transformers(family_dir, length):
    family, directory = family_dir
    _, ours = load_transformer(directory, dtype=torch.float32)
    ref = _reference(family, directory, torch.float32)
    ids = torch.randint(0, 512, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True).hidden_states[-1]
        got = ours(ids, torch.ones_like(ids))
    assert (expected - got).abs().max().item() <= 1e-5


def test_bf16_close_to_transformers(family_dir):
    family, directory = family_dir
    _, ours = load_transformer(directory, dtype=torch.bfloat16)
    ref = _reference(family, directory, torch.bfloat16)
    ids = torch.randint(0, 512, (1, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids, output_hidden_states=True).hidden_states[-1].float()
        got = ours(ids, torch.ones_like(ids)).float()
    cos = torch.nn.functional.cosine_similarity(expected, got, dim=-1)
    assert cos.min().item() > 0.999
    assert got.dtype == torch.float32 and ours.embed_tokens.weight.dtype == torch.bfloat16
