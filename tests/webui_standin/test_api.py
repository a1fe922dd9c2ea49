"""The /llmcond/v1/ routes: validated, size-limited input; names resolve only inside the model folders."""

from __future__ import annotations

import needs
import pytest

fastapi = needs.module("fastapi", "ui")
needs.module("httpx", "ui")

from fastapi.testclient import TestClient  # noqa: E402

from lib_llmcond.webui import api, request  # noqa: E402
from lib_llmcond.webui.settings import read  # noqa: E402
from webui_standin import fakes  # noqa: E402
from webui_standin.conftest import make_models  # noqa: E402


@pytest.fixture
def client(tmp_path, monkeypatch):
    root = make_models(tmp_path / "models")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.gguf").write_bytes(b"GGUF")
    (root / "LLM" / "link.gguf").symlink_to(tmp_path / "outside" / "secret.gguf")
    monkeypatch.setattr(request, "options_class", fakes.options_class)
    engine = fakes.FakeEngine()
    app = fastapi.FastAPI()
    api.mount(app, lambda: engine, lambda: read(None, root))
    api.mount(app, lambda: engine, lambda: read(None, root))  # idempotent
    return TestClient(app)


def test_models(client):
    data = client.get("/llmcond/v1/models").json()
    assert [m["name"] for m in data["llms"]] == [
        "tiny-gemma",
        "tiny-q4.gguf",
    ]  # the symlink escape is not listed
    assert {m["name"] for m in data["adapters"]} == {"other-adapter.safetensors", "tiny-adapter.safetensors"}


def test_count(client):
    r = client.post("/llmcond/v1/count", json={"text": "a cat on a mat", "llm": "tiny-gemma"})
    assert r.status_code == 200 and r.json()["tokens"] == 5 and r.json()["text"] == "5/512"
    long = " ".join(["word"] * 612)
    chunked = client.post("/llmcond/v1/count", json={"text": long, "llm": "tiny-gemma", "chunk": True}).json()
    assert chunked["text"] == "612/512, 2 chunks" and chunked["cut"] is None
    cut = client.post("/llmcond/v1/count", json={"text": long, "llm": "tiny-gemma"}).json()
    assert cut["cut"]["token_index"] == 512


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"text": "x", "llm": "../outside/secret.gguf"}, 404),
        ({"text": "x", "llm": "link.gguf"}, 404),
        ({"text": "x", "llm": "/etc/passwd"}, 404),
        ({"text": "x"}, 422),
        ({"text": 5, "llm": "tiny-gemma"}, 422),
        ({"text": "x", "llm": "tiny-gemma", "emphasis": "Loud"}, 422),
        ({"text": "x", "llm": "tiny-gemma", "system_prompt": "nope"}, 422),
        ({"text": "x" * (api.MAX_TEXT + 1), "llm": "tiny-gemma"}, 422),
        ({"text": "x" * (api.MAX_BODY + 10), "llm": "tiny-gemma"}, 413),
    ],
)
def test_count_rejects_bad_input(client, body, status):
    r = client.post("/llmcond/v1/count", json=body)
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text


def test_templates_route(client):
    assert client.get("/llmcond/v1/templates").status_code == 200
    assert client.post("/llmcond/v1/template", json={"name": "no-such-template"}).status_code == 404
    assert client.post("/llmcond/v1/template", json={"name": ""}).status_code == 422


def test_routes_come_with_the_script_on_app_started(a1111):
    app = fastapi.FastAPI()
    for fn in a1111.host.callbacks.app_started:
        fn(None, app)
    c = TestClient(app)
    names = [m["name"] for m in c.get("/llmcond/v1/models").json()["llms"]]
    assert names == ["tiny-gemma", "tiny-q4.gguf"]
    a1111.host.shared.opts.emphasis = "None"
    r = c.post("/llmcond/v1/count", json={"text": "a (b) c", "llm": "tiny-gemma"})
    assert r.status_code == 200 and a1111.engine.calls == []  # counting never runs the LLM


# -- issue 17: script errors through the host's API ---------------------------------------------------------------
@pytest.fixture
def sdapi(stand):
    from lib_llmcond.webui import args as A
    from webui_standin.host import api_app

    app = api_app(stand.host, [(stand.script, "llmcond", list(A.DEFAULTS.values()))])
    return stand, TestClient(app, raise_server_exceptions=False)


