"""llmcond for AUTOMATIC1111 / Forge / reForge: a thin entry; the logic lives in lib_llmcond.webui."""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from modules import script_callbacks, scripts

from lib_llmcond.webui import script as llmcond


class LlmcondScript(scripts.Script):
    sorting_priority = 5

    def title(self):
        return llmcond.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return llmcond.build_ui(self, is_img2img)

    def process(self, p, *args):
        llmcond.process(p, *args)

    def postprocess_batch(self, p, *args, **kwargs):
        llmcond.postprocess_batch(p)

    def postprocess(self, p, processed, *args):
        llmcond.postprocess(p)


llmcond.register_callbacks(script_callbacks)
