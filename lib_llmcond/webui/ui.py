"""The accordion (gradio 3.41 and 4.40): returns the components whose values are the script's args, in
``args.FIELDS`` order. Built from the host's ``InputAccordion`` where it exists, else an accordion with a box."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lib_llmcond.webui import args as A

TITLE = "LLM text encoder (llmcond)"
REFRESH_SYMBOL = "\U0001f504"  # the hosts' refresh button glyph


@dataclass
class Choices:
    """What the dropdowns list; functions so refresh re-reads the folders."""

    llms: Callable[[], list[str]]
    adapters: Callable[[], list[str]]
    templates: Callable[[], list[str]]
    presets: Callable[[], list[str]]
    describe: Callable[[str, str], str]  # (llm name, adapter name) -> info line


def gradio_major() -> int:
    import gradio as gr

    return int(str(gr.__version__).split(".")[0])


def js_kwarg(code: str) -> dict:
    """The event argument for client-side code: ``_js`` on gradio 3, ``js`` on gradio 4."""
    return {"_js" if gradio_major() < 4 else "js": code}


def _input_accordion(label: str, elem_id: str) -> tuple[Any, Any]:
    """(context manager, enable component)."""
    import gradio as gr

    try:
        from modules.ui_components import InputAccordion  # A1111 >= 1.7, Forge, reForge
    except ImportError:
        InputAccordion = None
    if InputAccordion is not None:
        acc = InputAccordion(False, label=label, elem_id=elem_id)
        return acc, acc
    acc = gr.Accordion(label, open=False, elem_id=elem_id)
    return acc, None


def _tool_button(symbol: str, elem_id: str) -> Any:
    """The hosts' small square ``ToolButton``, or a small gradio button outside a host."""
    import gradio as gr

    try:
        from modules.ui_components import ToolButton
    except ImportError:
        return gr.Button(symbol, elem_id=elem_id, size="sm", scale=0, min_width=48)
    return ToolButton(symbol, elem_id=elem_id)


def _first(values: Sequence[str]) -> str | None:
    return values[0] if values else None


def build(tab: str, choices: Choices) -> list[Any]:
    """The components, in ``args.NAMES`` order. ``tab`` is ``txt2img`` or ``img2img`` (element ids)."""
    import gradio as gr

    eid = f"{tab}_llmcond"
    container, enabled = _input_accordion(TITLE, eid)
    with container:
        if enabled is None:
            enabled = gr.Checkbox(False, label="Enable", elem_id=f"{eid}_enable")
        with gr.Row():
            llms, adapters = choices.llms(), choices.adapters()
            llm = gr.Dropdown(llms, value=_first(llms), label="LLM", elem_id=f"{eid}_llm", interactive=True)
            adapter = gr.Dropdown(
                adapters, value=_first(adapters), label="Adapter", elem_id=f"{eid}_adapter", interactive=True
            )
            refresh = _tool_button(REFRESH_SYMBOL, f"{eid}_refresh")
        info = gr.HTML(_info_html(choices, _first(llms), _first(adapters)), elem_id=f"{eid}_info")
        gr.HTML("", elem_id=f"{eid}_counter")  # filled by javascript/llmcond.js
        with gr.Row():
            temps = choices.templates()
            template = gr.Dropdown(temps, value=_first(temps), label="Template", elem_id=f"{eid}_template")
            insert = gr.Button("Insert template", elem_id=f"{eid}_insert", size="sm", scale=0, min_width=160)
        with gr.Row():
            emphasis = gr.Dropdown(
                list(A.EMPHASIS_CHOICES), value=A.EMPHASIS_FOLLOW, label="Emphasis", elem_id=f"{eid}_emphasis"
            )
            empty_negative = gr.Radio(
                list(A.EMPTY_NEGATIVE_CHOICES),
                value="encode",
                label="Empty negative prompt",
                elem_id=f"{eid}_empty_negative",
            )
            break_mode = gr.Radio(
                list(A.BREAK_CHOICES), value="paragraphs", label="BREAK", elem_id=f"{eid}_break"
            )
            chunk = gr.Checkbox(False, label="Chunk long prompts", elem_id=f"{eid}_chunk")
        with gr.Accordion("Advanced", open=False, elem_id=f"{eid}_advanced"):
            with gr.Row():
                presets = choices.presets()
                system_prompt = gr.Dropdown(
                    presets, value=A.DEFAULT_PRESET, label="System prompt", elem_id=f"{eid}_system"
                )
                device = gr.Dropdown(
                    A.device_choices(_cuda_devices()), value="auto", label="Device", elem_id=f"{eid}_device"
                )
                dtype = gr.Dropdown(
                    list(A.DTYPE_CHOICES), value="auto", label="LLM dtype", elem_id=f"{eid}_dtype"
                )
            with gr.Row():
                emphasis_syntax = _choice_dropdown("emphasis_syntax", "Emphasis syntax", f"{eid}_syntax")
                emphasis_mapping = _choice_dropdown("emphasis_mapping", "Emphasis mapping", f"{eid}_mapping")
                adapter_precision = _choice_dropdown(
                    "adapter_precision", "Adapter precision (CUDA)", f"{eid}_precision"
                )

    def on_refresh(cur_llm: str | None, cur_adapter: str | None) -> tuple:
        ls, ads, ts = choices.llms(), choices.adapters(), choices.templates()
        new_llm = cur_llm if cur_llm in ls else _first(ls)
        new_adapter = cur_adapter if cur_adapter in ads else _first(ads)
        return (
            gr.update(choices=ls, value=new_llm),
            gr.update(choices=ads, value=new_adapter),
            gr.update(choices=ts, value=_first(ts)),
            _info_html(choices, new_llm, new_adapter),
        )

    refresh.click(on_refresh, inputs=[llm, adapter], outputs=[llm, adapter, template, info])
    for dd in (llm, adapter):
        dd.change(lambda a, b: _info_html(choices, a, b), inputs=[llm, adapter], outputs=[info])
    insert.click(
        None, inputs=[template], outputs=[], **js_kwarg(f"(name) => llmcondInsertTemplate('{tab}', name)")
    )
    components = dict(
        enabled=enabled,
        llm=llm,
        adapter=adapter,
        emphasis=emphasis,
        empty_negative=empty_negative,
        break_mode=break_mode,
        chunk=chunk,
        system_prompt=system_prompt,
        device=device,
        dtype=dtype,
        emphasis_syntax=emphasis_syntax,
        emphasis_mapping=emphasis_mapping,
        adapter_precision=adapter_precision,
    )
    return [components[n] for n in A.NAMES]


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _choice_dropdown(arg: str, label: str, elem_id: str) -> Any:
    """A dropdown over an arg's choices (``args.FIELDS``), at its default."""
    import gradio as gr

    field = A.FIELDS[A.NAMES.index(arg)]
    return gr.Dropdown(
        list(field.choices or ()), value=field.default, label=label, elem_id=elem_id, info=field.help
    )


def _info_html(choices: Choices, llm: str | None, adapter: str | None) -> str:
    import html

    if not llm or not adapter:
        return "<span class='llmcond-info'>Choose an LLM and an adapter (put them in models/LLM and models/llm_adapters, then refresh).</span>"
    return f"<span class='llmcond-info'>{html.escape(choices.describe(llm, adapter))}</span>"
