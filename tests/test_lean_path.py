"""The accelerator's lean layer maths (``encoders/lean.py``: fewer kernels) computes what the op-by-op path
computes, run here on the CPU by switching the path on: fp32 to 1e-5 (only rounding differs), bf16 within a
rounding step or two, with padding, sliding windows, a cached prefix, one or several key/value heads, and
softcapped attention; and whole static encodes stay within the exactness budget."""

from __future__ import annotations

import copy

import pytest
import torch

from lib_llmcond.encoders import lean, transformer
from lib_llmcond.encoders.weights import load_transformer
from lib_llmcond.tiny.llm import TINY, write_tiny_llm


@pytest.fixture
def lean_path(monkeypatch):
    """Switch the accelerator's path on for CPU tensors."""
    monkeypatch.setattr(transformer, "on_accelerator", lambda device: True)


def _variants() -> list[tuple[str, dict]]:
    gemma, t5 = TINY["gemma3"], TINY["t5gemma"]
    return [
        ("gemma3", gemma),  # two key/value heads: grouped-query attention through SDPA
        ("gemma3", {**gemma, "num_key_value_heads": 1}),  # one key/value head: heads folded into the queries
        ("qwen3", TINY["qwen3"]),
        ("t5gemma", t5),  # bidirectional, softcapped, two key/value heads
        ("t5gemma", {**t5, "encoder": {**t5["encoder"], "num_key_value_heads": 1}}),
    ]


def _with_forms() -> list[tuple[str, dict, str]]:
    """Each variant with each attention form it can use (softcapped attention has one)."""
    softcapped = [(f, c, lean.FORMS[0]) for f, c in _variants() if f == "t5gemma"]
    plain = [(f, c) for f, c in _variants() if f != "t5gemma"] + [("t5gemma", _bidirectional_plain())]
    return [(f, c, form) for f, c in plain for form in lean.FORMS] + softcapped


def _bidirectional_plain() -> dict:
    """A T5Gemma encoder without softcapping: bidirectional attention in either form, padded keys masked."""
    t5 = TINY["t5gemma"]
    return {**t5, "encoder": {**t5["encoder"], "attn_logit_softcapping": None}}


def _model(tmp_path, family, config, dtype, form="sdpa"):
    _, model = load_transformer(write_tiny_llm(tmp_path, family, config=config, seed=5), dtype=dtype)
    transformer.fuse_projections(model)  # as on an accelerator
    model.use_attention(form)
    return model


def _inputs(n=21):
    torch.manual_seed(1)
    ids = torch.randint(3, 512, (2, n))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0  # the second row is shorter, right padded
    return ids, mask


def _run(model, ids, mask, prefix_len):
    with torch.no_grad():
        if not prefix_len or not model.config.causal:
            return model(ids, mask)
        state = model.prefix_state(ids[:1, :prefix_len])
        rest = ids[:, prefix_len:]
        return model(rest, mask[:, prefix_len:], prefix=state)


