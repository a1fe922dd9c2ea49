"""Weights to tokens, to the adapter's output tokens, and the hosts' emphasis modes on crossattn."""

from __future__ import annotations

import math

import needs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_llmcond.errors import PromptError
from lib_llmcond.pipeline import DEFAULT_MAPPING, MAPPINGS
from lib_llmcond.prompt.emphasis import Span, parse_prompt
from lib_llmcond.prompt.weights import (
    EMPHASIS_MODES,
    MAPPING_POWERS,
    apply_emphasis,
    multipliers_at,
    output_multipliers,
    sharpen,
    token_weights,
)


def _bytelevel_tokenizer():
    tokenizers = needs.module("tokenizers", "tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["a cat on a hill, blue sky", "the cat sits", "長い髪の女の子 and a cat"] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def test_token_weights_on_byte_level_offsets():
    p = parse_prompt("a (cat:1.5) on a [hill], 長い(髪:1.3)の sky")
    enc = _bytelevel_tokenizer().encode(p.text)
    weights = token_weights(enc.offsets, p.spans, text=p.text)
    char_w = [1.0] * len(p.text)
    for s in p.spans:
        char_w[s.start : s.end] = [s.weight] * (s.end - s.start)
    seen_overlap = False
    for (a, b), w, piece in zip(enc.offsets, weights, enc.tokens):
        visible = {char_w[c] for c in range(a, b) if not p.text[c].isspace()}
        if len(visible) == 1:  # every visible character agrees: the token must weigh that
            assert w == visible.pop(), (piece, a, b)
    for k in range(1, len(enc.offsets)):
        seen_overlap |= enc.offsets[k][0] < enc.offsets[k - 1][1]
    assert seen_overlap, "the byte-level tokenizer should split a CJK character into overlapping tokens"
    assert any(w == 1.5 for w in weights) and any(w == 1.3 for w in weights)


def test_token_weights_rules():
    spans = [Span(1, 4, 1.5), Span(5, 7, 0.8)]
    text = " cat xy zz"
    offsets = [None, (0, 0), (0, 4), (4, 7), (7, 10)]
    assert token_weights(offsets, spans, text=text) == [1.0, 1.0, 1.5, 0.8, 1.0]
    # without the text, the space votes: " c" is one character each -> tie -> the emphasis wins
    assert token_weights([(0, 2), (0, 1)], spans) == [1.5, 1.0]
    assert token_weights([(2, 6)], spans, text=text) == [1.5]  # a, t against x
    assert token_weights([(3, 7)], spans, text=text) == [0.8]  # t against x, y


def test_ties_go_to_the_strongest_emphasis():
    spans = [Span(1, 4, 1.5), Span(5, 7, 0.8)]
    text = " cat xy zz"
    assert token_weights([(5, 10)], spans, text=text) == [0.8]  # x, y against z, z
    assert token_weights([(2, 7)], spans, text=text) == [1.5]  # a, t against x, y: |log 1.5| > |log 0.8|


def _attention(b=2, t=6, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, t, length, generator=g) * 2, dim=-1)


@pytest.mark.parametrize("mode", MAPPINGS)
def test_all_ones_give_exact_ones(mode):
    m = output_multipliers(_attention(), torch.ones(2, 9), mode)
    assert torch.equal(m, torch.ones(2, 6))


def test_attention_mapping_formula_and_leftover_mass():
    a = _attention()
    w = torch.rand(2, 9) + 0.5
    expected = (a * w[:, None, :]).sum(-1)  # rows sum to 1: a weighted mean of the inputs' weights
    assert torch.allclose(output_multipliers(a, w, "attention"), expected, atol=1e-6)
    half = a * 0.5  # half the mass elsewhere (a Perceiver's latents): that half weighs 1.0
    assert torch.allclose(output_multipliers(half, w, "attention"), 0.5 * expected + 0.5, atol=1e-6)


def test_mappings_are_the_pipelines_choices():
    assert tuple(MAPPING_POWERS) == MAPPINGS and DEFAULT_MAPPING in MAPPINGS
    assert MAPPING_POWERS["attention"] == 1.0


