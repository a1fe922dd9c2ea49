"""FastAPI routes under ``/llmcond/v1/``: list models, count a prompt's tokens, read a template.

Input is validated (pydantic, size limits; bodies over ``MAX_BODY`` bytes are refused before parsing) and
model names resolve only to files discovered in the configured folders.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib_llmcond.errors import LlmcondError
from lib_llmcond.webui import args as A
from lib_llmcond.webui import templates_io
from lib_llmcond.webui.settings import Settings

PREFIX = "/llmcond/v1"
MAX_TEXT = 100_000  # characters of a prompt to count
MAX_BODY = 1 << 20  # bytes of a request body
DEFAULT_BUDGET = 512  # input tokens counted against when no adapter is named (the LLMToSDXLAdapter's)
_budgets: dict[Any, int] = {}


def adapter_budget(path: Path) -> int:
    """The adapter's own input budget (``max_input_tokens``) from its header, cached by file identity."""
    from lib_llmcond.adapters.loader import inspect_adapter
    from lib_llmcond.models import identity

    ident = identity(path)
    if ident not in _budgets:
        _budgets[ident] = int(inspect_adapter(path).max_input_tokens)
    return _budgets[ident]


def make_router(
    get_engine: Callable[[], Any],
    get_settings: Callable[[], Settings],
    get_host_opts: Callable[[], Any] = lambda: None,
) -> Any:
    from typing import Literal

    from fastapi import APIRouter, Depends, HTTPException, Request
    from pydantic import BaseModel, Field, StrictBool, StrictStr

    async def limit_body(request: Request) -> None:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            raise HTTPException(status_code=413, detail=f"request body larger than {MAX_BODY} bytes")
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPException(status_code=413, detail=f"request body larger than {MAX_BODY} bytes")

    class CountRequest(BaseModel):
        text: StrictStr = Field(..., max_length=MAX_TEXT)
        llm: StrictStr = Field(..., min_length=1, max_length=A.MAX_NAME)
        emphasis: Literal[A.EMPHASIS_CHOICES] = A.EMPHASIS_FOLLOW  # type: ignore[valid-type]
        break_mode: Literal[A.BREAK_CHOICES] = "paragraphs"  # type: ignore[valid-type]
        chunk: StrictBool = False
        system_prompt: StrictStr = Field(A.DEFAULT_PRESET, max_length=A.MAX_NAME)
        emphasis_syntax: Literal[A.SYNTAXES] = A.SYNTAXES[0]  # type: ignore[valid-type]
        adapter: StrictStr = Field("", max_length=A.MAX_NAME)  # its input budget; 512 without one

    class TemplateRequest(BaseModel):
        name: StrictStr = Field(..., min_length=1, max_length=A.MAX_NAME)

    router = APIRouter(prefix=PREFIX, tags=["llmcond"])

    def fail(e: LlmcondError, status: int = 400) -> HTTPException:
        return HTTPException(status_code=status, detail=str(e))

    @router.get("/models")
    def models() -> dict:
        from lib_llmcond.models import find_models

        s = get_settings()
        return {
            "llms": [{"name": m.name, "format": m.format} for m in find_models(s.llm_folders, "llm")],
            "adapters": [
                {"name": m.name, "format": m.format} for m in find_models(s.adapter_folders, "adapter")
            ],
        }

    @router.post("/count", dependencies=[Depends(limit_body)])
    def count(req: CountRequest) -> dict:
        from lib_llmcond.webui.request import effective_emphasis, options_class, resolve, system_presets

        s = get_settings()
        presets = system_presets()
        if req.system_prompt not in presets:
            raise HTTPException(status_code=422, detail=f"unknown system prompt preset {req.system_prompt!r}")
        try:
            llm = resolve(req.llm, s.llm_folders, "llm")
            adapter = resolve(req.adapter, s.adapter_folders, "adapter") if req.adapter else None
            opts = options_class()(
                llm=str(llm),
                adapter="",
                emphasis=effective_emphasis(req.emphasis, get_host_opts()),
                emphasis_syntax=req.emphasis_syntax,
                break_mode=req.break_mode,
                system_prompt=presets[req.system_prompt],
                chunk=req.chunk,
            )
            budget = DEFAULT_BUDGET if adapter is None else adapter_budget(adapter)
            n = get_engine().count_tokens(req.text, opts, budget=budget)
        except LlmcondError as e:
            raise fail(e, getattr(e, "status_code", 400)) from None
        cut = getattr(n, "cut", None)
        return {
            "tokens": n.tokens,
            "budget": n.budget,
            "chunks": n.chunks,
            "cut": None
            if cut is None
            else {k: getattr(cut, k, None) for k in ("token_index", "word", "snippet")},
            "text": n.describe(),
        }

    @router.get("/templates")
    def templates() -> dict:
        return {"templates": templates_io.names()}

    @router.post("/template", dependencies=[Depends(limit_body)])
    def template(req: TemplateRequest) -> dict:
        try:
            return {"name": req.name, "text": templates_io.text(req.name)}
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no template named {req.name!r}") from None

    return router


def mount(
    app: Any,
    get_engine: Callable[[], Any],
    get_settings: Callable[[], Settings],
    get_host_opts: Callable[[], Any] = lambda: None,
) -> None:
    """Add the routes to the host's FastAPI app once (``on_app_started``)."""
    if any(getattr(r, "path", "").startswith(PREFIX) for r in getattr(app, "routes", [])):
        return
    app.include_router(make_router(get_engine, get_settings, get_host_opts))
