"""The emphasis parser: the hosts' published results, hand-derived grammar cases, and properties."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_llmcond.prompt.emphasis import (
    MIN_WEIGHT,
    PARAGRAPH,
    parse_prompt,
    parse_prompt_attention,
    parse_weights_only,
)

R, S = 1.1, 1 / 1.1

# The doctest of the hosts' modules/prompt_parser.py parse_prompt_attention (their published outputs).
HOST_DOCTEST = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]


def _lists(pairs):
    return [[t, w] for t, w in pairs]


@pytest.mark.parametrize(("text", "expected"), HOST_DOCTEST)
def test_host_doctest_exact(text, expected):
    assert parse_prompt_attention(text) == _lists(expected)  # exact floats, lists as the host returns


def test_doctest_four_decimals_from_reference():
    got = dict(parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")[1:])
    assert round(got["house"], 4) == 1.573
    assert got["on"] == 1.0 and round(got["hill"], 4) == 0.55 and round(got["sky"], 4) == 1.4641


# Cases derived by hand from the grammar (reference §6 and the host's docstring); products in closing order.
GRAMMAR = [
    ("((a:1.2))", [("a", 1.0 * 1.2 * R)]),
    ("a) b] c", [("a) b] c", 1.0)]),  # unmatched closers are text
    ("[a", [("a", S)]),  # unclosed openers run to the end
    ("[unbalanced", [("unbalanced", 0.9090909090909091)]),
    ("(a: 1.2)", [("a", 1.2)]),  # the host's weight pattern allows spaces: ":\s*1.2\s*)"
    ("(a :1.5 )", [("a ", 1.5)]),
    ("BREAKING break", [("BREAKING break", 1.0)]),
    ("(a [b", [("a ", R), ("b", 1.0 * R * S)]),  # unclosed: all round first, then square
    ("\\\\ \\)", [("\\ )", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a lone backslash vanishes
    ("a:b", [("a:b", 1.0)]),
    ("a:1.2) b", [("a:1.2) b", 1.0)]),  # a weight without an open bracket is text
    ("(a:-1)", [("a", -1.0)]),
    ("(a:１.５)", [("a", 1.5)]),  # \d takes other digits, float() reads them
    ("(a [b] c)", [("a ", R), ("b", 1.0 * S * R), (" c", R)]),
    ("(a\\)b)", [("a)b", R)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a\nBREAK\n\nb", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("aBREAK b break c", [("aBREAK b break c", 1.0)]),
    ("(a)BREAK(b)", [("a", R), ("", 1.0), ("BREAK", -1.0), ("", 1.0), ("b", R)]),
    ("(x BREAK y)", [("x", R), ("BREAK", -1.0 * R), ("y", R)]),  # host quirk: the marker is scaled
    ("(BREAK:0)", [("BREAK", 0.0)]),  # 0.0 == -0.0 merges the marker with its empty neighbours
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    # where the host raises ValueError, we read ":..." as text and ")" as a plain closer
    ("(a:1.2.3)", [("a:1.2.3", R)]),
    ("(a:.)", [("a:.", R)]),
]


@pytest.mark.parametrize(("text", "expected"), GRAMMAR)
def test_grammar_cases(text, expected):
    assert parse_prompt_attention(text) == _lists(expected)


def test_parse_prompt_clean_text_and_spans():
    p = parse_prompt("  a ((house:1.3)) [on] \\(x\\) BREAK (sky) ")
    assert p.pieces[0].text == "a house on (x)"
    assert p.pieces[1].text == "sky"
    assert p.text == "a house on (x)" + PARAGRAPH + "sky"
    words = {p.text[s.start : s.end]: s.weight for s in p.spans}
    assert words == {"house": 1.0 * 1.3 * R, "on": S, "sky": R}
    assert p.has_break and p.has_weights


def test_parse_prompt_spans_of_doctest():
    p = parse_prompt("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert p.text == "a house on a hill, sun, sky."
    got = [(p.text[s.start : s.end], s.weight) for s in p.spans]
    host = [(t, w) for t, w in parse_prompt_attention(p.source) if w != 1.0]
    assert p.spans[0] == (2, 7, 1.5730000000000004)  # spans are tuples too
    assert got == host


def test_weights_only_keeps_bare_brackets():
    p = parse_prompt(
        "ganyu_(genshin_impact), [link](url), (smile:1.2), ((big:1.5) eyes:1.1)", syntax="weights_only"
    )
    assert p.text == "ganyu_(genshin_impact), [link](url), smile, big eyes"
    got = [(p.text[s.start : s.end], s.weight) for s in p.spans]
    assert got == [("smile", 1.2), ("big", 1.0 * 1.5 * 1.1), (" eyes", 1.1)]


def test_weights_only_nested_literal_pair_inside_weight():
    p = parse_prompt("(ganyu_(genshin_impact):1.3) \\(x\\) (y:1.2 a\\b", syntax="weights_only")
    assert p.text == "ganyu_(genshin_impact) (x) (y:1.2 a\\b"
    assert [(p.text[s.start : s.end], s.weight) for s in p.spans] == [("ganyu_(genshin_impact)", 1.3)]


def test_none_syntax_is_raw_stripped():
    p = parse_prompt("  (a:1.2) BREAK [b]\n", syntax="none")
    assert p.text == "(a:1.2) BREAK [b]" and p.spans == () and len(p.pieces) == 1


def test_break_inside_brackets_still_breaks_and_empty_pieces_dropped():
    p = parse_prompt("BREAK (a BREAK b) BREAK")
    assert [x.text for x in p.pieces] == ["a", "b"]
    assert parse_prompt("").pieces[0].text == "" and parse_prompt("  BREAK ").text == ""


def test_non_finite_and_non_positive_weights_replaced_with_warning():
    p = parse_prompt("(a:" + "9" * 400 + ")")
    assert p.spans == () and p.warnings
    p = parse_prompt("(a:0) (b:-1) c")
    assert [(p.text[s:e], w) for s, e, w in p.spans] == [("a", MIN_WEIGHT), ("b", MIN_WEIGHT)] and len(
        p.warnings
    ) == 2
    assert parse_prompt_attention("(a:0) (b:-1)") == [["a", 0.0], [" ", 1.0], ["b", -1.0]]  # the host's


def test_weights_only_pairs():
    assert parse_weights_only("a (b:1.5) (c) BREAK d") == [
        ["a ", 1.0],
        ["b", 1.5],
        [" (c)", 1.0],
        ["BREAK", -1.0],
        ["d", 1.0],
    ]


SPECIALS = st.sampled_from([*list("()[]\\:.,-+ 0123456789\n"), "BREAK", " BREAK ", ":1.2)", "é", "長"])
ARBITRARY = st.lists(st.one_of(SPECIALS, st.text(max_size=4)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(ARBITRARY, st.sampled_from(["full", "weights_only", "none", "bogus"]))
def test_never_raises_and_spans_are_sane(text, syntax):
    p = parse_prompt(text, syntax=syntax)
    assert p.pieces
    for piece in (*p.pieces, p):
        last = 0
        for s in piece.spans:
            assert last <= s.start < s.end <= len(piece.text)
            assert s.weight != 1.0 and math.isfinite(s.weight)
            last = s.end
    parse_prompt_attention(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from([*list("()[]:.,123456789 "), "BREAK"]), st.text(max_size=3)), max_size=40
    )
)
def test_weights_positive_without_minus_or_zero(parts):
    text = "".join(parts).replace("-", "").replace("0", "")
    for syntax in ("full", "weights_only"):
        assert all(s.weight > 0 for s in parse_prompt(text, syntax=syntax).spans)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from([*list("()[]., 12"), "BREAK", "\n"]), st.text(max_size=3)), max_size=40
    )
)
def test_clean_text_keeps_the_inputs_characters(parts):
    """Without escapes and weights, the clean text is the input minus brackets and BREAK words."""
    text = "".join(parts).replace("\\", "").replace(":", "")
    p = parse_prompt(text)
    expected = re.sub(r"\bBREAK\b", " ", re.sub(r"[()\[\]]", " ", text))
    assert re.sub(r"[\s()\[\]]", "", p.text) == re.sub(r"\s", "", expected)


# Well-formed prompts built from a tree: the expected words and weights are known by construction.
WORD = st.text(alphabet="abcxyz_é長", min_size=1, max_size=5)


def _tree(depth: int):
    leaf = WORD.map(lambda w: ("word", w))
    if depth == 0:
        return leaf
    kids = st.lists(_tree(depth - 1), min_size=1, max_size=3)
    return st.one_of(
        leaf,
        st.tuples(st.just("round"), kids),
        st.tuples(st.just("square"), kids),
        st.tuples(st.just("weight"), kids, st.sampled_from([0.5, 0.8, 1.2, 1.35, 2.0])),
    )


def _render(node, factor: float, out: list, words: list) -> None:
    kind = node[0]
    if kind == "word":
        out.append(node[1])
        words.append((node[1], factor))
        return
    sub_factor = {"round": R, "square": S}.get(kind) or node[2]
    out.append("[" if kind == "square" else "(")
    for k, child in enumerate(node[1]):
        if k:
            out.append(" ")
        _render(child, factor * sub_factor, out, words)
    out.append(")" if kind == "round" else "]" if kind == "square" else f":{node[2]})")


@settings(max_examples=300, deadline=None)
@given(st.lists(_tree(3), min_size=1, max_size=4))
def test_words_and_weights_of_well_formed_prompts(nodes):
    out, words = [], []
    for k, node in enumerate(nodes):
        if k:
            out.append(", ")
        _render(node, 1.0, out, words)
    p = parse_prompt("".join(out))
    weight_at = [1.0] * len(p.text)
    for s in p.spans:
        weight_at[s.start : s.end] = [s.weight] * (s.end - s.start)
    pos = 0
    for word, weight in words:
        start = p.text.index(word, pos)
        pos = start + len(word)
        assert all(math.isclose(w, weight, rel_tol=1e-12) for w in weight_at[start:pos]), (word, weight)
    assert re.findall(r"[^\s,]+", p.text) == re.findall(r"[^\s,]+", " ".join(w for w, _ in words))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab (:)[]\\1.2 BREAK\n,#")) | st.characters(), max_size=80))
@pytest.mark.parametrize("syntax", ["full", "weights_only"])
def test_letters_kept_in_order_and_weights_positive(syntax, text):
    parsed = parse_prompt(text, syntax=syntax)
    for s, e, w in parsed.spans:
        assert 0 <= s < e <= len(parsed.text) and w > 0

    def letters(t: str) -> str:  # every letter, in order, BREAK keywords aside
        return "".join(re.findall(r"[^\W\d_]", re.sub(r"\bBREAK\b", " ", t)))

    assert letters(parsed.text) == letters(text)
