"""Splitting long prompts on boundaries, and the report of where a prompt is cut."""

from __future__ import annotations

import random
import re

import needs
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_llmcond.prompt.chunks import cut_report, split_for_budget
from lib_llmcond.prompt.emphasis import Span, parse_prompt


def words(text: str) -> int:
    return len(text.split())


def _sentences(n: int, seed: int = 0, length: int = 20) -> list[str]:
    rng = random.Random(seed)
    vocab = [
        "girl",
        "long",
        "hair",
        "blue",
        "eyes",
        "standing",
        "street",
        "night",
        "rain",
        "lantern",
        "umbrella",
        "smiling",
        "red",
        "coat",
    ]
    return [" ".join(rng.choice(vocab) for _ in range(length)) + "." for _ in range(n)]


def _flat(text: str) -> str:
    return re.sub(r"\s", "", text)


def test_1500_tokens_give_3_pieces_cut_on_sentences():
    text = " ".join(_sentences(75))  # 1,500 words
    assert words(text) == 1500
    pieces = split_for_budget(text, [], words, 512)
    assert len(pieces) == 3
    for piece in pieces:
        assert words(piece.text) <= 512 and piece.text.endswith(".")
        assert text[piece.start : piece.start + len(piece.text)] == piece.text
    assert _flat("".join(p.text for p in pieces)) == _flat(text)


def test_headings_are_preferred():
    sections = [f"## Character {k}\n" + " ".join(_sentences(10, seed=k)) for k in range(1, 6)]
    text = "\n".join(sections)  # 5 sections of ~193 words: two fit in 512
    pieces = split_for_budget(text, [], words, 512)
    assert [p.text.split("\n")[0] for p in pieces] == ["## Character 1", "## Character 3", "## Character 5"]


def test_preference_order_within_the_window():
    # the comma is later, but a sentence end in the window (at least half of what fits) wins
    text = "aa bb cc. dd ee, ff gg hh ii jj"
    assert [p.text for p in split_for_budget(text, [], words, 5)] == ["aa bb cc.", "dd ee, ff gg hh", "ii jj"]
    # a sentence end before the window loses to a later comma
    assert split_for_budget(text, [], words, 6)[0].text == "aa bb cc. dd ee,"
    text = "aa bb\ncc dd. ee ff gg hh"  # a line break beats a sentence end
    assert split_for_budget(text, [], words, 5)[0].text == "aa bb\ncc dd."
    assert split_for_budget("aa bb cc\ndd. ee ff gg", [], words, 4)[0].text == "aa bb cc"


def test_never_inside_an_emphasis_span_and_spans_follow():
    p = parse_prompt("one two three. (four five. six seven:1.3) eight nine ten")
    pieces = split_for_budget(p.text, p.spans, words, 6)
    assert [x.text for x in pieces] == ["one two three.", "four five. six seven eight nine", "ten"]
    assert [(x.text[s.start : s.end], s.weight) for x in pieces for s in x.spans] == [
        ("four five. six seven", 1.3)
    ]


def test_a_span_longer_than_the_budget_is_cut_inside():
    text = "a b c d e f g h"
    pieces = split_for_budget(text, [Span(0, len(text), 1.2)], words, 3)
    assert [x.text for x in pieces] == ["a b c", "d e f", "g h"]
    assert all(x.spans == (Span(0, len(x.text), 1.2),) for x in pieces)


def test_a_word_longer_than_the_budget_is_cut_hard():
    pieces = split_for_budget("x" * 10, [], len, 4)
    assert [p.text for p in pieces] == ["xxxx", "xxxx", "xx"]


def test_short_text_is_one_piece():
    assert [p.text for p in split_for_budget("  hello world  ", [Span(2, 7, 1.1)], words, 512)] == [
        "hello world"
    ]
    assert split_for_budget("  hello world  ", [Span(2, 7, 1.1)], words, 512)[0].spans == (Span(0, 5, 1.1),)
    assert split_for_budget("", [], words, 5)[0].text == ""


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["aa", "bb", "c.", "d,", "\n", "## H\n", " ", "長い", "éé"]), max_size=80),
    st.integers(1, 12),
)
def test_pieces_fit_and_keep_every_character(parts, budget):
    text = " ".join(parts)
    pieces = split_for_budget(text, [], words, budget)
    assert all(words(p.text) <= budget for p in pieces)
    assert _flat("".join(p.text for p in pieces)) == _flat(text)


def _ws_offsets(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def test_cut_report_names_the_word():
    text = "masterpiece, 1girl, long hair, blue eyes, standing in the rain"
    offsets = _ws_offsets(text)
    info = cut_report(text, offsets, 5)
    assert info.token_index == 5 and info.word == "eyes"
    assert info.char_index == text.index("eyes")
    assert "blue | eyes" in info.snippet and "cut at token 5" in info.message
    assert cut_report(text, offsets, len(offsets)) is None


def test_cut_report_mid_word_and_template_tokens():
    text = "a wonderful day"
    offsets = [None, (0, 1), (2, 6), (6, 11), (12, 15), None]  # "won" + "derful"
    info = cut_report(text, offsets, 3)
    assert info.word == "wonderful" and info.char_index == 6
    info = cut_report(text, offsets, 5)  # only a template token after the cut
    assert info.word == "" and "template" in info.snippet and info.token_index == 5
    assert cut_report(text, offsets, 6) is None


def test_cut_report_non_ascii_with_byte_level_offsets():
    tokenizers = needs.module("tokenizers", "tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = "少女, façade élégante, 長い髪 and rain 🌧 night"
    tok.train_from_iterator([text] * 5, trainer=trainer)
    enc = tok.encode(text)
    for n in range(len(enc.offsets)):
        info = cut_report(text, enc.offsets, n)
        start = enc.offsets[n][0]
        while text[start].isspace():
            start += 1
        assert info.char_index == start
        assert info.word and info.word in text
        assert (
            text.find(info.word) <= start < text.find(info.word, start - len(info.word)) + len(info.word) + 1
        )
        assert info.snippet.replace(" | ", " ").replace("|", "").strip()


def test_cut_report_long_cjk_run_uses_the_token():
    text = "長い髪の女の子が雨の中で赤い傘を持って立っている夜の街の風景"
    offsets = [(k, k + 1) for k in range(len(text))]
    info = cut_report(text, offsets, 10)
    assert info.word == text[10] and info.token_index == 10