def test_sharpen_is_the_softmax_of_scaled_logits_keeping_the_mass():
    """Oracle from the definition: sharpening softmax(s) by p is softmax(p * s); rows keep their mass."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g) * 3
    for power in (2.0, 4.0, 16.0):
        assert torch.allclose(sharpen(logits.softmax(-1), power), (power * logits).softmax(-1), atol=1e-6)
    a = logits.softmax(-1) * 0.4
    a[0, 1] = 0.0  # a row without mass (no real input) stays zero, without NaN
    a[1, 2, :3] = 0.0  # exact zeros stay zero
    out = sharpen(a, 4.0)
    assert torch.isfinite(out).all() and torch.equal(out[0, 1], torch.zeros(7))
    assert torch.equal(out[1, 2, :3], torch.zeros(3))
    assert torch.allclose(out.sum(-1), a.sum(-1), atol=1e-6)
    assert torch.equal(sharpen(a, 1.0), a)


@pytest.mark.parametrize("mode", MAPPINGS)
def test_multipliers_monotonic_in_a_weight(mode):
    a = _attention(b=1, t=12, length=9, seed=3)
    prev = None
    for weight in (0.5, 0.7, 0.8, 1.0, 1.1, 1.2, 1.3, 1.5, 1.6, 2.0):
        w = torch.ones(1, 9)
        w[0, 4] = weight
        m = output_multipliers(a, w, mode)
        if prev is not None:
            assert torch.all(m >= prev - 1e-7)
        prev = m


def test_sharpened_leaks_less():
    """Leakage: the weight reaching output tokens that barely read the weighted token."""
    a = _attention(b=1, t=64, length=16, seed=5)
    w = torch.ones(1, 16)
    w[0, 7] = 2.0
    reads = a[0, :, 7]
    low = reads < reads.median()
    leak = {
        mode: (output_multipliers(a, w, mode)[0, low] - 1).abs().mean().item()
        for mode in ("attention", "sharpened")
    }
    assert leak["sharpened"] < leak["attention"]


def _argmax(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The former default (removed): output token j takes the weight of the input it attends to most."""
    return torch.gather(w, 1, a.argmax(dim=-1))


def _lipschitz_violations(mapping, a: torch.Tensor, w: torch.Tensor, power: float, eps: float) -> int:
    """Perturb every attention entry by a factor within exp(+-eps); count multipliers that move by more than
    ``sharpen``'s bound max|w - 1| * mass * (exp((2p + 1) eps) - 1)."""
    g = torch.Generator().manual_seed(7)
    bad = 0
    for _ in range(20):
        a2 = a * torch.exp(eps * (2 * torch.rand(a.shape, generator=g) - 1))
        moved = (mapping(a2, w) - mapping(a, w)).abs()
        bound = (w - 1).abs().max() * a.sum(-1) * (math.exp((2 * power + 1) * eps) - 1)
        bad += int((moved > bound * (1 + 1e-4) + 1e-6).sum())
    return bad


@pytest.mark.parametrize("mode", MAPPINGS)
@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])  # diffuse to peaked attention
def test_multipliers_are_lipschitz_in_the_attention(mode, scale):
    """A small change of the attention moves the multipliers by a bounded, proportionally small amount."""
    power = MAPPING_POWERS[mode]
    a = _attention(b=2, t=64, length=24, seed=11) ** scale
    a = a / a.sum(-1, keepdim=True)
    w = torch.ones(2, 24)
    w[:, 5:8] = 1.6
    w[:, 15] = 0.7
    for eps in (1e-4, 1e-3, 1e-2):
        assert _lipschitz_violations(lambda x, y: output_multipliers(x, y, mode), a, w, power, eps) == 0


