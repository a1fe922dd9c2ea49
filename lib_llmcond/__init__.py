"""llmcond: large-language-model text conditioning for SDXL.

The library is usable without any WebUI. The flow is one way:
text -> tokens -> hidden states -> adapter -> conditioning -> host.
Only :mod:`lib_llmcond.webui` imports WebUI host modules or gradio.
"""

__version__ = "0.1.0"
