"""What ``scripts/llmcond.py`` delegates to: the runtime (engine, settings), the callbacks, the Script hooks."""

from __future__ import annotations

import logging
import threading
from typing import Any

from lib_llmcond.errors import LlmcondError
from lib_llmcond.webui import (
    api,
    hook,
    hosts,
    infotext,
    memory,
    recall,
    request,
    settings,
    state,
    templates_io,
    ui,
)
from lib_llmcond.webui import args as A

log = logging.getLogger("llmcond")
TITLE = "llmcond"  # also the key of alwayson_scripts in API requests


class Runtime:
    """One per process: the engine (created on first use, or injected by tests) and host access."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()
        self.host = hosts.detect_host()

    def set_engine(self, engine: Any) -> None:
        with self._lock:
            self._engine = engine

    def engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                from lib_llmcond.engine import Engine

                self._engine = Engine(cache_size=self.settings().cache_size, host=memory.for_host(self.host))
            return self._engine

    def host_opts(self) -> Any:
        shared = hosts.host_module("modules.shared")
        return getattr(shared, "opts", None)

    def settings(self) -> settings.Settings:
        shared = hosts.host_module("modules.shared")
        return settings.read(self.host_opts(), settings.host_models_root(), getattr(shared, "cmd_opts", None))

    def loaded_model(self) -> Any:
        """The loaded checkpoint without making the host load one (A1111's ``shared.sd_model`` would)."""
        sd_models = hosts.host_module("modules.sd_models")
        data = getattr(sd_models, "model_data", None)
        model = getattr(data, "sd_model", None) if data is not None else None
        if model is None:
            shared = hosts.host_module("modules.shared")
            model = vars(shared).get("sd_model") if shared is not None else None
        return model

    # -- patches ---------------------------------------------------------------------------------
    def install_model_hook(self, model: Any) -> bool:
        return hook.install_model_hook(model, engine=self.engine, host=self.host, host_opts=self.host_opts)

    def install(self) -> None:
        processing = hosts.host_module("modules.processing")
        if processing is not None:
            hook.install_cache_key_hook(processing.StableDiffusionProcessing, engine=self.engine)
        model = self.loaded_model()
        if model is not None:
            self.install_model_hook(model)

    def uninstall(self) -> None:
        processing = hosts.host_module("modules.processing")
        if processing is not None:
            hook.remove_cache_key_hook(processing.StableDiffusionProcessing)
        hook.remove_all_model_hooks()
        state.activate(None)
        recall.forget()

    # -- UI helpers ------------------------------------------------------------------------------
    def choices(self) -> ui.Choices:
        from lib_llmcond.models import find_models

        return ui.Choices(
            llms=lambda: [m.name for m in find_models(self.settings().llm_folders, "llm")],
            adapters=lambda: [m.name for m in find_models(self.settings().adapter_folders, "adapter")],
            templates=templates_io.names,
            presets=lambda: list(request.system_presets()),
            describe=self.describe,
        )

    def describe(self, llm: str, adapter: str) -> str:
        from lib_llmcond.models import resolve_model

        s = self.settings()
        try:
            llm_path = resolve_model(llm, s.llm_folders, "llm")
            adapter_path = resolve_model(adapter, s.adapter_folders, "adapter")
        except LlmcondError as e:
            return str(e)
        from lib_llmcond.webui.info import describe

        return describe(llm_path, adapter_path)


runtime = Runtime()


def register_callbacks(script_callbacks: Any) -> None:
    """Install the patches now and after every model load; remove them when the script is unloaded."""
    runtime.install()
    script_callbacks.on_model_loaded(runtime.install_model_hook)
    script_callbacks.on_script_unloaded(runtime.uninstall)
    script_callbacks.on_app_started(
        lambda _demo, app: api.mount(app, runtime.engine, runtime.settings, runtime.host_opts)
    )

    def on_ui_settings() -> None:
        settings.register(hosts.host_module("modules.shared"))

    script_callbacks.on_ui_settings(on_ui_settings)


# -- the Script hooks (called by scripts/llmcond.py's Script subclass) ------------------------------
def build_ui(script: Any, is_img2img: bool) -> list[Any]:
    components = ui.build("img2img" if is_img2img else "txt2img", runtime.choices())
    named = dict(zip(A.NAMES, components))
    script.infotext_fields = infotext.paste_fields(named, named["enabled"])
    script.paste_field_names = list(infotext.LABELS)
    return components


def process(p: Any, *values: Any) -> None:
    state.activate(None)  # a new request: nothing of an earlier (perhaps failed) one stays active
    try:
        args = A.parse(list(values))
    except A.ScriptArgsError as e:
        if not _looks_enabled(values):
            state.attach(p, None)
            return
        state.attach(p, request.error_state(e))  # raised and logged once, when the conds are computed
        return
    current = (
        request.build(args, runtime.settings(), runtime.engine(), runtime.host_opts())
        if args.enabled
        else None
    )
    state.attach(p, current)
    if current is not None:
        infotext.write(p, current, args)


def _looks_enabled(values: tuple) -> bool:
    first = values[0] if values else False
    return str(first).strip().lower() not in ("false", "0", "", "none", "off", "no")


def postprocess_batch(p: Any) -> None:
    current = state.of(p)
    if current is not None:
        infotext.write_results(p, current)


def postprocess(p: Any) -> None:
    current = state.of(p)
    if current is not None:
        infotext.write_results(p, current)
    state.deactivate_if(current)
