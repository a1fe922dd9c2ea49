"""Bad files, odd prompts, faults and concurrent load through the library's engine (tiny models).

Each case checks that the user gets one clear message naming the file and the fix, that nothing half-loaded
stays behind, and that the next request works.
"""

from __future__ import annotations

import os
import shutil
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_llmcond.engine import EncodeOptions, Engine
from lib_llmcond.errors import IncompatibleModelsError, LlmcondError, ModelFileError
from lib_llmcond.tiny import build_tiny_adapter


def opts(llm, adapter, **kw) -> EncodeOptions:
    return EncodeOptions(llm=str(llm), adapter=str(adapter), device="cpu", llm_dtype="float32", **kw)


def encode(engine, o, text="a red fox"):
    return engine.get_conditioning([text], o, width=1024, height=1024)


def test_adapter_for_another_llm_is_refused_and_the_next_request_works(engine, demo, tmp_path):
    llm, adapter = demo
    wrong = build_tiny_adapter(tmp_path / "wide.safetensors", llm_dim=96)
    with pytest.raises(IncompatibleModelsError, match="width 96") as err:
        encode(engine, opts(llm, wrong))
    assert "wide.safetensors" in str(err.value) and "choose the adapter" in str(err.value).lower()
    assert torch.isfinite(encode(engine, opts(llm, adapter))["crossattn"]).all()


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]),
        lambda p: p.write_bytes(b"\x00" * 64),
        lambda p: p.write_bytes(b""),
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_corrupt_adapter_file(engine, demo, tmp_path, damage):
    llm, adapter = demo
    bad = tmp_path / "bad.safetensors"
    shutil.copy(adapter, bad)
    damage(bad)
    with pytest.raises(ModelFileError) as err:
        encode(engine, opts(llm, bad))
    assert "bad.safetensors" in str(err.value)
    assert torch.isfinite(encode(engine, opts(llm, adapter))["crossattn"]).all()


def test_pickle_adapter_needing_more_than_weights_only_is_refused(engine, demo, tmp_path):
    import pickle

    llm, _ = demo
    bad = tmp_path / "evil.pth"

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(ModelFileError, match="evil.pth"):
        encode(engine, opts(llm, bad))
    assert not (tmp_path / "pwned").exists()


def test_llm_folder_without_tokenizer_or_config(engine, demo, tmp_path):
    llm, adapter = demo
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(llm, no_tok)
    (no_tok / "tokenizer.model").unlink()
    with pytest.raises(ModelFileError, match="no usable tokenizer"):
        encode(engine, opts(no_tok, adapter))
    no_cfg = tmp_path / "no-config"
    shutil.copytree(llm, no_cfg)
    (no_cfg / "config.json").unlink()
    with pytest.raises(ModelFileError, match=r"no config\.json"):
        encode(engine, opts(no_cfg, adapter))


def test_file_replaced_while_loaded_is_reloaded(demo, tmp_path):
    llm, adapter = demo
    mine = tmp_path / "adapter.safetensors"
    shutil.copy(adapter, mine)
    engine = Engine()
    first = encode(engine, opts(llm, mine))
    build_tiny_adapter(mine, seed=99)  # same shapes, new weights, same name
    st_ = mine.stat()
    os.utime(mine, ns=(st_.st_atime_ns, st_.st_mtime_ns + 2_000_000_000))
    second = encode(engine, opts(llm, mine))
    assert not torch.equal(first["crossattn"], second["crossattn"])
    assert [e.key[0] for e in engine._models.entries()] == ["adapter", "llm"]  # the stale adapter was dropped


def test_non_ascii_and_symlinked_paths(engine, demo, tmp_path):
    llm, adapter = demo
    folder = tmp_path / "モデル ü"
    folder.mkdir()
    shutil.copytree(llm, folder / "gemma ünï")
    os.symlink(adapter, folder / "link.safetensors")
    c = encode(engine, opts(folder / "gemma ünï", folder / "link.safetensors"))
    assert c["crossattn"].shape == (1, 308, 2048)


def test_simulated_out_of_memory_frees_and_reports(demo, monkeypatch):
    from lib_llmcond import pipeline

    llm, adapter = demo
    engine = Engine()
    encode(engine, opts(llm, adapter))

    def boom(self, texts, topts, progress=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(pipeline.Pipeline, "encode", boom)
    with pytest.raises(LlmcondError, match="out of GPU memory"):
        encode(engine, opts(llm, adapter), "another prompt")
    assert not engine._models.entries() and not engine._cache
    monkeypatch.undo()
    assert torch.isfinite(encode(engine, opts(llm, adapter), "another prompt")["crossattn"]).all()


def test_concurrent_requests_get_their_own_conditioning(demo, tmp_path):
    llm, adapter = demo
    other = build_tiny_adapter(tmp_path / "other.safetensors", seed=5)
    engine = Engine()  # packs its models in the background meanwhile
    jobs = [(f"prompt number {i}", adapter if i % 2 else other) for i in range(8)]
    expected = {
        (t, str(a)): Engine(pack_when_idle=False).get_conditioning([t], opts(llm, a), width=1024, height=1024)
        for t, a in jobs
    }
    results: dict = {}
    errors: list = []

    def work(text, ad):
        try:
            results[(text, str(ad))] = engine.get_conditioning([text], opts(llm, ad), width=1024, height=1024)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    for key, cond in results.items():  # dense and packed fp32 GEMMs differ only in rounding
        assert torch.allclose(cond["crossattn"], expected[key]["crossattn"], atol=1e-4, rtol=1e-4), key
    assert len(results) == len(jobs)


PROMPT_TEXT = st.text(
    alphabet=st.sampled_from([*"ab (:)[]\\1.2 BREAK\n#,.`*", "\x00", "\u200b", "😀", "字", "\U0010fffd"])
    | st.characters(),
    max_size=60,
)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=PROMPT_TEXT, mode=st.sampled_from(["None", "Ignore", "Original", "No norm"]), chunk=st.booleans())
def test_any_text_gives_finite_conditioning(engine, demo, text, mode, chunk):
    llm, adapter = demo
    c = engine.get_conditioning(
        [text, ""], opts(llm, adapter, emphasis=mode, chunk=chunk), width=832, height=1216
    )
    assert (
        c["crossattn"].shape[0] == 2
        and c["crossattn"].shape[1] % 308 == 0
        and c["crossattn"].shape[2] == 2048
    )
    assert c["vector"].shape == (2, 2816)
    assert torch.isfinite(c["crossattn"]).all() and torch.isfinite(c["vector"]).all()


def test_very_long_prompt_is_reported_not_silent(engine, demo):
    llm, adapter = demo
    reports: list = []
    text = "a red fox in the snow, " * 2000  # 40,000+ characters
    c = engine.get_conditioning([text], opts(llm, adapter), width=1024, height=1024, reports=reports)
    assert c["crossattn"].shape == (1, 308, 2048)
    assert (
        reports[0].tokens > 512 and reports[0].cut is not None and "cut at token 512" in reports[0].describe()
    )
