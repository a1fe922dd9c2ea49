"""llmcond: large-language-model text conditioning for SDXL.

The library is usable without any WebUI. The flow is one way:
text -> tokens -> hidden states -> adapter -> conditioning -> host.
Only :mod:`lib_llmcond.webui` imports WebUI host modules or gradio.

The public names below are imported on first use (``import lib_llmcond`` alone does not import torch)::

    from lib_llmcond import EncodeOptions, Engine, sdxl_prompt_embeds
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Engine": "lib_llmcond.engine",
    "EncodeOptions": "lib_llmcond.engine",
    "sdxl_prompt_embeds": "lib_llmcond.diffusers_sdxl",
    "SDXLPromptEmbeds": "lib_llmcond.diffusers_sdxl",
    "Pipeline": "lib_llmcond.pipeline",
    "TextOptions": "lib_llmcond.pipeline",
    "EncodedText": "lib_llmcond.pipeline",
    "load_llm": "lib_llmcond.encoders.llm",
    "load_adapter": "lib_llmcond.adapters.loader",
    "make_vector": "lib_llmcond.conditioning",
    "size_embedding": "lib_llmcond.conditioning",
    "describe_path": "lib_llmcond.info",
    "LlmcondError": "lib_llmcond.errors",
    "ModelFileError": "lib_llmcond.errors",
    "IncompatibleModelsError": "lib_llmcond.errors",
    "PromptError": "lib_llmcond.errors",
}

__all__ = [  # the names of _EXPORTS, spelled out for static tools
    "EncodeOptions",
    "EncodedText",
    "Engine",
    "IncompatibleModelsError",
    "LlmcondError",
    "ModelFileError",
    "Pipeline",
    "PromptError",
    "SDXLPromptEmbeds",
    "TextOptions",
    "__version__",
    "describe_path",
    "load_adapter",
    "load_llm",
    "make_vector",
    "sdxl_prompt_embeds",
    "size_embedding",
]

if TYPE_CHECKING:
    from lib_llmcond.adapters.loader import load_adapter
    from lib_llmcond.conditioning import make_vector, size_embedding
    from lib_llmcond.diffusers_sdxl import SDXLPromptEmbeds, sdxl_prompt_embeds
    from lib_llmcond.encoders.llm import load_llm
    from lib_llmcond.engine import EncodeOptions, Engine
    from lib_llmcond.errors import IncompatibleModelsError, LlmcondError, ModelFileError, PromptError
    from lib_llmcond.info import describe_path
    from lib_llmcond.pipeline import EncodedText, Pipeline, TextOptions


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lib_llmcond' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
