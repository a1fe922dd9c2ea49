"""Prompt templates (Markdown skeletons in ``lib_llmcond/templates/*.md``) and encoder templates (system-prompt
presets).

A prompt template file starts with a front matter block naming it::

    ---
    name: Single character
    description: One character with appearance, outfit and pose, then the scene.
    ---
    ## Character 1
    ...

Templates come from the package's ``templates/`` folder (package data: an installed wheel has them too) and any
user folders; a later folder's template replaces an earlier one of the same name. A broken file is reported (an error naming it) and skipped; the
others still load.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PromptError
from ..text.paths import GEMMA_SYSTEM_PROMPT

BUILTIN_FOLDER = Path(__file__).resolve().parents[1] / "templates"  # lib_llmcond/templates (package data)
BUILTIN_DIR = BUILTIN_FOLDER
_FRONT = "---"
_REQUIRED = ("name", "description")
MAX_TEMPLATE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    text: str  # the Markdown skeleton inserted into the prompt
    path: Path | None = None

    @property
    def body(self) -> str:
        return self.text


PromptTemplate = Template


class TemplateError(PromptError):
    """A template file that cannot be used, or a template name that does not exist."""


def _front_matter(lines: list[str], path: Path) -> tuple[dict[str, str], int]:
    if not lines or lines[0].strip() != _FRONT:
        raise TemplateError(
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
            raise TemplateError(
                f"line {i + 1} of the front matter is not 'key: value'",
                path=path,
                fix="Write it as 'key: value'.",
            )
        meta[key.strip().lower()] = value.strip()
    raise TemplateError("the front matter is not closed", path=path, fix="End it with a '---' line.")


def parse_template_text(text: str, path: Path | None = None) -> Template:
    """A template from the text of a ``.md`` file; ``TemplateError`` naming the file when it is malformed."""
    lines = text.lstrip("\ufeff").splitlines()
    meta, body_start = _front_matter(lines, path or Path("<template>"))
    missing = [k for k in _REQUIRED if not meta.get(k)]
    if missing:
        raise TemplateError(
            f"the front matter lacks {' and '.join(missing)}",
            path=path,
            fix="Add 'name: ...' and 'description: ...'.",
        )
    body = "\n".join(lines[body_start:]).strip()
    if not body:
        raise TemplateError(
            "the template has no text after its front matter", path=path, fix="Add the skeleton."
        )
    return Template(meta["name"], meta["description"], body, path)


def parse_template(path: str | Path) -> Template:
    """The template in the file ``path``; ``TemplateError`` naming the file when it cannot be used."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise TemplateError(
                "the template file is too large", path=path, fix="Keep templates under 64 KiB."
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError("the template is not UTF-8 text", path=path, fix="Save it as UTF-8.") from exc
    except OSError as exc:
        raise TemplateError(f"cannot read the template ({exc.strerror})", path=path) from exc
    return parse_template_text(text, path)


def _folders(folders: Iterable[str | Path] | None) -> list[Path]:
    out = [BUILTIN_DIR]
    for folder in folders or ():
        if folder and Path(folder) not in out:
            out.append(Path(folder))
    return out


def load_templates(folders: Iterable[str | Path] | None = ()) -> tuple[list[Template], list[TemplateError]]:
    """Templates of the built-in folder then of ``folders`` (missing folders are ignored), and the errors of
    the files that could not be used. A later folder's template replaces an earlier one of the same name."""
    found: dict[str, Template] = {}
    errors: list[TemplateError] = []
    for folder in _folders(folders):
        if not folder.is_dir():
            continue
        seen: dict[str, Path] = {}
        for path in sorted(folder.glob("*.md")):
            try:
                tpl = parse_template(path)
            except TemplateError as err:
                errors.append(err)
                continue
            if tpl.name in seen:
                errors.append(
                    TemplateError(
                        f"the name {tpl.name!r} is already used by {seen[tpl.name].name}",
                        path=path,
                        fix="Give the template a name of its own.",
                    )
                )
                continue
            seen[tpl.name] = path
            found.pop(tpl.name, None)  # a user's template replaces a built-in one, listed last
            found[tpl.name] = tpl
    return list(found.values()), errors


def list_templates(folders: Iterable[str | Path] | None = ()) -> list[Template]:
    return load_templates(folders)[0]


def get_template(name: str, folders: Iterable[str | Path] | None = ()) -> Template:
    templates = list_templates(folders)
    for tpl in templates:
        if tpl.name == name:
            return tpl
    names = ", ".join(t.name for t in templates)
    raise TemplateError(f"no template named {name!r}", fix=f"Use one of: {names}.")


def insert_template(prompt: str, template: Template | str) -> str:
    """The prompt with the template's skeleton appended as new paragraphs (the skeleton alone if empty)."""
    body = template.text if isinstance(template, Template) else str(template).strip()
    prompt = (prompt or "").rstrip()
    return f"{prompt}\n\n{body}" if prompt else body


# --- encoder templates: system-prompt presets --------------------------------------------------------------

DEFAULT_SYSTEM_PROMPT = GEMMA_SYSTEM_PROMPT  # the reference's, exactly


@dataclass(frozen=True)
class EncoderTemplate:
    name: str
    system_prompt: str
    description: str


DEFAULT_SYSTEM = "Default (reference)"
DEFAULT_ENCODER_TEMPLATE = DEFAULT_SYSTEM
_NOT_TRAINED = " The adapters were trained with the default: expect output to drift from the reference."
ENCODER_TEMPLATES: tuple[EncoderTemplate, ...] = (
    EncoderTemplate(
        DEFAULT_SYSTEM, DEFAULT_SYSTEM_PROMPT, "The reference's system prompt (its exact output)."
    ),
    EncoderTemplate(
        "Detailed scene",
        "You are expert in understanding of user prompts for image generations. Create an image according to "
        "the prompt from user, keeping every described character, object and detail.",
        "Asks to keep every part of long, structured prompts." + _NOT_TRAINED,
    ),
    EncoderTemplate(
        "Booru tags",
        "You are expert in understanding of booru tags and user prompts for anime image generations. "
        "Create an image according to the prompt from user.",
        "Mentions booru tags." + _NOT_TRAINED,
    ),
)
SYSTEM_PRESETS: dict[str, str] = {t.name: t.system_prompt for t in ENCODER_TEMPLATES}
_ENCODER_BY_NAME = {t.name: t for t in ENCODER_TEMPLATES}


def encoder_template_names() -> list[str]:
    return [t.name for t in ENCODER_TEMPLATES]


def get_encoder_template(name: str | None) -> EncoderTemplate:
    """The preset called ``name``; the default for ``None`` or an empty name."""
    if not name:
        return _ENCODER_BY_NAME[DEFAULT_SYSTEM]
    if name in _ENCODER_BY_NAME:
        return _ENCODER_BY_NAME[name]
    raise TemplateError(
        f"no encoder template named {name!r}", fix=f"Use one of: {', '.join(encoder_template_names())}."
    )


def system_prompt(name: str | None = None) -> str:
    """The system prompt of the preset ``name`` (the reference's for None)."""
    return get_encoder_template(name).system_prompt


def system_presets() -> dict[str, str | None]:
    """Encoder templates for the UI; the default maps to None (the text path's own reference prompt)."""
    return {t.name: (None if t.name == DEFAULT_SYSTEM else t.system_prompt) for t in ENCODER_TEMPLATES}
