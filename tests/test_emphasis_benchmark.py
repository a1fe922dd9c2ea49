"""The emphasis benchmark's model helpers on a tiny Q8_0 GGUF: the Q8_0 rewrite and the dense linears."""

from pathlib import Path

import torch

from benchmarks.emphasis_mapping import densify, requantize_q8, verdict
from lib_llmcond.encoders.gguf.quantized import GGUFLinear
from lib_llmcond.encoders.llm import load_llm
from lib_llmcond.tiny.gguf import write_tiny_gguf


def _hidden(llm, text: str = "a girl with silver hair, night sky") -> torch.Tensor:
    path = llm.text_path_for(None)
    return llm.hidden_states(path.batch([path.tokenize(text, llm.tokenizer)], llm.tokenizer))


def test_q8_rewrite_of_q8_is_exact_and_dense_linears_give_the_same_numbers(demo, tmp_path: Path):
    gguf = write_tiny_gguf(demo[0], tmp_path / "q8.gguf", qtype="Q8_0")
    llm = load_llm(gguf, dtype=torch.float32)
    before = {n: m.qweight.clone() for n, m in llm.model.named_modules() if isinstance(m, GGUFLinear)}
    want = _hidden(llm)
    assert requantize_q8(llm.model) > len(before) > 0  # the linears and the embedding
    for name, module in llm.model.named_modules():  # Q8_0 values re-encode to the same bytes
        if name in before:
            assert torch.equal(module.qweight, before[name]), name
    densify(llm.model, torch.float32)
    assert not any(isinstance(m, GGUFLinear) for m in llm.model.modules())
    assert torch.equal(_hidden(llm), want)


def test_verdict_applies_the_bar():
    def row(gain, ratio, stability):
        return {"gain": gain, "ratio": ratio, "stability": stability}

    diffuse = {"effective_inputs": 39.0, "inputs": 40}
    focused = {"effective_inputs": 5.0, "inputs": 40}
    results = {
        "random": {"peakedness": diffuse, "mappings": {"sharpened": row(0.2, 3.0, 1.3), "attention": row(0.1, 1, 1),
                                                        "argmax": row(0.4, 99, 9.0)}},
        "focused": {"peakedness": focused, "mappings": {"sharpened": row(0.6, 99, 1.5), "attention": row(0.3, 30, 1),
                                                         "argmax": row(0.6, 99, 1.2)}},
    }  # fmt: skip
    v = verdict(results)
    assert v["meets_bar"] == ["sharpened", "attention"] and v["chosen_by_rule"] == "sharpened"
    assert v["diffuse_regimes"] == ["random"]
