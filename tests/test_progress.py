"""The progress context through Engine -> Pipeline: what a slow first use says, and a stop between rows."""

from __future__ import annotations

import pytest
import torch

from lib_llmcond.engine import EncodeOptions, Engine
from lib_llmcond.progress import Interrupted, Progress


class Recorder:
    def __init__(self, stop_after_checks: int | None = None):
        self.said: list[tuple[str, bool]] = []
        self.checks = 0
        self.stop_after = stop_after_checks

    def progress(self) -> Progress:
        return Progress(show=lambda text, console: self.said.append((text, console)), should_stop=self.stop)

    def stop(self) -> bool:
        self.checks += 1
        return self.stop_after is not None and self.checks > self.stop_after


@pytest.fixture
def opts(demo):
    llm, adapter = demo
    return EncodeOptions(llm=str(llm), adapter=str(adapter), device="cpu", llm_dtype="float32", memory="keep")


def test_first_use_says_what_it_loads_then_only_what_it_encodes(opts):
    engine, rec = Engine(pack_when_idle=False), Recorder()
    engine.encode_texts(["a cat", "a dog"], opts, rec.progress())
    assert rec.said == [
        ("loading the adapter tiny-adapter.safetensors", True),
        ("loading the LLM tiny-gemma3 and its tokenizer", True),
        ("encoding 2 prompt(s) with the LLM", False),
    ]
    rec.said.clear()
    engine.encode_texts(["a cat", "a bird"], opts, rec.progress())
    assert rec.said == [("encoding 1 prompt(s) with the LLM", False)]  # loaded, and "a cat" is cached


def test_a_stop_request_ends_the_encode_between_rows_and_the_engine_stays_usable(opts):
    engine = Engine(pack_when_idle=False)
    rec = Recorder(stop_after_checks=1)
    with pytest.raises(Interrupted, match="before row 2 of 3"):
        engine.encode_texts(["one", "two", "three"], opts, rec.progress())
    again = engine.encode_texts(["one", "two", "three"], opts)  # nothing half-done was cached
    fresh = Engine(pack_when_idle=False).encode_texts(["one", "two", "three"], opts)
    assert all(torch.equal(a.crossattn, b.crossattn) for a, b in zip(again, fresh))


def test_a_stop_request_ends_a_chunked_prompt_between_chunks(opts):
    from dataclasses import replace

    long = ", ".join(f"word{i}" for i in range(700))
    rec = Recorder(stop_after_checks=1)
    with pytest.raises(Interrupted, match="before row 2 of"):
        Engine(pack_when_idle=False).encode_texts([long], replace(opts, chunk=True), rec.progress())
