"""Prompt templates (shipped and user files) and encoder templates (system-prompt presets)."""

from __future__ import annotations

import re

import pytest

from lib_llmcond.errors import PromptError
from lib_llmcond.prompt.emphasis import parse_prompt
from lib_llmcond.prompt.templates import (
    BUILTIN_DIR,
    DEFAULT_ENCODER_TEMPLATE,
    ENCODER_TEMPLATES,
    SYSTEM_PRESETS,
    TemplateError,
    get_encoder_template,
    get_template,
    insert_template,
    list_templates,
    load_templates,
    system_presets,
    system_prompt,
)

REFERENCE_SYSTEM = (
    "You are expert in understanding of user prompts for image generations. Create an image according to the "
    "prompt from user."
)


def _rough_tokens(text: str) -> int:
    """An overestimate of Gemma's count for English: every word and every punctuation mark one token."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def test_shipped_templates_all_load():
    templates, errors = load_templates()
    assert errors == []
    assert len(templates) >= 6
    assert len(list(BUILTIN_DIR.glob("*.md"))) == len(templates)
    for tpl in templates:
        assert tpl.name and tpl.description and tpl.text == tpl.body and tpl.text.startswith("## ")


@pytest.mark.parametrize("name", [t.name for t in list_templates()])
@pytest.mark.parametrize("syntax", ["full", "weights_only"])
def test_each_template_renders_and_leaves_room(name, syntax):
    tpl = get_template(name)
    assert "## " in tpl.body
    rendered = insert_template("", tpl)
    assert rendered == tpl.body
    parsed = parse_prompt(rendered, syntax=syntax)
    assert parsed.text == rendered and not parsed.spans and not parsed.has_break  # no accidental syntax
    assert _rough_tokens(rendered) <= 200  # of 512: room for the user's own text


def test_insert_appends_a_paragraph():
    tpl = get_template("Single character")
    assert insert_template("my prompt  \n", tpl) == "my prompt\n\n" + tpl.body
    assert insert_template("x", "  ## Y\nz ") == "x\n\n## Y\nz"


def _write(folder, name, text, encoding="utf-8"):
    (folder / name).write_bytes(text.encode(encoding))


def test_user_folder_overrides_adds_and_reports_broken_files(tmp_path):
    _write(tmp_path, "a_mine.md", "---\nname: Mine\ndescription: my own\n---\n## Character 1\nme\n")
    _write(tmp_path, "b_override.md", "---\nname: Style and medium\ndescription: mine\n---\n## Style\nink\n")
    broken = {
        "c_nofront.md": "no front matter",
        "d_nodesc.md": "lacks description",
        "e_unclosed.md": "not closed",
        "f_latin1.md": "not UTF-8",
        "g_empty.md": "no text after",
        "h_badline.md": "not 'key: value'",
        "i_dup.md": "already used by a_mine.md",
    }
    _write(tmp_path, "c_nofront.md", "## Character 1\n")
    _write(tmp_path, "d_nodesc.md", "---\nname: X\n---\nbody\n")
    _write(tmp_path, "e_unclosed.md", "---\nname: Y\ndescription: y\n")
    _write(tmp_path, "f_latin1.md", "---\nname: Café\ndescription: é\n---\nbody\n", encoding="latin-1")
    _write(tmp_path, "g_empty.md", "---\nname: Z\ndescription: z\n---\n\n")
    _write(tmp_path, "h_badline.md", "---\nname: W\njust words\n---\nbody\n")
    _write(tmp_path, "i_dup.md", "---\nname: Mine\ndescription: again\n---\nbody\n")
    templates, errors = load_templates([tmp_path, tmp_path / "missing"])
    by_name = {t.name: t for t in templates}
    messages = {err.path: str(err) for err in errors}
    assert len(errors) == len(broken) and all(isinstance(e, TemplateError) for e in errors)
    for file, fragment in broken.items():
        path = str(tmp_path / file)
        assert path in messages and fragment in messages[path], (file, messages.get(path))
        assert messages[path].startswith(path)
    assert by_name["Mine"].text == "## Character 1\nme"
    assert by_name["Style and medium"].text == "## Style\nink"  # the user's replaces the shipped one
    assert len(templates) == len(list_templates()) + 1
    assert get_template("Mine", [tmp_path]).description == "my own"


def test_unknown_template_names_the_choices():
    with pytest.raises(PromptError, match="no template named 'nope'.*Single character"):
        get_template("nope")


def test_encoder_templates():
    assert get_encoder_template(None).name == DEFAULT_ENCODER_TEMPLATE
    assert system_prompt() == REFERENCE_SYSTEM
    assert system_prompt(DEFAULT_ENCODER_TEMPLATE) == REFERENCE_SYSTEM
    names = [t.name for t in ENCODER_TEMPLATES]
    assert len(names) == len(set(names)) >= 3
    for tpl in ENCODER_TEMPLATES:
        assert get_encoder_template(tpl.name) is tpl and tpl.description
    with pytest.raises(PromptError, match=re.escape(DEFAULT_ENCODER_TEMPLATE)):
        get_encoder_template("bogus")
    assert system_presets()[DEFAULT_ENCODER_TEMPLATE] is None  # the text path's own default
    assert {k: v for k, v in system_presets().items() if v is not None} == {
        k: v for k, v in SYSTEM_PRESETS.items() if k != DEFAULT_ENCODER_TEMPLATE
    }
