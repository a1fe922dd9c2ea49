"""The two patches: the loaded model's ``get_learned_conditioning`` and ``StableDiffusionProcessing.cached_params``.

Both are idempotent (a marked wrapper is never wrapped again) and removable. The model patch wraps the *bound*
method on the model instance, which works for A1111/Forge1/reForge sgm ``DiffusionEngine``, reForge dev
``BaseModel`` and Forge2 ``StableDiffusionXL`` alike; only an ``SdConditioning`` batch of an SDXL base model with
an active request state is replaced, everything else goes to the host's own method.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from lib_llmcond.webui import hosts, loras, prefetch, recall, state
from lib_llmcond.webui.conds import encode_batch

MARK = "__llmcond_wrapped__"
ORIGINAL = "__llmcond_original__"
METHOD = "get_learned_conditioning"
_hooked_models: weakref.WeakSet = weakref.WeakSet()


def _is_ours(fn: Any) -> bool:
    return bool(getattr(fn, MARK, False))


def install_model_hook(
    model: Any,
    *,
    engine: Callable[[], Any],
    host: str,
    host_opts: Callable[[], Any] = lambda: None,
) -> bool:
    """Wrap ``model.get_learned_conditioning``; False if it was already wrapped (or the model has none)."""
    if model is None or not hasattr(model, METHOD) or _is_ours(model.__dict__.get(METHOD)):
        return False
    original = getattr(model, METHOD)
    model_ref = weakref.ref(model)

    def get_learned_conditioning(batch: Any) -> Any:
        current = state.active()
        m = model_ref()
        if current is None or m is None or not hosts.is_sd_conditioning(batch):
            return original(batch)
        if hosts.model_kind(m) != hosts.SDXL_BASE:
            return original(batch)
        return encode_batch(
            batch, current, engine=engine(), model=m, original=original, host=host, host_opts=host_opts()
        )

    setattr(get_learned_conditioning, MARK, True)
    setattr(get_learned_conditioning, ORIGINAL, original)
    setattr(model, METHOD, get_learned_conditioning)
    _hooked_models.add(model)
    return True


def remove_model_hook(model: Any) -> bool:
    current = getattr(model, "__dict__", {}).get(METHOD)
    if not _is_ours(current):
        return False
    original = getattr(current, ORIGINAL)
    if getattr(original, "__self__", None) is model and getattr(type(model), METHOD, None) is getattr(
        original, "__func__", None
    ):
        delattr(model, METHOD)  # the class method shows through again
    else:
        setattr(model, METHOD, original)  # someone else's instance-level wrapper was there first
    _hooked_models.discard(model)
    return True


def remove_all_model_hooks() -> int:
    return sum(remove_model_hook(m) for m in list(_hooked_models))


def install_cache_key_hook(processing_cls: type, *, engine: Callable[[], Any]) -> bool:
    """Make our request signature part of the host's cond-cache key and activate ``p``'s state, with the
    adapter LoRAs of this pass's ``extra_network_data`` (``webui/loras.py``)."""
    if _is_ours(processing_cls.__dict__.get("cached_params")):
        return False
    original = processing_cls.cached_params

    def cached_params(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = original(self, *args, **kwargs)
        current = state.of(self)
        if current is not None:
            network_data = args[2] if len(args) > 2 else kwargs.get("extra_network_data")
            current = loras.for_pass(current, network_data, lambda opts: engine().signature(opts))
        state.activate(current)
        if current is None:
            return key
        if args:
            prefetch.remember(prefetch.plan(self, *args[:2], *_hires_args(args, kwargs)))
        ours = (*key, current.signature) if isinstance(key, tuple) else (key, current.signature)
        recall.expect(ours, current)
        return ours

    setattr(cached_params, MARK, True)
    setattr(cached_params, ORIGINAL, original)
    processing_cls.cached_params = cached_params
    return True


def _hires_args(args: tuple, kwargs: dict) -> tuple:
    # cached_params(required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False)
    hires = args[3] if len(args) > 3 else kwargs.get("hires_steps")
    old = args[4] if len(args) > 4 else kwargs.get("use_old_scheduling", False)
    return hires, bool(old)


def remove_cache_key_hook(processing_cls: type) -> bool:
    current = processing_cls.__dict__.get("cached_params")
    if not _is_ours(current):
        return False
    processing_cls.cached_params = getattr(current, ORIGINAL)
    return True
