"""The accordion inside a real gradio page (3.41.2 / 4.40.0) driven by headless Chromium.

Run in .venv-gradio3 and .venv-gradio4 (dev/extra-setup.sh). Set LLMCOND_SCREENSHOT_DIR to keep a screenshot.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path

import needs
import pytest

pytestmark = pytest.mark.browser
gr = needs.module("gradio", "ui")
sync_api = needs.module("playwright.sync_api", "browser")

from lib_llmcond.webui import api, templates_io, ui  # noqa: E402
from lib_llmcond.webui import request as llmcond_request  # noqa: E402
from lib_llmcond.webui.settings import read  # noqa: E402
from webui_standin import fakes  # noqa: E402
from webui_standin.conftest import make_models  # noqa: E402
from webui_standin.host import TOKEN_COUNTER_CSS, toprow, update_token_counter  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
TEMPLATE = "## Character\nA knight in silver armour.\n## Scene\nA misty forest at dawn."
CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url + "/config", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


@pytest.fixture(params=["gradio"])
def page_url(request, tmp_path, monkeypatch):
    """The page; ``host``: the accordion is the host's ``InputAccordion`` (stand-in ``modules.ui_components``)."""
    if request.param == "host":
        import sys
        import types

        from webui_standin.host import ui_components_module

        monkeypatch.setitem(sys.modules, "modules", types.ModuleType("modules"))
        monkeypatch.setitem(sys.modules, "modules.ui_components", ui_components_module())
    if not os.path.exists(CHROMIUM):
        needs.missing("browser", "Debian chromium is not installed (dev/extra-setup.sh installs it)")
    root = make_models(tmp_path / "models")
    write_adapters(root / "llm_adapters")
    monkeypatch.setattr(llmcond_request, "options_class", fakes.options_class)
    monkeypatch.setattr(templates_io, "names", lambda folders=(): ["Character sheet"])
    monkeypatch.setattr(templates_io, "text", lambda name, folders=(): TEMPLATE)
    engine = fakes.FakeEngine()
    from lib_llmcond.models import find_models

    def settings():
        return read(None, root)

    choices = ui.Choices(
        llms=lambda: [m.name for m in find_models(settings().llm_folders, "llm")],
        adapters=lambda: [m.name for m in find_models(settings().adapter_folders, "adapter")],
        templates=templates_io.names,
        presets=lambda: ["Default"],
        describe=lambda llm, adapter: f"LLM {llm} with adapter {adapter}",
    )
    with gr.Blocks(css=TOKEN_COUNTER_CSS) as demo:
        toprow("txt2img")  # the host's prompt boxes with their own token counters
        ui.build("txt2img", choices)
    port = free_port()
    app, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    api.mount(app, lambda: engine, settings)
    url = f"http://127.0.0.1:{port}"
    wait_for(url)
    yield url, root
    demo.close()


def write_adapters(folder: Path) -> None:
    """Real (tiny, random) adapter files, so the counter reads each one's own input budget from its header."""
    from lib_llmcond.tiny.adapter import write_tiny_adapter

    small = dict(llm_dim=40, dim=64, n_wide=1)
    write_tiny_adapter(folder / "other-adapter.safetensors", n_narrow=1, mlp_hidden=32, **small)  # 512
    write_tiny_adapter(folder / "tiny-adapter.safetensors", family="perceiver", num_latents=7, inner=64, heads=4,
                       ff_hidden=96, out_dim=64, pooled_dim=24, max_input_len=256, **small)  # fmt: skip


def open_page(pw, url):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.add_init_script(path=str(REPO / "tests" / "webui_standin" / "token_counters.js"))
    page.add_init_script(path=str(REPO / "tests" / "webui_standin" / "input_accordion.js"))
    page.add_init_script(path=str(REPO / "javascript" / "llmcond.js"))
    page.goto(url)
    page.locator("#txt2img_llmcond").wait_for(timeout=20000)
    page.wait_for_function(  # the host's counter script has wired the prompt boxes (slow on a loaded machine)
        "() => ['txt2img_token_counter', 'txt2img_negative_token_counter'].every("
        "id => document.getElementById(id)?.classList.contains('token-counter-visible'))",
        timeout=20000,
    )
    return browser, page


def text_of(page, elem_id: str, wanted: str) -> None:
    """Wait until the element's visible text is ``wanted``."""
    page.wait_for_function(
        "([id, want]) => (document.querySelector('#' + id) || {}).innerText?.trim() === want",
        arg=[elem_id, wanted],
        timeout=30000,
    )


def enable_box(page, host_accordion: bool):
    """The host's header box of its InputAccordion, or our own "Enable" box outside a host."""
    page.locator("#txt2img_llmcond .label-wrap").first.click()  # open (the host's box follows until clicked)
    if host_accordion:
        return page.locator("#txt2img_llmcond-visible-checkbox")
    return page.locator("#txt2img_llmcond_enable input[type=checkbox]")


GRADIO4 = int(gr.__version__.split(".")[0]) >= 4
# gradio 4.40 leaves an invisible component out of the page, so the stand-in InputAccordion's hidden checkbox (that
# inputAccordion.js needs) is missing there; Forge's own page is not reproduced by it: the host accordion runs on 3.41
HOST_ACCORDION = pytest.param(
    "host", marks=pytest.mark.skipif(GRADIO4, reason="A1111's InputAccordion: gradio 3.41")
)