def _compare(model, ids, mask, prefix_len, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    want = _run(model, ids, mask, prefix_len)
    with monkeypatch.context() as m:
        m.setattr(transformer, "on_accelerator", lambda device: True)
        got = _run(model, ids, mask, prefix_len)
    real = mask[:, prefix_len:].bool() if model.config.causal and prefix_len else mask.bool()
    return got[real].float(), want[real].float()


@pytest.mark.parametrize("prefix_len", [0, 5, 10])  # none, inside and beyond the tiny sliding windows
@pytest.mark.parametrize("family,config,form", _with_forms())
def test_lean_path_equals_the_op_by_op_path_in_fp32(tmp_path, monkeypatch, family, config, form, prefix_len):
    model = _model(tmp_path, family, config, torch.float32, form)
    got, want = _compare(model, *_inputs(), prefix_len, monkeypatch)
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family,config,form", _with_forms())
def test_lean_path_in_bf16_differs_by_rounding_only(tmp_path, monkeypatch, family, config, form):
    model = _model(tmp_path, family, config, torch.bfloat16, form)
    got, want = _compare(model, *_inputs(), 5, monkeypatch)
    exact = _run(
        _model(tmp_path / "fp32", family, config, torch.float32), *_inputs(), 5 if family != "t5gemma" else 0
    )
    real = _inputs()[1][:, 5:].bool() if family != "t5gemma" else _inputs()[1].bool()
    exact = exact[real]
    # both bf16 runs sit as far from fp32 as each other: the lean path adds no error of its own
    err_lean, err_ref = (got - exact).abs().mean().item(), (want - exact).abs().mean().item()
    assert err_lean <= 1.25 * err_ref + 1e-4
    assert (got - want).abs().max().item() <= 0.1 * exact.abs().max().item()


def test_rotate_equals_rotate_half_exactly():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, 16)
    angles = torch.randn(2, 7, 8)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    want = transformer._rotate(x.transpose(1, 2), cos[:, None], sin[:, None]).transpose(1, 2)
    got = lean.rotate(x, cos[:, :, None], lean.signed_sin(sin)[:, :, None])
    assert (got - want).abs().max().item() <= 1e-6


def test_masks_fold_query_rows_for_folded_heads():
    from lib_llmcond.encoders.config import config_from_hf

    cfg = config_from_hf({**TINY["gemma3"], "vocab_size": 512, "num_key_value_heads": 1})
    masks = transformer.MaskCache(cfg, None, 2, "cpu", offset=1, additive=torch.float32)
    bias = masks.get(False)  # causal, keys at 0..2, queries at 1..2, four heads each
    assert bias.shape == (1, 1, 8, 3)
    inf = torch.inf
    assert torch.equal(bias[0, 0, :4], torch.tensor([[0.0, 0.0, -inf]] * 4))  # query 1, heads 0-3
    assert torch.equal(bias[0, 0, 4:], torch.tensor([[0.0, 0.0, 0.0]] * 4))  # query 2
    plain = transformer.MaskCache(cfg, None, 2, "cpu", offset=1).get(False)  # the op-by-op path
    assert plain.shape == (1, 1, 2, 3) and plain.dtype == torch.bool


def test_masks_for_the_gemm_form_are_fp32_explicit_and_finite():
    from lib_llmcond.encoders.config import config_from_hf

    cfg = config_from_hf({**TINY["gemma3"], "vocab_size": 512})  # 4 heads over 2 key/value heads
    dtype = lean.mask_dtype(cfg, "gemm", torch.bfloat16)
    bias = transformer.MaskCache(cfg, None, 2, "cpu", 0, dtype, "gemm").get(False)
    assert dtype == torch.float32 and bias.shape == (1, 1, 4, 2)  # causal made explicit, rows (l, head)
    low = torch.finfo(torch.float32).min  # finite: a query with every key blocked stays finite
    assert torch.equal(bias[0, 0], torch.tensor([[0.0, low], [0.0, low], [0.0, 0.0], [0.0, 0.0]]))
    sdpa = transformer.MaskCache(cfg, None, 2, "cpu", 0, torch.bfloat16, "sdpa").get(False)
    assert sdpa is None  # SDPA is told "causal" instead


def test_fold_follows_the_key_value_heads():
    from lib_llmcond.encoders.config import config_from_hf

    def fold(raw: dict, form: str = "sdpa") -> int:
        return lean.fold_of(config_from_hf({**raw, "vocab_size": 512}), form)

    t5 = TINY["t5gemma"]
    assert fold(TINY["gemma3"]) == 1  # 4 heads over 2: SDPA's grouped query
    assert fold(TINY["gemma3"], "gemm") == 2  # the GEMMs stack each group's heads
    assert fold({**TINY["gemma3"], "num_key_value_heads": 1}) == 4
    assert fold({**t5, "encoder": {**t5["encoder"], "vocab_size": 512}}) == 2  # softcapped: groups stacked


