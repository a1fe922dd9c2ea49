"""One-shot GPU check: our CUDA path next to the reference's transformers path, in one run, on one card.

python -m benchmarks.gpu_check [--models gemma,t5gemma] [--repeats 20] [--out DIR]

Needs only what a bare GPU machine has (torch, transformers, safetensors, sentencepiece, numpy; no gguf, no
network). Writes random-weight models of the real shapes (``benchmarks/.cache``), then per model:

- ours through ``Engine.get_conditioning`` (what the hosts call): one prompt and a cond + uncond pair at 77 and
  512 adapter tokens, default GPU mode (bf16 LLM, TF32 adapter) and exact fp32 adapter; the first call after the
  load (CUDA graph capture) and the load itself; peak VRAM;
- the reference's path as its nodes run it: transformers (``Gemma3ForCausalLM`` with all hidden states /
  ``T5GemmaEncoderModel`` padded to 512) then the adapter in fp32, one prompt at a time;
- one call under each memory policy;
- CUDA against the CPU (fp32 LLM and adapter there) for each precision choice, with TF32 switched on
  process-wide first, as A1111 does at start.

Prints one Markdown table and writes ``gpu_check.json`` (to ``--out``, default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

WORDS = ("red", "fox", "snow", "river", "tree", "girl", "hair", "sky", "blue", "light", "cloud", "field")
LENGTHS = (77, 512)
DEVICE = torch.device("cuda")  # --device cpu with --tiny: a smoke run of this script without a GPU


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def allocated() -> int:
    return torch.cuda.memory_allocated(DEVICE) if DEVICE.type == "cuda" else 0


def peak_allocated() -> int:
    return torch.cuda.max_memory_allocated(DEVICE) if DEVICE.type == "cuda" else 0


def release() -> None:
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(DEVICE)


def timed(fn: Callable[[], object], repeats: int, warmup: int = 3) -> dict:
    """Median and min wall time in ms over ``repeats`` runs after ``warmup`` (device synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def once(fn: Callable[[], object]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


# -- prompts of a given adapter-token count ------------------------------------------------------------------
def prompt_of(llm_dir: Path, n: int, shift: int = 0) -> tuple[str, int]:
    """A text whose tokens reaching the adapter are ``n`` (or the first count past it), and that count."""
    from lib_llmcond.encoders.llm import load_llm_tokenizer
    from lib_llmcond.text.paths import text_path

    tok, family = load_llm_tokenizer(llm_dir)
    path = text_path(family)

    def count(k: int) -> int:
        row = path.tokenize(text(k), tok)
        return min(row.adapter_end - row.adapter_start, 512)

    def text(k: int) -> str:
        return " ".join(WORDS[(i * 7 + shift) % len(WORDS)] for i in range(k))

    k = 1
    while count(k) < n and k < 4096:
        k += max(1, (n - count(k)) // 2)
    return text(k), count(k)


# -- ours ----------------------------------------------------------------------------------------------------
def options(llm_dir: Path, adapter: Path, **kw):
    from lib_llmcond.engine import EncodeOptions

    base = dict(llm=str(llm_dir), adapter=str(adapter), device=str(DEVICE), emphasis="None", memory="keep")
    return EncodeOptions(**{**base, **kw})


def conds(engine, texts: list[str], opts) -> dict:
    return engine.get_conditioning(texts, opts, width=1024, height=1024)


def attention_times(cfg, dtype: torch.dtype) -> dict[str, float]:
    """Microseconds of one 2x512-token attention call in each lean form tried on this card (the load-time
    choice's own measurement, taken again here to be shown)."""
    from lib_llmcond.encoders import lean_check

    forms = lean_check.candidate_forms(cfg, DEVICE)
    return {form: lean_check.seconds_per_attention(cfg, DEVICE, dtype, form) * 1e6 for form in forms}


def _lean_cell(lean, times: dict | None = None) -> str:
    """``lean``: the attention form the lean maths used, False where the check failed (True: older results)."""
    if lean is False:
        return "OFF (check failed, see the log)"
    if not isinstance(lean, str):
        return "on"
    timed = ", ".join(f"{form} {us:.0f} us" for form, us in (times or {}).items())
    return f"on, attention: {lean} ({timed})" if timed else f"on, attention: {lean}"


def ours(llm_dir: Path, adapter: Path, prompts: dict, repeats: int) -> dict:
    from lib_llmcond.engine import Engine

    out: dict = {}
    for precision in ("tf32", "fp32"):
        engine = Engine(cache_size=0)  # nothing served from the cache: every call encodes
        opts = options(llm_dir, adapter, adapter_precision=precision)
        release()
        before = allocated()
        load_ms = once(lambda e=engine, o=opts: e.pipeline(o))
        weights = allocated() - before
        llm = engine.pipeline(opts)[0].llm
        # lean False: the lean layer check failed on this card; the attention form is the one timed faster there
        lean = llm.model.attention_form if llm.model.lean else False
        rows: dict = {"load_ms": load_ms, "weights_bytes": weights, "lean_layers": lean}
        rows["attention_us"] = attention_times(llm.model.config, llm.dtype)
        for n in LENGTHS:
            pos, neg = prompts[n]
            rows[f"first_pair_{n}_ms"] = once(lambda e=engine, o=opts, p=pos, q=neg: conds(e, [p, q], o))
            rows[f"pair_{n}"] = timed(lambda e=engine, o=opts, p=pos, q=neg: conds(e, [p, q], o), repeats)
            rows[f"single_{n}"] = timed(lambda e=engine, o=opts, p=pos: conds(e, [p], o), repeats)
        weighted = options(llm_dir, adapter, adapter_precision=precision, emphasis="Original")
        pos, neg = prompts[77]
        heavy = "(" + pos.split(" ", 1)[0] + ":1.3) " + pos.split(" ", 1)[1]
        rows["pair_77_weighted_word"] = timed(
            lambda e=engine, o=weighted, h=heavy, q=neg: conds(e, [h, q], o), repeats
        )
        rows["peak_vram_bytes"] = peak_allocated() - before
        out[precision] = rows
        engine.unload()
        del engine
        release()
    return out


def memory_policies(llm_dir: Path, adapter: Path, prompts: dict, repeats: int) -> dict:
    from lib_llmcond.engine import MEMORY_POLICIES, Engine

    out = {}
    pos, neg = prompts[77]
    for policy in MEMORY_POLICIES:
        engine = Engine(cache_size=0)
        opts = options(llm_dir, adapter, memory=policy)
        first = once(lambda e=engine, o=opts: conds(e, [pos, neg], o))
        row = timed(lambda e=engine, o=opts: conds(e, [pos, neg], o), 3, warmup=0)
        row["first_call_ms"] = first
        row["allocated_after_bytes"] = allocated()
        out[policy] = row
        engine.unload()
        del engine
        release()
    return out


def breakdown(llm_dir: Path, adapter: Path, prompts: dict, repeats: int, out_dir: Path) -> dict:
    """Where one cond + uncond pair at 512 tokens spends its time: text -> plan on the CPU, the graph replay
    alone, the whole engine call; plus the eager run's CUDA kernels by time (``gpu_profile.txt``)."""
    from lib_llmcond import gpu_encode
    from lib_llmcond.engine import Engine
    from lib_llmcond.pipeline import TextOptions

    engine = Engine(cache_size=0)
    opts = options(llm_dir, adapter)
    pos, neg = prompts[512]
    conds(engine, [pos, neg], opts)  # load + capture
    pipe, _ = engine.pipeline(opts)
    llm, path, tok = pipe.llm, pipe.llm.text_path_for(None), pipe.llm.tokenizer

    def layout() -> object:
        batch = path.batch([path.tokenize(pos, tok), path.tokenize(neg, tok)], tok)
        return gpu_encode.plan(batch, pipe.budget, llm.config.causal, llm.usable_prefix(batch))

    plan = layout()
    rows = {"text_to_plan": timed(layout, repeats)}
    if llm.graphs._graphs:  # the pair's graph: the last one captured
        rows["graph_replay_only"] = timed(next(reversed(llm.graphs._graphs.values())).graph.replay, repeats)
    rows |= {
        "graph_run_with_copies": timed(
            lambda: llm.graphs.run(llm, pipe.adapter, plan, attention=False, tag=(pipe.precision,)), repeats
        ),
        "pipeline_encode": timed(lambda: pipe.encode([pos, neg], TextOptions(emphasis="None")), repeats),
        "engine_call": timed(lambda: conds(engine, [pos, neg], opts), repeats),
    }
    flat = gpu_encode.pack(plan).to(DEVICE)
    inputs = gpu_encode.unpack(flat, plan)
    if DEVICE.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            gpu_encode.forward(llm, pipe.adapter, inputs, plan.prefix, False)
            sync()
        events = prof.key_averages()
        cuda = torch.autograd.DeviceType.CUDA
        kernels = sum(e.count for e in events if getattr(e, "device_type", None) == cuda)
        rows["eager_kernels"] = {"count": kernels}  # kernels one eager LLM + adapter forward launches
        try:
            text = events.table(sort_by="self_cuda_time_total", row_limit=25)
        except Exception:
            text = events.table(sort_by="self_device_time_total", row_limit=25)
        (out_dir / "gpu_profile.txt").write_text(text)
    engine.unload()
    release()
    return rows


# -- the reference's path ------------------------------------------------------------------------------------
def reference(m, llm_dir: Path, adapter: Path, prompts: dict, repeats: int) -> dict:
    import transformers
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ref_oracle import RefAdapter

    from benchmarks.worker import reference_chain

    torch.backends.cuda.matmul.allow_tf32 = False  # the reference runs its adapter in plain fp32
    dtype = torch.float32 if DEVICE.type == "cpu" else torch.bfloat16
    t0 = time.perf_counter()
    if m.family == "t5gemma":
        model = transformers.T5GemmaEncoderModel.from_pretrained(
            llm_dir, is_encoder_decoder=False, dtype=dtype
        )
    else:
        model = transformers.Gemma3ForCausalLM.from_pretrained(llm_dir, dtype=dtype)
    model = model.to(DEVICE).eval()
    ad = RefAdapter(load_file(str(adapter))).to(DEVICE)
    sync()
    out: dict = {"load_ms": (time.perf_counter() - t0) * 1e3}
    one = reference_chain(m, model, ad, llm_dir, DEVICE)

    for n in LENGTHS:
        pos, neg = prompts[n]
        out[f"pair_{n}"] = timed(lambda p=pos, q=neg: [one(p), one(q)], repeats)
        out[f"single_{n}"] = timed(lambda p=pos: one(p), repeats)
    model.to("cpu")
    ad.to("cpu")
    release()
    torch.backends.cuda.matmul.allow_tf32 = True
    return out


# -- CUDA against the CPU ------------------------------------------------------------------------------------
def deviations(llm_dir: Path, adapter: Path, prompts: dict) -> dict:
    from lib_llmcond.engine import EncodeOptions, Engine

    texts = list(prompts[77])
    common = dict(llm=str(llm_dir), adapter=str(adapter), emphasis="None", memory="unload")
    cpu = Engine(cache_size=0)
    want = conds(cpu, texts, EncodeOptions(**common, device="cpu", llm_dtype="float32"))
    cpu.unload()
    out = {}
    for llm_dtype in ("float32", "bfloat16"):
        for precision in ("fp32", "tf32"):
            engine = Engine(cache_size=0)
            o = EncodeOptions(**common, device=str(DEVICE), llm_dtype=llm_dtype, adapter_precision=precision)
            got = conds(engine, texts, o)
            out[f"{llm_dtype}+{precision}"] = {
                "crossattn_max_abs": (got["crossattn"].cpu() - want["crossattn"]).abs().max().item(),
                "pooled_max_abs": (got["vector"][:, :1280].cpu() - want["vector"][:, :1280])
                .abs()
                .max()
                .item(),
            }
            engine.unload()
            del engine
            release()
    return out


# -- report --------------------------------------------------------------------------------------------------
def _ok(r: dict, part: str) -> dict | None:
    """A part's results, or None where it was not run or failed (its error is listed instead)."""
    got = r.get(part)
    return got if got and "error" not in got else None


def _ours_rows(name: str, r: dict, o: dict) -> list[str]:
    ref = _ok(r, "reference") or {}

    def ref_ms(key: str) -> str:
        return f"{ref[key]['median_ms']:.2f}" if key in ref else ""

    lines = []
    for n in LENGTHS:
        for kind in ("pair", "single"):
            key = f"{kind}_{n}"
            lines.append(
                f"| {name} | {kind} {r['tokens'][n]} tok | {o['tf32'][key]['median_ms']:.2f} | "
                f"{o['fp32'][key]['median_ms']:.2f} | {ref_ms(key)} |"
            )
    lines.append(
        f"| {name} | pair 77, one weighted word | {o['tf32']['pair_77_weighted_word']['median_ms']:.2f} | "
        f"{o['fp32']['pair_77_weighted_word']['median_ms']:.2f} | |"
    )
    for n in LENGTHS:
        lines.append(
            f"| {name} | first pair {n} after load (capture) | {o['tf32'][f'first_pair_{n}_ms']:.0f} | "
            f"{o['fp32'][f'first_pair_{n}_ms']:.0f} | |"
        )
    ref_load = f"{ref['load_ms']:.0f}" if "load_ms" in ref else ""
    lines.append(f"| {name} | load | {o['tf32']['load_ms']:.0f} | {o['fp32']['load_ms']:.0f} | {ref_load} |")
    lean = [_lean_cell(o[p].get("lean_layers"), o[p].get("attention_us")) for p in o]
    lines.append(f"| {name} | lean layer maths | {lean[0]} | {lean[1]} | |")
    lines.append(
        f"| {name} | peak VRAM / weights (GB) | {o['tf32']['peak_vram_bytes'] / 1e9:.2f} / "
        f"{o['tf32']['weights_bytes'] / 1e9:.2f} | {o['fp32']['peak_vram_bytes'] / 1e9:.2f} | |"
    )
    return lines


def _breakdown_rows(name: str, rows: dict) -> list[str]:
    lines = []
    for part, row in rows.items():
        value = f"{row['median_ms']:.2f}" if "median_ms" in row else f"{row['count']} kernels"
        lines.append(f"| {name} | pair 512 breakdown: {part} | {value} | | |")
    return lines


def _memory_rows(name: str, rows: dict) -> list[str]:
    return [
        f"| {name} | memory `{policy}`: pair 77 | {row['median_ms']:.1f} (first {row['first_call_ms']:.0f}, "
        f"{row['allocated_after_bytes'] / 1e9:.2f} GB left allocated) | | |"
        for policy, row in rows.items()
    ]


def _deviation_rows(name: str, rows: dict) -> list[str]:
    lines = []
    for choice, dev in rows.items():
        verdict = ""
        if choice == "float32+fp32":  # the exact mode: within 1e-4 of the CPU
            worst = max(dev["crossattn_max_abs"], dev["pooled_max_abs"])
            verdict = " (within 1e-4)" if worst <= 1e-4 else " (NOT within 1e-4)"
        lines.append(
            f"| {name} | CUDA {choice} vs CPU fp32: crossattn / pooled max abs | "
            f"{dev['crossattn_max_abs']:.2e} / {dev['pooled_max_abs']:.2e}{verdict} | | |"
        )
    return lines


def table(results: dict) -> str:
    """The Markdown table of whatever parts ran; a part that failed is one line with its error."""
    lines = [
        f"GPU check on {results['device']} (torch {results['torch']}, transformers {results['transformers']}); "
        "median ms of the steady state unless named.",
        "",
        "| model | row | ours bf16+tf32 | ours bf16+fp32 | reference (transformers, fp32 adapter) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        for part, rows in (
            ("ours", functools.partial(_ours_rows, name, r)),
            ("breakdown", functools.partial(_breakdown_rows, name)),
            ("memory", functools.partial(_memory_rows, name)),
            ("deviation", functools.partial(_deviation_rows, name)),
        ):
            if _ok(r, part) is not None:
                lines += rows(r[part])
        lines += [f"| {name} | {p} FAILED: {v['error']} | | | |" for p, v in r.items() if "error" in v]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from benchmarks.models import bench_models, ensure

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="gemma,t5gemma")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", default="", help="a subset of: ours,memory,reference,deviation,breakdown")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a smoke run)")
    args = parser.parse_args(argv)
    import transformers

    global DEVICE
    DEVICE = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # A1111 does this at start: our fp32 must hold anyway
    results: dict = {
        "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "models": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for key in args.models.split(","):
        m = bench_models(args.tiny)[key]
        t0 = time.perf_counter()
        llm_dir, adapter = ensure(m)
        print(f"[{key}] models ready in {time.perf_counter() - t0:.0f} s", flush=True)
        texts = {n: (prompt_of(llm_dir, n), prompt_of(llm_dir, n, shift=3)) for n in LENGTHS}
        r: dict = {"tokens": {n: texts[n][0][1] for n in LENGTHS}}
        prompts = {n: (texts[n][0][0], texts[n][1][0]) for n in LENGTHS}
        parts: dict[str, Callable[[], dict]] = {
            "ours": functools.partial(ours, llm_dir, adapter, prompts, args.repeats),
            "memory": functools.partial(memory_policies, llm_dir, adapter, prompts, args.repeats),
            "reference": functools.partial(reference, m, llm_dir, adapter, prompts, args.repeats),
            "deviation": functools.partial(deviations, llm_dir, adapter, prompts),
        }
        if key == args.models.split(",")[0]:
            parts["breakdown"] = functools.partial(breakdown, llm_dir, adapter, prompts, args.repeats, out)
        wanted = args.parts.split(",") if args.parts else list(parts)
        for part, fn in ((k, v) for k, v in parts.items() if k in wanted):
            t0 = time.perf_counter()
            try:
                r[part] = fn()
            except Exception as e:  # one run on a lent card: a failing part must not cost the others
                traceback.print_exc()
                r[part] = {"error": f"{type(e).__name__}: {e}"}
                release()
                torch.backends.cuda.matmul.allow_tf32 = True  # as the run started (a part may change it)
            print(f"[{key}] {part} in {time.perf_counter() - t0:.0f} s", flush=True)
        results["models"][m.name] = r
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2))  # kept if a later model fails
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
