"""The LoRAs the host activated for one cond computation, as adapter LoRAs: (file, text-encoder multiplier).

Where the hosts keep them (A1111 1.10.1 and Forge2 alike):

- ``modules/extra_networks.py`` parses ``<lora:name:te:unet:dyn>`` (and the keywords ``te=``, ``unet=``,
  ``dyn=``) out of the prompt into ``extra_network_data``: ``{"lora": [ExtraNetworkParams]}``, each with
  ``items``, ``positional`` and ``named``. A1111 also routes the alias ``lyco`` to the Lora extension, Forge2 does
  not: the names are read from the host's registry (the entries that are ``networks.extra_network_lora``). Only
  the first prompt of a batch is parsed for them; the hires prompt has its own (``hr_extra_network_data``).
- The Lora extension's ``activate`` runs before the conds are computed, and reads the text-encoder multiplier as
  ``te = positional[1]`` (default 1), overridden by ``te=`` (Forge2 passes the same value to its CLIP patch as
  ``strength_clip``). Its ``networks`` module (loaded by the host's script loader as a top-level module) finds
  the file: ``available_networks[name]`` for a name among ``forbidden_network_aliases``, else
  ``available_network_aliases[name]``; ``.filename`` is the file.
- ``StableDiffusionProcessing.cached_params(required_prompts, steps, extra_network_data, ...)`` receives the
  ``extra_network_data`` of exactly the pass whose conds come next (first pass or hires), on every host.

So the cache-key hook reads the requested LoRAs from that argument (rather than ``networks.loaded_networks``,
which Forge2 fills without multipliers and which may still hold the other pass's networks) and resolves their
files through the host's own tables. A host without the Lora extension, an unknown name or an unreadable
multiplier is noted (infotext and console) and the generation goes on without that LoRA on the adapter.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lib_llmcond.errors import LlmcondError
from lib_llmcond.webui.hosts import host_module
from lib_llmcond.webui.state import RequestState

log = logging.getLogger("llmcond")
DEFAULT_KEYS = ("lora",)  # the extra-network name of the Lora extension where the registry says nothing
NETWORKS_MODULE = "networks"  # the Lora extension's module, as the host's script loader leaves it
NO_LORA_SUPPORT = "the host's Lora extension is not loaded"
NOT_FOUND = "no LoRA of this name in the host's Lora list"


def te_multiplier(params: Any) -> float:
    """The host's text-encoder multiplier of one ``ExtraNetworkParams`` (raises ValueError if unreadable)."""
    positional = list(getattr(params, "positional", []) or [])
    named = dict(getattr(params, "named", {}) or {})
    te = float(positional[1]) if len(positional) > 1 else 1.0
    return float(named.get("te", te))


def network_keys(networks: Any) -> tuple[str, ...]:
    """The extra-network names (and aliases) the host routes to its Lora extension."""
    lora = getattr(networks, "extra_network_lora", None)
    extra = host_module("modules.extra_networks")
    if lora is None or extra is None:
        return DEFAULT_KEYS
    tables = {**getattr(extra, "extra_network_aliases", {}), **getattr(extra, "extra_network_registry", {})}
    return tuple(k for k, v in tables.items() if v is lora) or DEFAULT_KEYS


def requested(
    extra_network_data: Any, keys: tuple[str, ...] = DEFAULT_KEYS
) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """(name, te multiplier) per LoRA tag, and notes (name -> reason) for tags that cannot be read."""
    if not isinstance(extra_network_data, Mapping):
        return [], {}
    found, notes = [], {}
    for key in keys:
        for params in extra_network_data.get(key) or []:
            positional = list(getattr(params, "positional", []) or [])
            if not positional:
                continue
            name = str(positional[0])
            try:
                found.append((name, te_multiplier(params)))
            except (TypeError, ValueError):
                notes[name] = f"unreadable multiplier in <{key}:{':'.join(map(str, params.items))}>"
    return found, notes


def networks_module() -> Any | None:
    module = sys.modules.get(NETWORKS_MODULE)
    return module if module is not None and hasattr(module, "available_network_aliases") else None


def find_file(name: str, networks: Any) -> str | None:
    """The file the host found for ``name`` (its own lookup rule)."""
    if name.lower() in getattr(networks, "forbidden_network_aliases", {}):
        entry = networks.available_networks.get(name)
    else:
        entry = networks.available_network_aliases.get(name)
    filename = getattr(entry, "filename", None)
    return str(filename) if filename else None


def for_pass(current: RequestState, extra_network_data: Any, signature: Callable[[Any], str]) -> RequestState:
    """``current`` with the adapter LoRAs of this pass in its options (and their signature), or ``current``
    itself when the pass has none. The returned state shares ``current``'s log."""
    if current.opts is None:
        return current
    networks = networks_module()
    tags, notes = requested(extra_network_data, network_keys(networks) if networks else DEFAULT_KEYS)
    loras = []
    for name, te in tags:
        if te == 0:
            continue  # <lora:name:0:w>: the UNet part only
        path = find_file(name, networks) if networks is not None else None
        if path is None:
            notes[name] = NOT_FOUND if networks is not None else NO_LORA_SUPPORT
            continue
        loras.append((path, te))
        current.log.remember_lora(path, name)
    for name, reason in notes.items():
        if current.log.note_lora(name, reason):
            log.warning("llmcond: adapter LoRA %s ignored: %s", name, reason)
    if tuple(loras) == tuple(current.opts.adapter_loras):
        return current
    opts = dataclasses.replace(current.opts, adapter_loras=tuple(loras))
    try:
        return dataclasses.replace(current, opts=opts, signature=signature(opts))
    except LlmcondError as e:  # a model file gone since the request began: raised at encode time
        return dataclasses.replace(current, opts=opts, signature=f"llmcond:error:{e}", error=e)


def record_results(state: RequestState, results: Any) -> None:
    """After an encode: what the engine merged (by the host's names) and what it ignored, with the reason."""
    for r in results:
        name = state.log.lora_name(r.path) or Path(r.path).stem
        if r.error:
            state.log.note_lora(name, r.error)
        elif r.applied:
            state.log.apply_lora(name, r.multiplier)