@pytest.mark.parametrize("plus_one", [True, False])
def test_fused_rms_norm_matches_the_formula(lean_path, plus_one):
    from lib_llmcond.compat import has_fused_rms_norm

    if not has_fused_rms_norm():
        pytest.skip("this torch has no F.rms_norm (the formula is used)")
    norm = transformer.RMSNorm(64, 1e-6, plus_one)
    with torch.no_grad():
        norm.weight.normal_(0, 0.3)
    half = copy.deepcopy(norm).to(torch.bfloat16)  # a bf16 model's norm
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        got, got32 = half(x.bfloat16()), norm(x)  # the lean path: F.rms_norm in the input's dtype
        with transformer.op_by_op():
            want, want32 = half(x.bfloat16()), norm(x)  # the formula
    assert got.dtype == want.dtype == torch.bfloat16
    step = want.float().abs() * 2**-7 + 1e-3  # one bf16 rounding step (8 significant bits) at most
    assert ((got.float() - want.float()).abs() <= step).all()
    assert (got32 - want32).abs().max().item() <= 1e-5


# -- the check before a model computes on a device (encoders/lean_check.py) --------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family,config", _variants())
def test_the_check_passes_healthy_models(tmp_path, lean_path, family, config, dtype):
    from lib_llmcond.encoders.lean_check import choose_lean_form

    model = _model(tmp_path, family, config, dtype)
    assert choose_lean_form(model, torch.device("cpu"), dtype) == "sdpa"  # off CUDA the fused form only


@pytest.fixture
def two_forms(monkeypatch):
    """Both attention forms tried, as on CUDA; returns the timings the check will see, to be filled in."""
    from lib_llmcond.encoders import lean_check

    seconds: dict[str, float] = {}
    monkeypatch.setattr(lean_check, "candidate_forms", lambda cfg, device: lean.FORMS)
    monkeypatch.setattr(lean_check, "seconds_per_attention", lambda cfg, dev, dtype, form: seconds[form])
    return seconds


@pytest.mark.parametrize("faster", lean.FORMS)
def test_the_check_keeps_the_faster_attention_form(tmp_path, lean_path, monkeypatch, two_forms, faster):
    from lib_llmcond.encoders.llm import load_llm
    from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

    two_forms.update({form: 1e-3 if form == faster else 2e-3 for form in lean.FORMS})
    write_tiny_gemma_tokenizer(tmp_path)
    llm = load_llm(write_tiny_llm(tmp_path, "gemma3", seed=5), dtype=torch.float32)
    assert llm.model.lean and llm.model.attention_form == faster
    gemm_calls = []
    gemm = lean._gemm_attention
    monkeypatch.setattr(lean, "_gemm_attention", lambda *a: gemm_calls.append(1) or gemm(*a))
    ids, mask = _inputs()
    with torch.no_grad():
        got = llm.model(ids, mask)
    assert len(gemm_calls) == (llm.model.config.num_layers if faster == "gemm" else 0)  # every layer so
    with torch.no_grad(), transformer.op_by_op():
        want = llm.model(ids, mask)
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() <= 1e-5


def test_the_forms_are_timed_in_turns_and_the_best_time_counts(tmp_path, lean_path, monkeypatch):
    from lib_llmcond.encoders import lean_check

    calls: list[str] = []
    times = {"sdpa": [5e-3, 1e-3, 1e-3], "gemm": [2e-3, 2e-3, 2e-3]}  # sdpa's first run met a cold clock

    def timed(cfg, device, dtype, form):
        calls.append(form)
        return times[form][calls.count(form) - 1]

    monkeypatch.setattr(lean_check, "candidate_forms", lambda cfg, device: lean.FORMS)
    monkeypatch.setattr(lean_check, "seconds_per_attention", timed)
    model = _model(tmp_path, "gemma3", TINY["gemma3"], torch.float32)
    assert lean_check.choose_lean_form(model, torch.device("cpu"), torch.float32) == "sdpa"
    assert calls == ["sdpa", "gemm"] * lean_check.ROUNDS