def test_argmax_fails_the_continuity_bound():
    """The check has teeth: near a tie, argmax jumps by the whole weight under a perturbation of 1e-4."""
    a = torch.full((1, 4, 6), 0.1)
    a[0, :, 2] = a[0, :, 4] = 0.25  # tied strongest inputs: 2 (weighted) and 4
    w = torch.ones(1, 6)
    w[0, 2] = 1.5
    assert _lipschitz_violations(_argmax, a, w, 64.0, 1e-4) > 0
    assert _lipschitz_violations(lambda x, y: multipliers_at(x, y, 64.0), a, w, 64.0, 1e-4) == 0


def _z(b=2, t=6, d=8, dtype=torch.float32):
    return (torch.randn(b, t, d) + 0.3).to(dtype)


@pytest.mark.parametrize("mode", EMPHASIS_MODES)
def test_all_ones_bit_identical(mode):
    z = _z()
    assert torch.equal(apply_emphasis(z, torch.ones(2, 6), mode), z)


@pytest.mark.parametrize("mode", ["Ignore", "None"])
def test_ignore_and_none_unchanged(mode):
    z = _z()
    assert torch.equal(apply_emphasis(z, torch.rand(2, 6) + 0.5, mode), z)


def test_original_matches_host_formula_per_row_and_keeps_mean():
    z = _z()
    m = torch.ones(2, 6)
    m[0, 2] = 1.5
    m[1, 4] = 0.7
    out = apply_emphasis(z, m, "Original")
    for row in range(2):  # the host's formula on one prompt (its mean is over its whole batch)
        zr = z[row : row + 1]
        mean0 = zr.mean()
        scaled = zr * m[row : row + 1, :, None].expand(zr.shape)
        host = scaled * (mean0 / scaled.mean())
        assert torch.allclose(out[row : row + 1], host, rtol=1e-6, atol=1e-6)
        assert torch.allclose(out[row].mean(), z[row].mean(), rtol=1e-5, atol=1e-6)


def test_no_norm_scales_and_rows_without_weights_stay_identical():
    z = _z(b=3)
    m = torch.ones(3, 6)
    m[1, 0] = 2.0
    out = apply_emphasis(z, m, "No norm")
    assert torch.equal(out[1], z[1] * m[1, :, None])
    assert torch.equal(out[0], z[0]) and torch.equal(out[2], z[2])
    assert torch.equal(apply_emphasis(z, m, "Original")[2], z[2])


def test_dtype_kept_and_zero_mean_guard():
    z = _z(dtype=torch.bfloat16)
    m = torch.full((2, 6), 1.2)
    assert apply_emphasis(z, m, "Original").dtype == torch.bfloat16
    flat = torch.zeros(1, 6, 8)
    assert torch.equal(apply_emphasis(flat, torch.full((1, 6), 2.0), "Original"), flat)


def test_unknown_modes():
    with pytest.raises(PromptError, match="Original"):
        apply_emphasis(_z(), torch.ones(2, 6), "original")
    with pytest.raises(PromptError, match="attention"):
        output_multipliers(_attention(), torch.ones(2, 9), "argmax")


@settings(max_examples=60, deadline=None)
@given(st.floats(0.2, 3.0), st.integers(0, 8))
def test_influence_grows_with_the_weight(weight, index):
    """On a tiny attention adapter: crossattn moves by a monotonic amount as one word's weight grows."""
    g = torch.Generator().manual_seed(index)
    a = torch.softmax(torch.randn(1, 12, 9, generator=g) * 2, dim=-1)
    v = torch.randn(1, 9, 8, generator=g) + 0.2
    z = a @ v

    def moved(wt: float) -> float:
        w = torch.ones(1, 9)
        w[0, index] = wt
        return (apply_emphasis(z, output_multipliers(a, w, DEFAULT_MAPPING), "No norm") - z).norm().item()

    assert moved(1.0) == 0.0
    lo, hi = sorted((weight, 1.0 + 1.5 * (weight - 1.0)))  # further from 1.0 on the same side
    if weight >= 1.0:
        assert moved(hi) >= moved(lo) - 1e-6
    else:
        assert moved(lo) >= moved(hi) - 1e-6
