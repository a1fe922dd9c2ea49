"""A weight's effect through the whole pipeline (tiny models), for every selectable mapping: monotonic in the
weight, pooled untouched, 1.0 and ``Ignore`` bit-identical to emphasis off on the clean text."""

import pytest
import torch

from lib_llmcond.engine import EncodeOptions
from lib_llmcond.pipeline import MAPPINGS

TEXT = "a {} fox sitting in the snow under a grey sky"
WEIGHTS = (0.7, 1.0, 1.1, 1.3, 1.6, 2.0)


def _encode(engine, demo, text: str, **kw):
    llm, adapter = demo
    o = EncodeOptions(llm=str(llm), adapter=str(adapter), device="cpu", llm_dtype="float32", **kw)
    return engine.encode_texts([text], o)[0]


def _scales(emphasised: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """Per output token, the factor emphasis scaled it by: <E_j, P_j> / |P_j|^2 (both modes only scale rows)."""
    return (emphasised * plain).sum(-1) / (plain * plain).sum(-1)


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("mode", ["Original", "No norm"])
def test_the_effect_of_a_weight_is_monotonic(engine, demo, mapping, mode):
    """``No norm`` scales token j by m_j, ``Original`` by c * m_j with one factor c per prompt (the mean restore),
    so what grows with the weight under both is the contrast between tokens: s_a / s_b for the token a that the
    weight lifts most and the token b it lifts least. It is 1 at weight 1.0, below 1 for a lower weight."""
    plain = _encode(engine, demo, TEXT.format("red"), emphasis="None")
    runs = {
        w: _encode(engine, demo, TEXT.format(f"(red:{w})"), emphasis=mode, emphasis_mapping=mapping)
        for w in WEIGHTS
    }
    for run in runs.values():
        assert torch.equal(run.pooled, plain.pooled)  # pooled is never scaled
    scales = {w: _scales(run.crossattn, plain.crossattn) for w, run in runs.items()}
    a, b = int(scales[2.0].argmax()), int(scales[2.0].argmin())
    contrast = [(scales[w][a] / scales[w][b]).item() for w in WEIGHTS]
    assert all(y > x for x, y in zip(contrast, contrast[1:])), contrast
    assert contrast[WEIGHTS.index(1.0)] == 1.0
    if mode == "No norm":  # the scales are the multipliers themselves: above 1 exactly where the weight lands
        assert scales[2.0][a] > 1.0 and (scales[0.7] <= 1.0 + 1e-5).all()


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_unit_weight_and_ignore_are_bit_identical_to_emphasis_off(engine, demo, mapping):
    off = _encode(engine, demo, TEXT.format("red"), emphasis="None")
    for text, mode in ((TEXT.format("(red:1.0)"), "Original"), (TEXT.format("(red:1.0)"), "No norm"),
                       (TEXT.format("((red))"), "Ignore"), (TEXT.format("red"), "Original")):  # fmt: skip
        got = _encode(engine, demo, text, emphasis=mode, emphasis_mapping=mapping)
        assert torch.equal(got.crossattn, off.crossattn) and torch.equal(got.pooled, off.pooled), (text, mode)