def test_a_faster_form_that_disagrees_is_not_used(tmp_path, lean_path, monkeypatch, two_forms, caplog):
    from lib_llmcond.encoders.lean_check import choose_lean_form

    two_forms.update(sdpa=2e-3, gemm=1e-3)
    monkeypatch.setattr(lean, "_gemm_attention", lambda q, k, v, bias, cfg: q.flatten(2))  # no attention
    model = _model(tmp_path, "gemma3", TINY["gemma3"], torch.float32)
    with caplog.at_level("INFO", logger="llmcond"):
        assert choose_lean_form(model, torch.device("cpu"), torch.float32) == "sdpa"
    assert "gemm disagrees" in caplog.text and model.attention_form == "sdpa"


@pytest.mark.parametrize("raw", [TINY["gemma3"], _bidirectional_plain()], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("form", lean.FORMS)
def test_each_form_can_be_timed(monkeypatch, raw, form):
    from lib_llmcond.encoders import lean_check
    from lib_llmcond.encoders.config import config_from_hf

    encoder = raw.get("encoder")
    cfg = config_from_hf(
        {**raw, "vocab_size": 512, **({"encoder": {**encoder, "vocab_size": 512}} if encoder else {})}
    )
    monkeypatch.setattr(lean_check, "TIMED_TOKENS", 64)  # the CPU is slow; the shapes are built the same way
    assert lean_check.seconds_per_attention(cfg, torch.device("cpu"), torch.bfloat16, form) > 0


def test_half_precision_scores_are_written_in_fp32():
    from lib_llmcond.compat import bmm_writes_fp32

    assert not bmm_writes_fp32(torch.device("cpu"))  # CUDA only: the CPU takes fp32 copies (same products)
    q, kt = torch.randn(3, 5, 8).bfloat16(), torch.randn(3, 8, 4).bfloat16()
    scores = lean._scores_fp32(q, kt)
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, q.double().bmm(kt.double()).float(), atol=1e-5)


def test_a_lean_form_that_disagrees_sends_the_model_to_the_op_by_op_maths(
    tmp_path, lean_path, monkeypatch, caplog
):
    from lib_llmcond.encoders.llm import load_llm
    from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

    monkeypatch.setattr(lean, "rotate", lambda x, cos, sin: x)  # a broken lean form: rope left out
    write_tiny_gemma_tokenizer(tmp_path)
    with caplog.at_level("WARNING", logger="llmcond"):  # the CPU plays the accelerator (lean_path)
        llm = load_llm(write_tiny_llm(tmp_path, "gemma3", seed=5), dtype=torch.float32)
    assert llm.model.lean is False and "disagrees" in caplog.text
    ids, mask = _inputs()
    with torch.no_grad():
        got = llm.model(ids, mask)
        with transformer.op_by_op():
            want = llm.model(ids, mask)
    assert torch.equal(got, want)  # the model now computes the op-by-op way


def test_lean_forms_that_all_fail_send_the_model_to_the_op_by_op_maths(
    tmp_path, lean_path, monkeypatch, two_forms, caplog
):
    from lib_llmcond.encoders.lean_check import choose_lean_form

    def refuse(*args, **kwargs):
        raise RuntimeError("no kernel for this layout")

    monkeypatch.setattr(lean, "attend", refuse)
    model = _model(tmp_path, "gemma3", TINY["gemma3"], torch.float32)
    with caplog.at_level("WARNING", logger="llmcond"):
        assert choose_lean_form(model, torch.device("cpu"), torch.float32) is None
    assert caplog.text.count("no kernel for this layout") == 2  # each form tried, each reported
