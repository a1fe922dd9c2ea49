"""Shared test configuration: markers that skip by environment, and a tmp cache dir."""

from __future__ import annotations

import pytest


def _has_transformers_class(name: str) -> bool:
    try:
        import transformers
    except Exception:
        return False
    return hasattr(transformers, name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    has_oracle = _has_transformers_class("Gemma3TextModel")
    for item in items:
        if "oracle" in item.keywords and not has_oracle:
            item.add_marker(
                pytest.mark.skip(reason="transformers in this environment has no oracle model classes")
            )
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


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
