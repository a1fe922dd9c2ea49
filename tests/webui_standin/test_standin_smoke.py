import torch

from webui_standin import fakes


def test_enabled_gives_llm_conds(stand):
    p, processed = stand.txt2img(prompt="a cat", negative_prompt="ugly", width=832, height=1216)
    assert not stand.host.script_errors
    c = p.sampled[0].c.batch[0][0].schedules[0].cond
    opts = stand.engine.calls[-1].opts
    assert torch.equal(c["crossattn"], fakes.llm_cond("a cat", opts)[0])
    assert c["vector"].shape == (2816,)
    assert "llmcond LLM" in processed.infotexts[0]
