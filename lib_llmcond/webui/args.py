"""The script's positional args (UI component values, or ``alwayson_scripts["llmcond"]["args"]`` of the API):
one table, one validated model (pydantic 1 and 2, built from the table), one clear error for a bad payload.

Every host ships pydantic; where it is missing (bare test environments) the same table is checked directly.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, make_dataclass
from typing import Any, Literal

from lib_llmcond.errors import LlmcondError
from lib_llmcond.matmul_precision import PRECISIONS
from lib_llmcond.pipeline import DEFAULT_MAPPING, MAPPINGS, SYNTAXES

EMPHASIS_FOLLOW = "Follow WebUI"
EMPHASIS_CHOICES = (EMPHASIS_FOLLOW, "None", "Ignore", "Original", "No norm")
EMPTY_NEGATIVE_CHOICES = ("encode", "zeros")
BREAK_CHOICES = ("paragraphs", "blocks")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPE_CHOICES = ("auto", "bfloat16", "float32")
DEFAULT_PRESET = "Default"
MAX_NAME = 512
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d{1,2})?)$"


def device_choices(cuda_devices: int) -> list[str]:
    """What the device dropdown lists: ``cuda:0`` .. ``cuda:N-1`` as well when there are several GPUs."""
    return [*DEVICE_CHOICES, *(f"cuda:{i}" for i in range(cuda_devices if cuda_devices > 1 else 0))]


@dataclass(frozen=True)
class Field:
    name: str
    default: Any
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    help: str = ""


# Positional order of the args: this is the API contract (README documents it). Append only.
FIELDS: tuple[Field, ...] = (
    Field("enabled", False, help="use the LLM instead of CLIP for this generation"),
    Field("llm", "", help="LLM name as listed by GET /llmcond/v1/models"),
    Field("adapter", "", help="adapter name as listed by GET /llmcond/v1/models"),
    Field("emphasis", EMPHASIS_FOLLOW, EMPHASIS_CHOICES, help="emphasis mode, or follow the WebUI setting"),
    Field("empty_negative", "encode", EMPTY_NEGATIVE_CHOICES, help='empty negative: encode "" or zeros'),
    Field("break_mode", "paragraphs", BREAK_CHOICES, help="what BREAK does"),
    Field("chunk", False, help="long-prompt chunk mode"),
    Field("system_prompt", DEFAULT_PRESET, help="system prompt preset name"),
    Field("device", "auto", pattern=DEVICE_PATTERN, help="auto, cpu, cuda or cuda:N"),
    Field("dtype", "auto", DTYPE_CHOICES, help="LLM dtype (never fp16)"),
    Field("emphasis_syntax", SYNTAXES[0], SYNTAXES, help="full grammar, or weights_only: only (text:1.2)"),
    Field(
        "emphasis_mapping", DEFAULT_MAPPING, MAPPINGS, help="how token weights reach the adapter's outputs"
    ),
    Field(
        "adapter_precision",
        PRECISIONS[0],
        PRECISIONS,
        help="fp32 matmuls on CUDA: auto (tf32 where the card has it), fp32 (exact) or tf32 (fast)",
    ),
)
NAMES = tuple(f.name for f in FIELDS)
DEFAULTS = {f.name: f.default for f in FIELDS}
Args = make_dataclass("Args", [(f.name, type(f.default), f.default) for f in FIELDS], frozen=True)


def with_status(err: Exception, status: int) -> Exception:
    """Give ``err`` what the hosts' API error handler reads: A1111 1.10 / Forge ``api_middleware`` answers an
    exception escaping ``process_images`` with ``vars(e).get("status_code", 500)`` and ``vars(e)["detail"]``."""
    err.status_code = status  # type: ignore[attr-defined]
    err.detail = str(err)  # type: ignore[attr-defined]
    return err


class ScriptArgsError(LlmcondError):
    """A bad args payload: the hosts' API answers 422 (see :func:`with_status`)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            what,
            fix=f"send alwayson_scripts {{'llmcond': {{'args': [...]}}}} with up to {len(FIELDS)} values in this "
            f"order: {', '.join(NAMES)}",
        )
        with_status(self, 422)


# -- pydantic (1 and 2) ------------------------------------------------------------------------------
def _pydantic() -> Any | None:
    try:
        import pydantic
    except ImportError:
        return None
    return pydantic


