import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_llmcond.prompt.emphasis import parse_prompt, parse_prompt_attention

# The hosts' published doctest of parse_prompt_attention (A1111 modules/prompt_parser.py).
HOST_DOCTEST = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.5730000000000004],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641000000000006],
            [".", 1.1],
        ],
    ),
    ("[unbalanced", [["unbalanced", 0.9090909090909091]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
]


@pytest.mark.parametrize(("text", "expected"), HOST_DOCTEST)
def test_host_doctest(text, expected):
    assert parse_prompt_attention(text) == expected


def test_unmatched_closers_are_text_and_nesting_multiplies():
    assert parse_prompt_attention("a) b] c") == [["a) b] c", 1.0]]
    assert parse_prompt_attention("((a:1.2))") == [["a", pytest.approx(1.32)]]
    assert parse_prompt_attention("\\\\ x") == [["\\ x", 1.0]]


def test_break_must_be_an_uppercase_word():
    assert parse_prompt_attention("BREAKING break") == [["BREAKING break", 1.0]]
    parsed = parse_prompt("a, (b:1.4) BREAK c")
    assert parsed.text == "a, b\n\nc"
    assert [p.text for p in parsed.pieces] == ["a, b", "c"]
    assert parsed.spans == ((3, 4, 1.4),)


def test_weights_only_keeps_bare_brackets():
    parsed = parse_prompt("ganyu_(genshin_impact), [link](x), (smile:1.2)", syntax="weights_only")
    assert parsed.text == "ganyu_(genshin_impact), [link](x), smile"
    assert parsed.spans == ((35, 40, 1.2),)


def test_none_syntax_is_raw():
    parsed = parse_prompt("(a:1.5) BREAK b", syntax="none")
    assert parsed.text == "(a:1.5) BREAK b" and parsed.spans == ()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab (:)[]\\1.2 BREAK\n,#")) | st.characters(), max_size=80))
@pytest.mark.parametrize("syntax", ["full", "weights_only"])
def test_never_raises_weights_positive_and_words_kept(syntax, text):
    parsed = parse_prompt(text, syntax=syntax)
    for s, e, w in parsed.spans:
        assert 0 <= s < e <= len(parsed.text) and w > 0
    unescaped = re.sub(
        r"\\(?![()\[\]\\])", "", text
    )  # the grammar consumes a lone backslash, as the hosts do

    def letters(t: str) -> str:  # every letter, in order, BREAK keywords aside
        return "".join(re.findall(r"[^\W\d_]", re.sub(r"\bBREAK\b", " ", t)))

    assert letters(parsed.text) == letters(unescaped)
    for s, e, _ in parsed.spans:  # every weighted span is text of the input
        assert letters(parsed.text[s:e]) in letters(unescaped)