@pytest.mark.parametrize("page_url", ["gradio", HOST_ACCORDION], indirect=True)
def test_host_counter_shows_the_llm_count_while_enabled(page_url, request):
    url, _ = page_url
    host_accordion = request.node.callspec.params["page_url"] == "host"
    with sync_api.sync_playwright() as pw:
        browser, page = open_page(pw, url)
        counts = []
        page.on("request", lambda r: counts.append(r.url) if "/llmcond/v1/count" in r.url else None)
        box, neg = page.locator("#txt2img_prompt textarea"), page.locator("#txt2img_neg_prompt textarea")
        box.fill("a knight in a forest")
        neg.fill("ugly, blurry")
        text_of(page, "txt2img_token_counter", "5/75")  # the host's own counter while llmcond is off
        text_of(page, "txt2img_negative_token_counter", "2/75")
        page.wait_for_timeout(1500)
        assert counts == []  # off: nothing polls /count

        enable = enable_box(page, host_accordion)
        enable.check()
        text_of(page, "txt2img_token_counter", "LLM 5/512")  # the first adapter: an LLMToSDXLAdapter
        text_of(page, "txt2img_negative_token_counter", "LLM 2/512")
        assert not page.locator(
            "#txt2img_token_counter .gr-box"
        ).first.is_visible()  # the host's span is hidden

        page.locator("#txt2img_llmcond_adapter input").click()
        page.locator("ul.options li", has_text="tiny-adapter.safetensors").first.click()
        text_of(page, "txt2img_token_counter", "LLM 5/256")  # a Perceiver: its own input budget
        long = " ".join(["word"] * 300)
        box.fill(long)
        text_of(page, "txt2img_token_counter", "LLM 300/256")
        ours = page.locator("#txt2img_token_counter .llmcond-host-counter")
        assert "llmcond-warning" in ours.get_attribute("class") and "cut at token 256" in ours.get_attribute(
            "title"
        )
        shots = os.environ.get("LLMCOND_SCREENSHOT_DIR")
        if shots:
            page.screenshot(path=str(Path(shots) / f"counters-gradio{gr.__version__.split('.')[0]}.png"))

        enable.uncheck()
        host = update_token_counter(long).split(">")[1].split("<")[0]  # the host kept its own count current
        text_of(page, "txt2img_token_counter", host)
        text_of(page, "txt2img_negative_token_counter", "2/75")
        assert page.locator(".llmcond-host-counter").count() == 0
        seen = len(counts)
        box.fill("a knight again")
        text_of(page, "txt2img_token_counter", "3/75")
        page.wait_for_timeout(1500)
        assert len(counts) == seen  # polling stopped with the extension off
        browser.close()


def test_accordion_in_chromium(page_url):
    url, root = page_url
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.add_init_script(path=str(REPO / "javascript" / "llmcond.js"))
        page.goto(url)
        acc = page.locator("#txt2img_llmcond")
        acc.wait_for(timeout=20000)
        page.get_by_text("LLM text encoder (llmcond)").first.click()  # open
        enable = page.locator("#txt2img_llmcond_enable input[type=checkbox]")
        enable.check()
        assert enable.is_checked()

        # choose models
        page.locator("#txt2img_llmcond_llm input").click()
        page.locator("ul.options li", has_text="tiny-q4.gguf").first.click()
        info = page.locator("#txt2img_llmcond_info").first
        page.wait_for_function(
            "() => document.querySelector('#txt2img_llmcond_info').innerText.includes('tiny-q4')"
        )
        assert "other-adapter.safetensors" in info.inner_text()  # the first adapter is preselected

        # refresh finds a new file
        (root / "LLM" / "fresh-model.gguf").write_bytes(b"GGUF" + bytes(8))
        page.locator("#txt2img_llmcond_refresh").click()
        page.locator("#txt2img_llmcond_llm input").click()
        page.locator("ul.options li", has_text="fresh-model.gguf").first.wait_for(timeout=10000)
        page.keyboard.press("Escape")

        # the counter follows the prompt
        box = page.locator("#txt2img_prompt textarea")
        box.fill("a knight in a forest")
        counter = page.locator("#txt2img_llmcond_counter").first
        page.wait_for_function(
            "() => document.querySelector('#txt2img_llmcond_counter').innerText.includes('5/512')"
        )
        box.fill(" ".join(["word"] * 612))
        page.wait_for_function(
            "() => document.querySelector('#txt2img_llmcond_counter').innerText.includes('cut at')"
        )
        assert "612/512" in counter.inner_text()
        page.locator("#txt2img_llmcond_chunk input[type=checkbox]").check()
        page.wait_for_function(
            "() => document.querySelector('#txt2img_llmcond_counter').innerText.includes('612/512, 2 chunks')"
        )
        shots = os.environ.get("LLMCOND_SCREENSHOT_DIR")
        if shots:
            acc.screenshot(path=str(Path(shots) / f"accordion-gradio{gr.__version__.split('.')[0]}.png"))

        # insert a template at the end of the prompt
        box.fill("masterpiece")
        page.locator("#txt2img_llmcond_template input").click()
        page.locator("ul.options li", has_text="Character sheet").first.click()
        page.locator("#txt2img_llmcond_insert").click()
        page.wait_for_function(
            "() => document.querySelector('#txt2img_prompt textarea').value.includes('knight')"
        )
        assert box.input_value() == "masterpiece\n" + TEMPLATE
        n = len(box.input_value().split())
        page.wait_for_function(
            f"() => document.querySelector('#txt2img_llmcond_counter').innerText.includes('tokens: {n}/512')"
        )
        browser.close()
