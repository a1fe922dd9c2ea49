"""The whole chain (CLI encode, emphasis off) against the reference path rebuilt from its spec (tests/ref_oracle.py)."""

import pytest
import torch
from ref_oracle import reference_gemma, reference_t5gemma
from safetensors.torch import load_file

from lib_llmcond.cli import main

pytestmark = pytest.mark.oracle

PROMPTS = [
    "a girl with long silver hair stands in a field of flowers",
    "  masterpiece, (best quality:1.2), 1girl, [smile] BREAK night sky  ",
    "## Character 1\nA knight.\n\n## Scene\nA castle on a hill at sunset. 夕焼けの海と猫。 Émilie",
    "",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_cli_encode_matches_reference(demo, tmp_path, prompt):
    llm, adapter = demo
    out = tmp_path / "c.safetensors"
    args = ["encode", "--llm", str(llm), "--adapter", str(adapter), "--prompt", prompt]
    assert main([*args, "--emphasis", "off", "--llm-dtype", "float32", "--out", str(out)]) == 0
    got = load_file(str(out))
    crossattn, pooled = reference_gemma(llm, adapter, prompt)
    assert got["crossattn"].shape == (1, 308, 2048) and got["pooled"].shape == (1, 1280)
    assert got["vector"].shape == (1, 2816) and got["crossattn"].dtype == torch.float32
    assert (got["crossattn"] - crossattn).abs().max().item() <= 1e-4
    assert (got["pooled"] - pooled).abs().max().item() <= 1e-4
    assert torch.equal(got["vector"][:, :1280], got["pooled"])


def test_batch_of_prompts_equals_each_alone(demo):
    from lib_llmcond.engine import EncodeOptions, Engine

    llm, adapter = demo
    opts = EncodeOptions(
        llm=str(llm), adapter=str(adapter), emphasis="None", llm_dtype="float32", device="cpu"
    )
    together = Engine().get_conditioning(PROMPTS, opts, width=1024, height=1024)
    for i, prompt in enumerate(PROMPTS):
        alone = Engine().get_conditioning([prompt], opts, width=1024, height=1024)
        assert (together["crossattn"][i] - alone["crossattn"][0]).abs().max().item() <= 1e-4
        assert (together["vector"][i] - alone["vector"][0]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("prompt", [PROMPTS[0], PROMPTS[2], "", "word " * 700])
def test_t5gemma_chain_matches_reference(t5_demo, tmp_path, prompt):
    from lib_llmcond.engine import EncodeOptions, Engine

    llm, adapter = t5_demo
    opts = EncodeOptions(
        llm=str(llm), adapter=str(adapter), emphasis="None", llm_dtype="float32", device="cpu"
    )
    got = Engine().get_conditioning([prompt], opts, width=832, height=1216)
    (crossattn, pooled), _ = reference_t5gemma(llm, adapter, prompt)
    assert (got["crossattn"] - crossattn).abs().max().item() <= 1e-4
    assert (got["vector"][:, :1280] - pooled).abs().max().item() <= 1e-4


def test_t5gemma_text_path_tokens_padding_and_eos(t5_demo):
    from transformers import GemmaTokenizer

    from lib_llmcond.text.paths import T5GemmaPath
    from lib_llmcond.text.tokenizer import load_tokenizer

    llm, _ = t5_demo
    ours = load_tokenizer(llm)
    ref = GemmaTokenizer(vocab_file=str(llm / "tokenizer.model"), add_bos_token=True, padding_side="left")
    path = T5GemmaPath()
    for prompt in ["a cat", "word " * 700]:
        batch = path.batch([path.tokenize(prompt, ours)], ours)
        inputs = ref(
            prompt + "<eos>", return_tensors="pt", padding="max_length", max_length=512, truncation=True
        )
        k, pad = int(batch.attention_mask.sum()), batch.adapter_left_pad[0]
        assert pad + k == 512 and batch.adapter_mask  # the reference's left-padded 512 layout
        layout = torch.cat([torch.full((pad,), ours.pad_id), batch.input_ids[0, :k]])
        assert torch.equal(layout, inputs.input_ids[0])
        assert torch.equal(torch.cat([torch.zeros(pad), torch.ones(k)]).long(), inputs.attention_mask[0])
        assert torch.equal(
            batch.position_ids[0, :k], torch.arange(pad, 512)
        )  # positions of the padded layout
    short = path.batch([path.tokenize("a cat", ours)], ours)
    assert short.input_ids[0, -1].item() == ours.eos_id and short.adapter_left_pad[0] > 0  # left padded
    long = path.batch([path.tokenize("word " * 700, ours)], ours)
    assert ours.eos_id not in long.input_ids[0].tolist()  # truncation drops the <eos>, as in the reference