def post(client, args: list, prompt: str = "a cat"):
    return client.post(
        "/sdapi/v1/txt2img", json={"prompt": prompt, "alwayson_scripts": {"llmcond": {"args": args}}}
    )


@pytest.mark.parametrize(
    ("args", "status", "named"),
    [
        ([True, "no-such-llm", "tiny-adapter.safetensors"], 404, "no-such-llm"),
        ([True, "../outside/secret.gguf", "tiny-adapter.safetensors"], 404, "secret.gguf"),
        ([True, "tiny-gemma", "/etc/passwd"], 404, "/etc/passwd"),
        ([True, "tiny-gemma", ""], 422, "no adapter is chosen"),
        ([True, "tiny-gemma", "tiny-adapter.safetensors", "Loud"], 422, "emphasis"),
        (
            [True, "tiny-gemma", "tiny-adapter.safetensors", "None", "zeros", "blocks", False, "nope"],
            422,
            "preset",
        ),
        (
            [
                True,
                "tiny-gemma",
                "tiny-adapter.safetensors",
                "None",
                "zeros",
                "blocks",
                False,
                "Default",
                "gpu",
            ],
            422,
            "device",
        ),
    ],
)
def test_bad_script_args_answer_4xx_and_log_one_line(sdapi, caplog, args, status, named):
    stand, client = sdapi
    with caplog.at_level("WARNING", logger="llmcond"):
        r = post(client, args)
    assert r.status_code == status, r.text
    assert named in r.json()["detail"] and "Traceback" not in r.text
    ours = [rec for rec in caplog.records if rec.name == "llmcond"]
    assert len(ours) == 1 and ours[0].levelname == "ERROR" and named in ours[0].getMessage()
    assert not stand.engine.calls


def test_old_ten_args_and_new_twelve_args(sdapi):
    from lib_llmcond.pipeline import DEFAULT_MAPPING

    stand, client = sdapi
    ten = [
        True,
        "tiny-gemma",
        "tiny-adapter.safetensors",
        "Original",
        "encode",
        "paragraphs",
        False,
        "Default",
        "cpu",
        "auto",
    ]
    assert post(client, ten).status_code == 200
    opts = stand.engine.calls[-1].opts
    assert (opts.emphasis_syntax, opts.emphasis_mapping) == ("full", DEFAULT_MAPPING)
    r = post(client, [*ten, "weights_only", "attention"], prompt="name_(series)")
    assert r.status_code == 200, r.text
    opts = stand.engine.calls[-1].opts
    assert (opts.emphasis_syntax, opts.emphasis_mapping) == ("weights_only", "attention")
    assert "llmcond emphasis syntax: weights_only" in r.json()["info"]
    assert "llmcond emphasis mapping: attention" in r.json()["info"]


def test_count_uses_the_adapters_own_budget_and_the_syntax(client, tmp_path):
    from lib_llmcond.tiny.adapter import write_tiny_adapter

    folder = tmp_path / "models" / "llm_adapters"
    small = dict(llm_dim=40, dim=64, n_wide=1)
    write_tiny_adapter(folder / "perceiver.safetensors", family="perceiver", num_latents=7, inner=64, heads=4,
                       ff_hidden=96, out_dim=64, pooled_dim=24, max_input_len=256, **small)  # fmt: skip
    write_tiny_adapter(folder / "rouwei.safetensors", n_narrow=1, mlp_hidden=32, **small)
    text = " ".join(["word"] * 300)
    for adapter, budget in (("perceiver.safetensors", 256), ("rouwei.safetensors", 512), ("", 512)):
        r = client.post("/llmcond/v1/count", json={"text": text, "llm": "tiny-gemma", "adapter": adapter})
        assert r.status_code == 200 and r.json()["budget"] == budget, (adapter, r.text)
    assert r.json()["cut"] is None
    body = {"text": text, "llm": "tiny-gemma", "adapter": "perceiver.safetensors"}
    assert client.post("/llmcond/v1/count", json=body).json()["cut"]["token_index"] == 256
    assert client.post("/llmcond/v1/count", json={**body, "adapter": "../x.safetensors"}).status_code == 404
    ok = client.post("/llmcond/v1/count", json={**body, "emphasis_syntax": "weights_only"})
    assert ok.status_code == 200
    assert client.post("/llmcond/v1/count", json={**body, "emphasis_syntax": "booru"}).status_code == 422
