"""The args model (pydantic 1 or 2 when installed, and the same table without it) and the infotext table."""

from __future__ import annotations

import pytest

from lib_llmcond.webui import args as A
from lib_llmcond.webui import infotext
from lib_llmcond.webui.state import RequestState

try:
    import pydantic  # noqa: F401

    VALIDATORS = [True, False]
except ImportError:
    VALIDATORS = [False]

GOOD = [
    True,
    "tiny-gemma",
    "a.safetensors",
    "No norm",
    "zeros",
    "blocks",
    True,
    "Default",
    "cuda:1",
    "float32",
    "weights_only",
    "attention",
    "fp32",
]
BAD = [
    (["yes"], "enabled"),
    ([True, 5], "llm"),
    ([True, "x", "y", "Loud"], "emphasis"),
    ([True, "x", "y", "None", "nothing"], "empty_negative"),
    ([True, "x", "y", "None", "zeros", "pages"], "break_mode"),
    ([True, "x", "y", "None", "zeros", "blocks", "1"], "chunk"),
    ([True, "x", "y", "None", "zeros", "blocks", False, "D", "cuda; rm -rf /"], "device"),
    ([True, "x", "y", "None", "zeros", "blocks", False, "D", "cpu", "float16"], "dtype"),
    ([True, "x" * 600], "llm"),
    ([True, "x", "y", "None", "zeros", "blocks", False, "D", "cpu", "auto", "booru"], "emphasis_syntax"),
    (
        [True, "x", "y", "None", "zeros", "blocks", False, "D", "cpu", "auto", "full", "loudest"],
        "emphasis_mapping",
    ),
    (
        [True, "x", "y", "None", "zeros", "blocks", False, "D", "cpu", "auto", "full", "attention", "fp16"],
        "adapter_precision",
    ),
    ([True] * 14, "at most 13"),
    ({"enabled": True, "evil": 1}, "evil"),
    ("enabled", "expected a list"),
]


@pytest.mark.parametrize("use_pydantic", VALIDATORS)
def test_good_args(use_pydantic):
    a = A.parse(GOOD, use_pydantic=use_pydantic)
    assert A.as_values(a) == GOOD
    assert A.parse([], use_pydantic=use_pydantic) == A.Args()
    assert A.parse([True, "l"], use_pydantic=use_pydantic).adapter == ""


@pytest.mark.parametrize("use_pydantic", VALIDATORS)
@pytest.mark.parametrize(("values", "named"), BAD)
def test_bad_args_name_the_field(use_pydantic, values, named):
    with pytest.raises(A.ScriptArgsError) as e:
        A.parse(values, use_pydantic=use_pydantic)
    assert named in str(e.value) and e.value.status_code == 422
    assert "order: enabled, llm, adapter" in str(e.value)


def state(**kw) -> RequestState:
    values = dict(
        opts=None,
        signature="s",
        llm_name="gemma-3-1b",
        adapter_name="rouwei.safetensors",
        llm_hash="0123456789",
        adapter_hash="abcdef0123",
    )
    values.update(kw)
    return RequestState(**values)


class P:
    def __init__(self):
        self.extra_generation_params = {}


def test_old_ten_value_payloads_keep_the_new_defaults():
    from lib_llmcond.pipeline import DEFAULT_MAPPING

    a = A.parse(GOOD[:10])
    assert (a.emphasis_syntax, a.emphasis_mapping) == ("full", DEFAULT_MAPPING)
    assert A.NAMES[10:12] == ("emphasis_syntax", "emphasis_mapping")  # the API order (README)


def test_device_choices_list_each_gpu_when_there_are_several():
    assert A.device_choices(0) == A.device_choices(1) == ["auto", "cpu", "cuda"]
    assert A.device_choices(3)[-3:] == ["cuda:0", "cuda:1", "cuda:2"]
    import re

    assert all(re.match(A.DEVICE_PATTERN, d) for d in A.device_choices(12))


def test_new_settings_in_the_infotext_only_when_not_default():
    p = P()
    infotext.write(p, state(), A.parse([True, "l", "a"]))
    assert not any("syntax" in k or "mapping" in k for k in p.extra_generation_params)
    p = P()
    infotext.write(p, state(), A.parse(GOOD))
    assert p.extra_generation_params["llmcond emphasis syntax"] == "weights_only"
    assert p.extra_generation_params["llmcond emphasis mapping"] == "attention"
    fields = dict(infotext.paste_fields({n: n for n in A.NAMES}, "enabled"))
    assert fields["emphasis_syntax"](p.extra_generation_params) == "weights_only"
    old = {"llmcond LLM": "gemma [0123456789]", "llmcond emphasis": "Original"}  # an infotext from before
    assert (
        fields["emphasis_syntax"](old) == "full"
        and fields["emphasis_mapping"](old) == A.DEFAULTS["emphasis_mapping"]
    )


def test_infotext_round_trip():
    args = A.parse([True, "gemma-3-1b", "rouwei.safetensors", "No norm", "zeros", "paragraphs", True])
    p = P()
    infotext.write(p, state(), args)
    params = p.extra_generation_params
    assert params["llmcond LLM"] == "gemma-3-1b [0123456789]"
    assert params["llmcond adapter"] == "rouwei.safetensors [abcdef0123]"
    assert params["llmcond emphasis"] == "No norm" and params["llmcond chunk"] == "on"
    assert "llmcond break" not in params and "llmcond system prompt" not in params  # defaults are not written
    components = {n: n for n in A.NAMES}
    fields = dict((c, f) for c, f in infotext.paste_fields(components, "enabled"))
    assert set(fields) == set(A.NAMES) - {"device"}  # the device does not change the image
    for name in fields:
        assert fields[name](params) == getattr(args, name), name


def test_paste_without_our_keys_turns_off_and_leaves_the_rest():
    components = {n: n for n in A.NAMES}
    fields = dict(infotext.paste_fields(components, "enabled"))
    foreign = {"Steps": "20", "Sampler": "Euler"}
    assert fields["enabled"](foreign) is False
    assert all(fields[n](foreign) is None for n in fields if n != "enabled")


def test_results_name_the_cut_and_the_fallback():
    from webui_standin.fakes import Count, Cut

    s = state()
    s.log.add_reports([Count(300, 512), Count(700, 512, 1, Cut(512, "river", "by the river bank"))])
    s.log.fallback = "x.safetensors: corrupt"
    p = P()
    infotext.write_results(p, s)
    assert p.extra_generation_params["llmcond tokens"].startswith("700/512, cut at token 512 near")
    assert "corrupt" in p.extra_generation_params["llmcond fallback"]
    s2 = state()
    s2.log.add_reports([Count(612, 512, 2)])
    p2 = P()
    infotext.write_results(p2, s2)
    assert p2.extra_generation_params["llmcond tokens"] == "612/512, 2 chunks"