def _v2(pydantic: Any) -> bool:
    return int(str(pydantic.VERSION).split(".")[0]) >= 2


def _annotation(pydantic: Any, f: Field) -> tuple[Any, Any]:
    if isinstance(f.default, bool):
        return pydantic.StrictBool, f.default
    if f.choices:
        return Literal[f.choices], f.default  # type: ignore[valid-type]
    pattern_kw = (
        {} if f.pattern is None else ({"pattern": f.pattern} if _v2(pydantic) else {"regex": f.pattern})
    )
    return pydantic.StrictStr, pydantic.Field(f.default, max_length=MAX_NAME, **pattern_kw)


_MODELS: dict[int, Any] = {}


def model() -> Any:
    """The pydantic model of the args (``extra`` fields forbidden)."""
    pydantic = _pydantic()
    if pydantic is None:
        raise ImportError("pydantic is not installed")
    if id(pydantic) not in _MODELS:
        fields = {f.name: _annotation(pydantic, f) for f in FIELDS}
        if _v2(pydantic):
            cls = pydantic.create_model("ScriptArgs", **fields)
            cls.model_config["extra"] = "forbid"
            cls.model_rebuild(force=True)
        else:
            config = type("Config", (), {"extra": pydantic.Extra.forbid})
            cls = pydantic.create_model("ScriptArgs", __config__=config, **fields)
        _MODELS[id(pydantic)] = cls
    return _MODELS[id(pydantic)]


def _with_pydantic(pydantic: Any, data: dict) -> dict:
    cls = model()
    try:
        obj = cls.model_validate(data) if _v2(pydantic) else cls.parse_obj(data)
    except pydantic.ValidationError as e:
        raise ScriptArgsError(
            _describe([(err.get("loc", ()), err.get("msg", "invalid")) for err in e.errors()])
        ) from None
    return obj.model_dump() if _v2(pydantic) else obj.dict()


# -- the same table, checked directly --------------------------------------------------------------------
def _check(f: Field, value: Any) -> tuple[Any, str | None]:
    if isinstance(f.default, bool):
        return (value, None) if isinstance(value, bool) else (None, "value is not a valid boolean")
    if not isinstance(value, str):
        return None, "str type expected"
    if f.choices and value not in f.choices:
        return None, f"must be one of {', '.join(repr(c) for c in f.choices)}"
    if len(value) > MAX_NAME:
        return None, f"at most {MAX_NAME} characters"
    if f.pattern and not re.match(f.pattern, value):
        return None, f"does not match {f.pattern}"
    return value, None


def _without_pydantic(data: dict) -> dict:
    extra = [k for k in data if k not in NAMES]
    problems = [((k,), "extra fields not permitted") for k in extra]
    out = dict(DEFAULTS)
    for f in FIELDS:
        if f.name in data:
            out[f.name], msg = _check(f, data[f.name])
            if msg:
                problems.append(((f.name,), msg))
    if problems:
        raise ScriptArgsError(_describe(problems))
    return out


def _describe(problems: list[tuple[Sequence, str]]) -> str:
    parts = []
    for loc, msg in problems:
        name = ".".join(str(x) for x in loc) or "args"
        pos = f" (arg {NAMES.index(name)})" if name in NAMES else ""
        parts.append(f"{name}{pos}: {msg}")
    return "bad llmcond args: " + "; ".join(parts)


def parse(values: Sequence[Any] | dict | None, *, use_pydantic: bool = True) -> Any:
    """Validate positional values (missing trailing ones keep their defaults) or a dict of named values."""
    if values is None:
        values = ()
    if isinstance(values, dict):
        data = dict(values)
    elif isinstance(values, (list, tuple)):
        if len(values) > len(FIELDS):
            raise ScriptArgsError(
                f"bad llmcond args: got {len(values)} values, at most {len(FIELDS)} are accepted"
            )
        data = dict(zip(NAMES, values))
    else:
        raise ScriptArgsError(f"bad llmcond args: expected a list of values, got {type(values).__name__}")
    pydantic = _pydantic() if use_pydantic else None
    clean = _with_pydantic(pydantic, data) if pydantic is not None else _without_pydantic(data)
    return Args(**clean)


def as_values(args: Any) -> list[Any]:
    return [getattr(args, n) for n in NAMES]
