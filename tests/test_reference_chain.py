"""The whole chain (CLI encode, emphasis off) against the reference path rebuilt from its spec (tests/ref_oracle.py)."""

import pytest
import torch
from ref_oracle import reference_gemma
from safetensors.torch import load_file

from lib_llmcond.cli import main
from lib_llmcond.tiny import build_demo_models

pytestmark = pytest.mark.oracle

PROMPTS = [
    "a girl with long silver hair stands in a field of flowers",
    "  masterpiece, (best quality:1.2), 1girl, [smile] BREAK night sky  ",
    "## Character 1\nA knight.\n\n## Scene\nA castle on a hill at sunset. 夕焼けの海と猫。 Émilie",
    "",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_models(tmp_path_factory.mktemp("demo"))


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
