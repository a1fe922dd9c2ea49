"""Shared test configuration: markers that skip by environment, and a tmp cache dir."""

from __future__ import annotations

import needs
import pytest

ORACLE_CLASS = "Gemma3TextModel"  # transformers >= 4.50


def _oracle_problem() -> str | None:
    """None when transformers' oracle model classes import, else why not."""
    try:
        import transformers

        getattr(transformers, ORACLE_CLASS)  # transformers imports its model classes lazily, here
    except Exception as e:  # a broken install raises more than ImportError
        return f"transformers has no oracle model classes here ({type(e).__name__}: {e})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """An oracle test skips without the oracles, and fails where ``LLMCOND_REQUIRE`` names them."""
    if "oracle" in item.keywords:
        problem = _oracle_problem()
        if problem:
            needs.missing("oracles", problem)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The demo's tiny random Gemma-3 folder and adapter, built once per run (tests copy before changing them)."""
    from lib_llmcond.tiny import build_demo_models

    return build_demo_models(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def engine():
    """One engine per test module, so its model registry and cache are exercised across tests. It does not pack
    between requests: fp32 packed and dense GEMMs round differently, and tests here compare requests bit for bit
    (bf16 packed equals dense; packing itself is tested in test_idle_packing.py)."""
    from lib_llmcond.engine import Engine

    return Engine(pack_when_idle=False)


@pytest.fixture(scope="session")
def t5_demo(tmp_path_factory):
    """A tiny random T5Gemma folder (with the tiny Gemma tokenizer) and an adapter of its width, built once."""
    from lib_llmcond.tiny import build_tiny_adapter
    from lib_llmcond.tiny.llm import write_tiny_llm
    from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

    root = tmp_path_factory.mktemp("t5")
    llm = root / "tiny-t5gemma"
    write_tiny_gemma_tokenizer(llm)
    write_tiny_llm(llm, "t5gemma", seed=4)
    return llm, build_tiny_adapter(root / "adapter.safetensors", seed=2)
