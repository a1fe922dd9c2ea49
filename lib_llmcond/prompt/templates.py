"""Prompt templates (Markdown skeletons in ``templates/*.md``) and encoder templates (system-prompt presets).

A prompt template file starts with a front matter block naming it::

    ---
    name: Single character
    description: One character with appearance, outfit and pose, then the scene.
    ---
    ## Character 1
    ...

Templates come from the extension's ``templates/`` folder and any user folders; a later folder's template
replaces an earlier one of the same name. A broken file is reported (an error naming it) and skipped; the
others still load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PromptError

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "templates"
_FRONT = "---"
_REQUIRED = ("name", "description")
MAX_TEMPLATE_BYTES = 64 * 1024


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    description: str
    body: str
    path: Path | None = None


@dataclass
class TemplateCatalog:
    """Templates by name, in load order, and the errors of the files that could not be read."""

    templates: dict[str, PromptTemplate] = field(default_factory=dict)
    errors: list[PromptError] = field(default_factory=list)

    def names(self) -> list[str]:
        return list(self.templates)


def _front_matter(lines: list[str], path: Path) -> tuple[dict[str, str], int]:
    if not lines or lines[0].strip() != _FRONT:
        raise PromptError(
            "the template has no front matter",
            path=path,
            fix="Start the file with '---', 'name: ...', 'description: ...' and '---' lines.",
        )
    meta: dict[str, str] = {}
    for i, line in enumerate(lines[1:], 1):
        if line.strip() == _FRONT:
            return meta, i + 1
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise PromptError(
                f"line {i + 1} of the front matter is not 'key: value'",
                path=path,
                fix="Write it as 'key: value'.",
            )
        meta[key.strip().lower()] = value.strip()
    raise PromptError("the front matter is not closed", path=path, fix="End it with a '---' line.")


def parse_template(text: str, path: Path | None = None) -> PromptTemplate:
    """A template from the text of a ``.md`` file; ``PromptError`` naming the file when it is malformed."""
    lines = text.lstrip("\ufeff").splitlines()
    meta, body_start = _front_matter(lines, path or Path("<template>"))
    missing = [k for k in _REQUIRED if not meta.get(k)]
    if missing:
        raise PromptError(
            f"the front matter lacks {' and '.join(missing)}",
            path=path,
            fix="Add 'name: ...' and 'description: ...'.",
        )
    body = "\n".join(lines[body_start:]).strip()
    if not body:
        raise PromptError(
            "the template has no text after its front matter", path=path, fix="Add the skeleton."
        )
    return PromptTemplate(meta["name"], meta["description"], body, path)


def load_template_file(path: Path) -> PromptTemplate:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise PromptError("the template file is too large", path=path, fix="Keep templates under 64 KiB.")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PromptError("the template is not UTF-8 text", path=path, fix="Save it as UTF-8.") from exc
    except OSError as exc:
        raise PromptError(f"cannot read the template ({exc.strerror})", path=path) from exc
    return parse_template(text, path)


def _folders(folders: Iterable[str | Path] | None) -> list[Path]:
    out = [BUILTIN_DIR]
    for folder in folders or ():
        if folder and Path(folder) not in out:
            out.append(Path(folder))
    return out


def list_templates(folders: Iterable[str | Path] | None = None) -> TemplateCatalog:
    """Templates of the built-in folder then of ``folders`` (missing folders are ignored)."""
    catalog = TemplateCatalog()
    for folder in _folders(folders):
        if not folder.is_dir():
            continue
        seen: dict[str, Path] = {}
        for path in sorted(folder.glob("*.md")):
            try:
                tpl = load_template_file(path)
            except PromptError as err:
                catalog.errors.append(err)
                continue
            if tpl.name in seen:
                catalog.errors.append(
                    PromptError(
                        f"the name {tpl.name!r} is already used by {seen[tpl.name].name}",
                        path=path,
                        fix="Give the template a name of its own.",
                    )
                )
                continue
            seen[tpl.name] = path
            catalog.templates.pop(tpl.name, None)  # a user's template replaces a built-in one, shown last
            catalog.templates[tpl.name] = tpl
    return catalog


def get_template(name: str, folders: Iterable[str | Path] | None = None) -> PromptTemplate:
    catalog = list_templates(folders)
    if name in catalog.templates:
        return catalog.templates[name]
    raise PromptError(f"no prompt template named {name!r}", fix=f"Use one of: {', '.join(catalog.names())}.")


def insert_template(prompt: str, template: PromptTemplate | str) -> str:
    """The prompt with the template's skeleton appended as new paragraphs (the skeleton alone if empty)."""
    body = template.body if isinstance(template, PromptTemplate) else str(template).strip()
    prompt = (prompt or "").rstrip()
    return f"{prompt}\n\n{body}" if prompt else body


# --- encoder templates: system-prompt presets --------------------------------------------------------------

DEFAULT_SYSTEM_PROMPT = (
    "You are expert in understanding of user prompts for image generations. "
    "Create an image according to the prompt from user."
)


@dataclass(frozen=True)
class EncoderTemplate:
    name: str
    system_prompt: str
    description: str


DEFAULT_ENCODER_TEMPLATE = "RouWei default"
ENCODER_TEMPLATES: tuple[EncoderTemplate, ...] = (
    EncoderTemplate(
        DEFAULT_ENCODER_TEMPLATE,
        DEFAULT_SYSTEM_PROMPT,
        "The system prompt the adapters were trained with (reference output).",
    ),
    EncoderTemplate(
        "Detailed scene",
        "You are expert in understanding of user prompts for image generations. Read the whole prompt, "
        "including every character, the scene and the style, and create an image according to it.",
        "Asks for attention to every part of long, structured prompts. Not what the adapter was trained on.",
    ),
    EncoderTemplate(
        "Tags and text",
        "You are expert in understanding of user prompts for image generations. The prompt mixes booru tags "
        "and natural language. Create an image according to the prompt from user.",
        "Mentions booru tags mixed with sentences. Not what the adapter was trained on.",
    ),
    EncoderTemplate(
        "No system prompt",
        "",
        "The user's prompt alone in the user turn. Not what the adapter was trained on.",
    ),
)
_ENCODER_BY_NAME = {t.name: t for t in ENCODER_TEMPLATES}


def encoder_template_names() -> list[str]:
    return [t.name for t in ENCODER_TEMPLATES]


def get_encoder_template(name: str | None) -> EncoderTemplate:
    """The preset called ``name``; the default for ``None`` or an empty name."""
    if not name:
        return _ENCODER_BY_NAME[DEFAULT_ENCODER_TEMPLATE]
    if name in _ENCODER_BY_NAME:
        return _ENCODER_BY_NAME[name]
    raise PromptError(
        f"no encoder template named {name!r}", fix=f"Use one of: {', '.join(encoder_template_names())}."
    )


def system_prompt(name: str | None = None) -> str:
    return get_encoder_template(name).system_prompt
