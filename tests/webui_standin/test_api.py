"""The /llmcond/v1/ routes: validated, size-limited input; names resolve only inside the model folders."""

from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("httpx")

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
