"""Script args + settings -> a ``RequestState`` (resolved model paths, options, cache signature)."""

from __future__ import annotations

from typing import Any

from lib_llmcond.errors import LlmcondError, ModelFileError
from lib_llmcond.webui import args as A
from lib_llmcond.webui.settings import Settings
from lib_llmcond.webui.state import RequestState

HOST_EMPHASIS = ("None", "Ignore", "Original", "No norm")


def options_class() -> type:
    """``EncodeOptions`` of the engine (a function so tests can stand in for it before the engine lands)."""
    from lib_llmcond.engine import EncodeOptions

    return EncodeOptions


def system_presets() -> dict[str, str | None]:
    """Preset name -> system prompt (None = the reference's default)."""
    presets: dict[str, str | None] = {A.DEFAULT_PRESET: None}
    try:
        from lib_llmcond.prompt import templates
    except ImportError:
        return presets
    getter = getattr(templates, "system_presets", None)
    if callable(getter):
        for name, text in dict(getter()).items():
            presets.setdefault(str(name), text)
    return presets


def effective_emphasis(choice: str, host_opts: Any) -> str:
    if choice != A.EMPHASIS_FOLLOW:
        return choice
    value = str(getattr(host_opts, "emphasis", "Original") or "Original")
    return value if value in HOST_EMPHASIS else "Original"


def build(args: Any, settings: Settings, engine: Any, host_opts: Any = None) -> RequestState | None:
    """The state for an enabled request, None when disabled. Problems are kept in ``state.error`` and raised at
    encode time: the hosts' script runner swallows exceptions from ``process``, the cond computation does not."""
    if not args.enabled:
        return None
    names = dict(llm_name=args.llm, adapter_name=args.adapter, system_preset=args.system_prompt)
    common = dict(emphasis_choice=args.emphasis, allow_fallback=settings.fallback, **names)
    try:
        opts = _options(args, settings, host_opts)
        signature = engine.signature(opts)
        hashes = _hashes(opts)
    except (LlmcondError, ValueError) as e:
        err = (
            e if isinstance(e, LlmcondError) else A.with_status(LlmcondError(f"bad llmcond option: {e}"), 422)
        )
        return error_state(err, **common)
    return RequestState(opts, signature, llm_hash=hashes[0], adapter_hash=hashes[1], **common)


def error_state(err: Exception, **names: Any) -> RequestState:
    """A state that stops the generation with ``err`` when its conds are computed."""
    names.setdefault("llm_name", "")
    names.setdefault("adapter_name", "")
    return RequestState(None, f"llmcond:error:{err}", llm_hash="", adapter_hash="", error=err, **names)


def _hashes(opts: Any) -> tuple[str, str]:
    from lib_llmcond.models import identity

    return identity(opts.llm).short_hash, identity(opts.adapter).short_hash


def _require(name: str, label: str) -> None:
    if not name:
        raise A.with_status(
            LlmcondError(
                f"llmcond is enabled but no {label} is chosen",
                fix=f"choose an {label} in the llmcond accordion (or send its name in the API args), or untick llmcond",
            ),
            422,
        )


def resolve(name: str, folders: Any, kind: str) -> Any:
    """The file behind a model name; an unknown or escaping name is the caller's error (API: 404, like the
    hosts' unknown sampler or upscaler names)."""
    from lib_llmcond.models import resolve_model

    try:
        return resolve_model(name, folders, kind)
    except ModelFileError as e:
        raise A.with_status(e, 404) from None


def _options(args: Any, settings: Settings, host_opts: Any) -> Any:
    _require(args.llm, "LLM")
    _require(args.adapter, "adapter")
    llm = resolve(args.llm, settings.llm_folders, "llm")
    adapter = resolve(args.adapter, settings.adapter_folders, "adapter")
    presets = system_presets()
    if args.system_prompt not in presets:
        raise A.with_status(
            LlmcondError(
                f"unknown system prompt preset {args.system_prompt!r}",
                fix=f"choose one of: {', '.join(presets)}",
            ),
            422,
        )
    return options_class()(
        llm=str(llm),
        adapter=str(adapter),
        emphasis=effective_emphasis(args.emphasis, host_opts),
        emphasis_syntax=args.emphasis_syntax,
        emphasis_mapping=args.emphasis_mapping,
        adapter_precision=args.adapter_precision,
        break_mode=args.break_mode,
        system_prompt=presets[args.system_prompt],
        empty_negative=args.empty_negative,
        chunk=bool(args.chunk),
        device=args.device,
        llm_dtype=args.dtype,
        memory=settings.memory,
        fixed_size=settings.fixed_size,
    )
