"""Token weights, emphasis modes, chunk splitting, cut reports and templates (pure functions)."""

import pytest
import torch

from lib_llmcond.prompt.chunks import BOUNDARIES, cut_report, split_for_budget
from lib_llmcond.prompt.templates import (
    BUILTIN_FOLDER,
    TemplateError,
    get_template,
    insert_template,
    list_templates,
    load_templates,
    system_presets,
)
from lib_llmcond.prompt.weights import apply_emphasis, output_multipliers, token_weights


def test_token_weights_take_the_span_covering_most():
    offsets = [None, (0, 3), (3, 8), (8, 9), (9, 14)]
    spans = [(2, 9, 1.5), (9, 14, 0.8)]
    assert token_weights(offsets, spans) == [1.0, 1.0, 1.5, 1.5, 0.8]


def test_multipliers_are_exactly_one_without_weights_and_grow_with_weight():
    attn = torch.softmax(torch.randn(1, 6, 5), dim=-1)
    ones = torch.ones(1, 5)
    assert torch.equal(output_multipliers(attn, ones, "attention"), torch.ones(1, 6))
    prev = None
    for w in (1.0, 1.2, 1.5, 2.0):
        m = output_multipliers(attn, torch.tensor([[1, w, 1, 1, 1]]), "attention")
        if prev is not None:
            assert torch.all(m >= prev) and torch.any(m > prev)
        prev = m


@pytest.mark.parametrize("mode", ["Ignore", "None", "Original", "No norm"])
def test_unit_multipliers_are_bit_identical(mode):
    z = torch.randn(1, 308, 16) + 0.3
    assert torch.equal(apply_emphasis(z, torch.ones(1, 308), mode), z)


def test_original_restores_the_mean_and_no_norm_scales():
    z = torch.randn(1, 10, 8) + 1.0
    m = torch.linspace(0.8, 1.4, 10)[None]
    assert torch.allclose(apply_emphasis(z, m, "No norm"), z * m[..., None])
    out = apply_emphasis(z, m, "Original")
    assert torch.allclose(out.mean(), z.mean(), atol=1e-6)


def words_counter(text: str) -> int:
    return len(text.split())


def test_long_prompt_splits_into_three_pieces_on_boundaries():
    sentence = "the red fox jumps over a lazy dog near the river, and birds sing in tall trees. "
    text = (
        "## Character 1\n"
        + sentence * 28
        + "\n## Character 2\n"
        + sentence * 28
        + "\n## Scene\n"
        + sentence * 29
    )
    assert 1400 <= words_counter(text) <= 1600
    pieces = split_for_budget(text, [], words_counter, 512)
    assert len(pieces) == 3
    for p in pieces:
        assert words_counter(p.text) <= 512
        assert text[p.start : p.start + len(p.text)] == p.text
    for p in pieces[1:]:
        before = text[: p.start].rstrip(" ")
        assert before.endswith((".", ",", "\n")), before[-20:]


def test_pieces_never_cut_inside_an_emphasis_span():
    text = ", ".join(f"word{i}" for i in range(40))
    span_start = text.index("word18")
    span_end = text.index("word24") + len("word24")
    pieces = split_for_budget(text, [(span_start, span_end, 1.3)], words_counter, 20)
    for p in pieces:
        assert not (p.start < span_start < p.start + len(p.text) < span_end)
    weighted = [p for p in pieces if p.spans]
    assert weighted and all(0 <= s < e <= len(p.text) for p in weighted for s, e, _ in p.spans)


def test_boundary_table_order():
    assert [k for k, _ in BOUNDARIES] == ["heading", "paragraph", "line", "sentence", "comma", "space"]


def test_cut_report_names_the_word_with_non_ascii():
    text = "un chat noir près de l'église sur le toit"
    offsets = [
        (0, 2),
        (3, 7),
        (8, 12),
        (13, 17),
        (18, 20),
        (21, 23),
        (23, 29),
        (30, 33),
        (34, 36),
        (37, 41),
        None,
    ]
    assert text[23:29] == "église"
    cut = cut_report(text, offsets, 6)
    assert cut.word == "église" and cut.token_index == 6
    assert "église" in cut.snippet
    assert cut_report(text, offsets, 10).word == ""


def test_shipped_templates_parse_and_insert():
    templates = list_templates()
    assert len(templates) >= 6
    for t in templates:
        assert t.name and t.description and t.text.startswith("##")
        assert t.path.parent == BUILTIN_FOLDER
    t = get_template(templates[0].name)
    assert insert_template("", t) == t.text
    assert insert_template("a cat ", t) == "a cat\n\n" + t.text


def test_broken_template_is_reported_and_others_stay(tmp_path):
    (tmp_path / "bad.md").write_text("no front matter")
    (tmp_path / "mine.md").write_text("---\nname: Mine\ndescription: d\n---\n## X\n")
    templates, errors = load_templates([tmp_path])
    assert "Mine" in [t.name for t in templates] and len(templates) >= 7
    assert len(errors) == 1 and "bad.md" in str(errors[0])
    with pytest.raises(TemplateError, match="no template named"):
        get_template("nope")


def test_system_presets_default_is_the_reference():
    presets = system_presets()
    assert presets["Default (reference)"] is None and len(presets) >= 2
