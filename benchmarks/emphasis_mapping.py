"""Compare the emphasis mappings (input-token weights -> the adapter's 308 output tokens) on one criterion.

For a prompt whose word W gets weight w, the output tokens whose compression attention mass on W's tokens is in
the top ``--carrier`` share (default 10 %) "carry" W; those below the median mass do not. Per unit of (w - 1):
- gain: mean |m_j - 1| over carriers (how much of the weight reaches the tokens that hold W; higher is better),
- leak: mean |m_j - 1| over the others (how much spills onto tokens of other words; lower is better),
- ratio: gain / leak.
Prints a Markdown table. Uses the tiny demo models unless ``--llm``/``--adapter`` point at real ones.

    python -m benchmarks.emphasis_mapping [--llm DIR --adapter FILE]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from lib_llmcond.engine import EncodeOptions, Engine
from lib_llmcond.prompt.emphasis import parse_prompt
from lib_llmcond.prompt.weights import MAPPINGS, output_multipliers, token_weights

PROMPTS = [
    ("a girl with (silver:{w}) hair stands in a field of flowers under a blue sky", "silver"),
    (
        "## Character 1\nA knight in (shining armor:{w}).\n## Scene\nA castle on a hill at sunset.",
        "shining armor",
    ),
    ("masterpiece, best quality, 1girl, solo, (red dress:{w}), smile, outdoors, night sky", "red dress"),
]
WEIGHTS = (1.2, 1.5)


def measure(engine: Engine, opts: EncodeOptions, carrier: float) -> list[dict]:
    pipe, _ = engine.pipeline(opts)
    path, tok = pipe.text_path(opts.text_options()), pipe.llm.tokenizer
    rows = []
    for template, _word in PROMPTS:
        for w in WEIGHTS:
            parsed = parse_prompt(template.format(w=w))
            row = path.tokenize(parsed.text, tok)
            batch = path.batch([row], tok)
            hidden = pipe.llm.hidden_states(batch)
            x, mask = pipe._adapter_inputs(hidden, batch)
            out = pipe.adapter(x, mask, return_attention=True)
            offsets = path.adapter_offsets(row, tok)[: pipe.budget]
            tw = torch.tensor(token_weights(offsets, parsed.spans))[None]
            attn = out.attention[:, :, : tw.shape[1]].cpu()
            on_word = attn[0][:, (tw[0] != 1.0)].sum(-1)
            carriers = on_word >= torch.quantile(on_word, 1 - carrier)
            others = on_word < torch.quantile(on_word, 0.5)
            for mapping in MAPPINGS:
                m = output_multipliers(attn, tw, mode=mapping)[0]
                dev = (m - 1).abs() / (w - 1)
                gain = dev[carriers].mean().item() if carriers.any() else float("nan")
                leak = dev[others].mean().item() if others.any() else float("nan")
                rows.append(
                    {"mapping": mapping, "w": w, "gain": gain, "leak": leak, "carriers": int(carriers.sum())}
                )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| mapping | gain (carriers) | leak (others) | gain/leak | carriers (of 308) |",
        "|---|---|---|---|---|",
    ]
    for mapping in MAPPINGS:
        mine = [r for r in rows if r["mapping"] == mapping]
        gain = sum(r["gain"] for r in mine) / len(mine)
        leak = sum(r["leak"] for r in mine) / len(mine)
        carriers = sum(r["carriers"] for r in mine) / len(mine)
        lines.append(
            f"| {mapping} | {gain:.3f} | {leak:.4f} | {gain / max(leak, 1e-9):.1f} | {carriers:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm")
    parser.add_argument("--adapter")
    parser.add_argument("--carrier", type=float, default=0.1)
    args = parser.parse_args(argv)
    llm, adapter = args.llm, args.adapter
    if not (llm and adapter):
        from lib_llmcond.tiny import build_demo_models

        llm, adapter = map(str, build_demo_models(tempfile.mkdtemp(prefix="llmcond-emph-")))
    opts = EncodeOptions(llm=llm, adapter=adapter, device="cpu", llm_dtype="float32")
    with torch.inference_mode():
        print(table(measure(Engine(), opts, args.carrier)))


if __name__ == "__main__":
    main()
