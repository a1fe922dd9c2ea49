"""Markdown prompt templates (``templates/*.md`` and a user folder) and encoder templates (system prompts).

A template file starts with a front matter block holding ``name:`` and ``description:``; the rest is the
Markdown skeleton inserted into the prompt. A broken file is reported by name and does not hide the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lib_llmcond.errors import LlmcondError
from lib_llmcond.text.paths import GEMMA_SYSTEM_PROMPT

BUILTIN_FOLDER = Path(__file__).resolve().parents[2] / "templates"
DEFAULT_SYSTEM = "Default (reference)"

# name -> system prompt of the Gemma-3 chat template; the default reproduces the reference exactly
SYSTEM_PRESETS: dict[str, str] = {
    DEFAULT_SYSTEM: GEMMA_SYSTEM_PROMPT,
    "Detailed scene": (
        "You are expert in understanding of user prompts for image generations. Create an image according to "
        "the prompt from user, keeping every described character, object and detail."
    ),
    "Booru tags": (
        "You are expert in understanding of booru tags and user prompts for anime image generations. "
        "Create an image according to the prompt from user."
    ),
}


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    text: str
    path: Path


class TemplateError(LlmcondError):
    """A template file that cannot be read."""


def parse_template(path: Path) -> Template:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"cannot read the template ({e})", path=path, fix="save it as UTF-8 text") from e
    lines = raw.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in [ln.strip() for ln in lines[1:]]:
        raise TemplateError(
            "the template has no front matter",
            path=path,
            fix="start it with ---, name: ..., description: ..., ---",
        )
    end = 1 + [ln.strip() for ln in lines[1:]].index("---")
    meta = {}
    for line in lines[1:end]:
        key, sep, value = line.partition(":")
        if sep:
            meta[key.strip().lower()] = value.strip()
    if not meta.get("name"):
        raise TemplateError("the front matter has no name", path=path, fix="add a line 'name: ...'")
    body = "\n".join(lines[end + 1 :]).strip("\n")
    return Template(meta["name"], meta.get("description", ""), body, path)


def load_templates(folders: Sequence[str | Path] = ()) -> tuple[list[Template], list[TemplateError]]:
    """Templates of the built-in folder and ``folders`` (later names win), plus the errors of broken files."""
    found: dict[str, Template] = {}
    errors: list[TemplateError] = []
    for folder in [BUILTIN_FOLDER, *map(Path, folders)]:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.md")):
            try:
                t = parse_template(path)
            except TemplateError as e:
                errors.append(e)
                continue
            found[t.name] = t
    return list(found.values()), errors


def list_templates(folders: Sequence[str | Path] = ()) -> list[Template]:
    return load_templates(folders)[0]


def get_template(name: str, folders: Sequence[str | Path] = ()) -> Template:
    for t in list_templates(folders):
        if t.name == name:
            return t
    raise TemplateError(f"no template named {name!r}", fix="choose one from the list or refresh it")


def insert_template(prompt: str, template: Template | str) -> str:
    """The prompt with the template's text appended as a new paragraph (or the template alone)."""
    body = template.text if isinstance(template, Template) else template
    if not prompt.strip():
        return body
    return prompt.rstrip() + "\n\n" + body


def system_presets() -> dict[str, str | None]:
    """Encoder templates for the UI; the default maps to None (the reference's own system prompt)."""
    return {name: (None if name == DEFAULT_SYSTEM else text) for name, text in SYSTEM_PRESETS.items()}
