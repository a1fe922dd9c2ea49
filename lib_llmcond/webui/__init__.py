"""Everything that touches a WebUI host (A1111, Forge1/reForge, Forge2) or gradio.

Modules, one concern each (host modules are imported lazily, inside functions, per host):
``hosts`` (which host, which model), ``state`` (per-request state), ``args`` (validated script args),
``request`` (args + settings -> options), ``hook`` (the model and cache-key patches), ``conds`` (one batch ->
host conditioning), ``recall`` (token reports kept by the host's cond-cache key), ``host_progress`` (progress text
and Interrupt from ``shared.state``), ``precision`` (outside the host's autocast, free host VRAM), ``infotext``, ``settings``,
``api`` (FastAPI routes), ``ui`` (the accordion), ``script`` (what ``scripts/llmcond.py`` delegates to).
"""
