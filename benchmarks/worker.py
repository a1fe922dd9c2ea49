"""One side of one benchmark in a fresh process (so memory numbers are its own); prints one JSON line.

python -m benchmarks.worker --side ours|hf --model gemma [--tiny] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

LENGTHS = (16, 77, 256, 512)
# whole-chain rows: ~80-90 prompt tokens with the tiny tokenizer's pieces, a typical short negative prompt
CHAIN_PROMPT = (
    "a girl with long silver hair stands in a field of flowers under a blue sky looking at the viewer " * 8
).strip()
CHAIN_NEGATIVE = "lowres, bad anatomy"
CHAIN_VARIANTS = ("", " red", " blue", " green")
DTYPE = torch.bfloat16


def best(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Minimum wall time over ``repeats`` runs (after one warm-up), seconds."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (the interpreter and torch included; callers subtract
    the resident memory measured before loading)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def warm_runtime(device: str) -> int:
    """Run torch's CPU kernels that any encode uses once (bf16/fp32 linears dense and oneDNN-packed,
    attention) before the resident-memory baseline, so memory rows count the model, not the runtime that
    torch builds lazily (library code paged in, oneDNN kernels, thread pools: ~30 MB here). Returns the
    bytes that took; both sides get it."""
    import torch.nn.functional as F

    if device != "cpu":
        return 0
    before = rss_bytes()
    with torch.inference_mode():
        for dtype in (torch.bfloat16, torch.float32):
            for n in LENGTHS:
                x, w = torch.randn(1, n, 640).to(dtype), torch.randn(1024, 640).to(dtype)
                F.linear(x, w)
                packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
                torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
                q = torch.randn(1, 4, n, 256).to(dtype)
                F.scaled_dot_product_attention(q, q, q)
    gc.collect()
    return rss_bytes() - before


def ids_of(length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + length)
    return torch.randint(3, min(vocab, 50_000), (1, length), generator=g)


def weight_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def template_ids(llm_dir: Path, n: int, vocab: int) -> tuple[torch.Tensor, int]:
    """The reference's Gemma-3 chat text around ``n`` prompt tokens: ids [1, 27 + n + 5] and the skip."""
    from lib_llmcond.text.paths import GemmaChatPath
    from lib_llmcond.text.tokenizer import load_tokenizer

    path, tok = GemmaChatPath(), load_tokenizer(llm_dir)
    head, tail = tok.encode(path.prefix).ids, tok.encode(path.suffix).ids
    ids = torch.cat([torch.tensor([head]), ids_of(n, vocab), torch.tensor([tail])], dim=1)
    return ids, len(head)


def prompt_ids(m, llm_dir: Path, n: int, vocab: int) -> tuple[torch.Tensor, int]:
    """What each side runs for an ``n``-token prompt: the chat template for Gemma-3 (the reference's text
    path), the prompt alone for the others. Returns the ids and the template's shared head length."""
    if m.family == "gemma3" and llm_dir.is_dir():
        return template_ids(llm_dir, n, vocab)
    return ids_of(n, vocab), 0


def padded_to_512(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's T5Gemma layout of one row of at most 512 ids: left-padded to 512, and its mask."""
    k = ids.shape[1]
    full = torch.zeros(1, 512, dtype=torch.long, device=ids.device)
    full[:, 512 - k :] = ids
    return full, (torch.arange(512, device=ids.device) >= 512 - k).long()[None]


def prompt_of(llm_dir: Path, family: str, n: int) -> str:
    """A prompt whose tokens reaching the adapter number about ``n`` (words of the chain prompt, cycled)."""
    from lib_llmcond.text.paths import text_path
    from lib_llmcond.text.tokenizer import load_tokenizer

    tok, path, words = load_tokenizer(llm_dir), text_path(family), CHAIN_PROMPT.split()
    k = n // 2
    while True:
        text = " ".join(words[i % len(words)] for i in range(k))
        row = path.tokenize(text, tok)
        if row.adapter_end - row.adapter_start >= n:
            return text
        k += 1


def chain_rows(encode: Callable[[list[str]], object], repeats: int, device: str) -> dict:
    """The whole-chain rows (1 prompt, cond + uncond, 4 prompts) of ``encode(texts)``; each run gets new texts,
    so nothing is served from a cache."""
    counter = [0]

    def fresh(texts: list[str]) -> Callable[[], object]:
        def run() -> object:
            counter[0] += 1
            return encode([f"{t} {counter[0]}" for t in texts])

        return run

    return {
        "engine_1_prompt_s": best(fresh([CHAIN_PROMPT]), repeats, device),
        "engine_cond_uncond_s": best(fresh([CHAIN_PROMPT, CHAIN_NEGATIVE]), repeats, device),
        "engine_4_prompts_s": best(fresh([CHAIN_PROMPT + s for s in CHAIN_VARIANTS]), repeats, device),
    }


# -- our path ------------------------------------------------------------------------------------------------
def run_ours(m, llm_dir: Path, adapter: Path | None, repeats: int, device: str) -> dict:
    from lib_llmcond.encoders.llm import _gguf_support, is_gguf, load_llm

    if is_gguf(llm_dir):  # the GGUF reader, tokenizer rebuild and sentencepiece are runtime, not the model
        _gguf_support(llm_dir)
        import sentencepiece  # noqa: F401
    out: dict = {"runtime_bytes": warm_runtime(device)}
    base = rss_bytes()
    t0 = time.perf_counter()
    llm = load_llm(llm_dir, dtype=DTYPE, device=device)
    out["load_cold_s"] = time.perf_counter() - t0
    out["resident_after_load"] = rss_bytes() - base
    encode = _ours_encoder(m, llm, llm_dir, device)
    t0 = time.perf_counter()
    encode(77)()
    out["first_encode_s"] = time.perf_counter() - t0
    del llm, encode
    gc.collect()
    t0 = time.perf_counter()
    llm = load_llm(llm_dir, dtype=DTYPE, device=device)
    out["load_warm_s"] = time.perf_counter() - t0
    encode = _ours_encoder(m, llm, llm_dir, device)
    encode(16)()  # the first request; the linears are packed after it, between requests
    t0 = time.perf_counter()
    llm.pack_when_idle()
    llm.wait_packed()
    out["pack_s"] = time.perf_counter() - t0
    for n in LENGTHS:
        out[f"encode_{n}_s"] = best(encode(n), repeats, device)
    out["peak_rss"] = peak_rss_bytes() - base
    out["resident_after_encode"] = rss_bytes() - base
    del llm, encode
    gc.collect()
    if adapter is not None:
        out.update(_ours_engine_rows(llm_dir, adapter, repeats, device))
    else:
        out["first_image_s"] = _first_image(
            lambda: _ours_encoder(m, load_llm(llm_dir, dtype=DTYPE, device=device), llm_dir, device)
        )
    return out


def _first_image(load: Callable[[], Callable[[int], Callable[[], object]]]) -> float:
    """LLM-only models: load + the LLM stage of a cond (77 tokens) and an uncond (16 tokens) prompt."""
    t0 = time.perf_counter()
    encode = load()
    encode(77)()
    encode(16)()
    return time.perf_counter() - t0


def _ours_encoder(m, llm, llm_dir: Path, device: str) -> Callable[[int], Callable[[], object]]:
    """n -> a call running our LLM stage on an n-token prompt (the cached template head included)."""
    from lib_llmcond.text.paths import TokenBatch

    def for_length(n: int) -> Callable[[], object]:
        ids, head = prompt_ids(m, llm_dir, n, llm.config.vocab_size)
        mask = torch.ones_like(ids)
        # the T5Gemma path runs the real tokens at the positions of the reference's padded layout
        first = 0 if llm.config.causal else 512 - n
        pos = torch.arange(first, first + ids.shape[1])[None]
        batch = TokenBatch(ids, mask, pos, [], [], False, shared_prefix=head)

        def run() -> object:
            with torch.inference_mode():
                return llm.hidden_states(batch)

        return run

    return for_length


def _ours_engine_rows(llm_dir: Path, adapter: Path, repeats: int, device: str) -> dict:
    from lib_llmcond.adapters.loader import load_adapter
    from lib_llmcond.engine import EncodeOptions, Engine

    out: dict = {}
    opts = EncodeOptions(
        llm=str(llm_dir), adapter=str(adapter), device=device, memory="keep", emphasis="None"
    )
    t0 = time.perf_counter()  # the WebUI's first image: load both models, then cond + uncond in one call
    Engine().get_conditioning([CHAIN_PROMPT, CHAIN_NEGATIVE], opts, width=1024, height=1024)
    out["first_image_s"] = time.perf_counter() - t0
    gc.collect()
    ad = load_adapter(adapter, device=device)
    h = torch.randn(1, 77, ad.llm_dim, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        out["adapter_77_s"] = best(lambda f=ad: f(h), repeats, device)
    del ad
    engine = Engine(cache_size=1024)
    prompt = CHAIN_PROMPT
    engine.get_conditioning([CHAIN_NEGATIVE], opts, width=1024, height=1024)  # load; pack after it
    engine.wait_packed()
    out.update(
        chain_rows(
            lambda texts: engine.get_conditioning(texts, opts, width=1024, height=1024), repeats, device
        )
    )
    engine.get_conditioning([prompt], opts, width=1024, height=1024)
    sizes = iter(range(512, 4096, 8))
    out["cache_hit_s"] = best(
        lambda: engine.get_conditioning([prompt], opts, width=next(sizes), height=1024), repeats, device
    )
    return out


# -- the reference's transformers path -----------------------------------------------------------------------
def hf_load(m, llm_dir: Path, device: str):
    """The reference's model class, loaded as it loads it."""
    import transformers

    if llm_dir.suffix == ".gguf":  # transformers dequantizes every tensor to dense
        return transformers.AutoModelForCausalLM.from_pretrained(
            llm_dir.parent, gguf_file=llm_dir.name, dtype=DTYPE
        ).to(device)
    if m.family == "t5gemma":
        return transformers.T5GemmaEncoderModel.from_pretrained(
            llm_dir, is_encoder_decoder=False, dtype=DTYPE
        ).to(device)
    cls = {"gemma3": transformers.Gemma3ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM}[m.family]
    return cls.from_pretrained(llm_dir, dtype=DTYPE).to(device)


def first_use(side: str, m, llm_dir: Path, device: str) -> dict:
    """A fresh process's load and first 77-token encode (run.py repeats it in new processes: a first use can
    be measured once per process, and one sample on a shared machine is noise)."""
    warm_runtime(device)
    t0 = time.perf_counter()
    if side == "ours":
        from lib_llmcond.encoders.llm import load_llm

        llm = load_llm(llm_dir, dtype=DTYPE, device=device)
        load_s = time.perf_counter() - t0
        encode = _ours_encoder(m, llm, llm_dir, device)
    else:
        model = hf_load(m, llm_dir, device).eval()
        load_s = time.perf_counter() - t0
        encode = _hf_encoder(m, model, llm_dir, device)
    t0 = time.perf_counter()
    encode(77)()
    return {"load_cold_s": load_s, "first_encode_s": time.perf_counter() - t0}


def run_hf(m, llm_dir: Path, adapter: Path | None, repeats: int, device: str) -> dict:
    def load():
        return hf_load(m, llm_dir, device)

    out: dict = {"runtime_bytes": warm_runtime(device)}
    base = rss_bytes()
    t0 = time.perf_counter()
    model = load().eval()
    out["load_cold_s"] = time.perf_counter() - t0
    out["resident_after_load"] = rss_bytes() - base
    t0 = time.perf_counter()
    _hf_encoder(m, model, llm_dir, device)(77)()
    out["first_encode_s"] = time.perf_counter() - t0
    del model
    gc.collect()
    t0 = time.perf_counter()
    model = load().eval()
    out["load_warm_s"] = time.perf_counter() - t0
    encode = _hf_encoder(m, model, llm_dir, device)
    for n in LENGTHS:
        out[f"encode_{n}_s"] = best(encode(n), repeats, device)
    out["peak_rss"] = peak_rss_bytes() - base
    out["resident_after_encode"] = rss_bytes() - base
    if adapter is None:
        del model, encode
        gc.collect()
        out["first_image_s"] = _first_image(lambda: _hf_encoder(m, load().eval(), llm_dir, device))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from ref_oracle import RefAdapter
        from safetensors.torch import load_file

        del model, encode
        gc.collect()
        t0 = time.perf_counter()  # the first image: load both models, then cond and uncond, as its nodes do
        model = load().eval()
        ad = RefAdapter(load_file(str(adapter))).to(device)
        one = reference_chain(m, model, ad, llm_dir, device)
        one(CHAIN_PROMPT), one(CHAIN_NEGATIVE)
        out["first_image_s"] = time.perf_counter() - t0
        hidden = model.config.encoder.hidden_size if m.family == "t5gemma" else model.config.hidden_size
        h = torch.randn(1, 77, hidden, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            out["adapter_77_s"] = best(lambda: ad(h), repeats, device)
        out.update(_hf_chain_rows(m, model, ad, llm_dir, repeats, device))
    return out


def reference_chain(m, model, ad, llm_dir: Path, device) -> Callable[[str], object]:
    """The reference's whole chain for one prompt, as its nodes run it: template -> transformers forward ->
    skip -> adapter (T5Gemma: padded to 512, mask to the adapter), one prompt at a time."""
    from lib_llmcond.text.paths import text_path
    from lib_llmcond.text.tokenizer import load_tokenizer

    tok, path = load_tokenizer(llm_dir), text_path(m.family)

    def one(text: str) -> object:
        row = path.tokenize(text, tok)
        ids = torch.tensor([row.ids], device=device)
        with torch.no_grad():
            if m.family == "t5gemma":
                full, mask = padded_to_512(ids[:, :512])
                h = model(input_ids=full, attention_mask=mask).last_hidden_state
                return ad(h.float(), mask)
            h = model(ids, output_hidden_states=True).hidden_states[-1][:, row.adapter_start :]
            return ad(h.float())

    return one


def _hf_chain_rows(m, model, ad, llm_dir: Path, repeats: int, device: str) -> dict:
    """The reference's whole-chain rows on the same prompts as ours."""
    one = reference_chain(m, model, ad, llm_dir, device)
    return chain_rows(lambda texts: [one(t) for t in texts], repeats, device)


def _hf_encoder(m, model, llm_dir: Path, device: str) -> Callable[[int], Callable[[], object]]:
    """n -> a call running the reference's transformers forward on an n-token prompt, as it runs it: the
    whole chat text through ``Gemma3ForCausalLM`` (LM head included) for Gemma-3, the prompt padded to 512
    with its mask for T5Gemma."""
    vocab = model.config.vocab_size if m.family != "t5gemma" else model.config.encoder.vocab_size

    def for_length(n: int) -> Callable[[], object]:
        ids, _ = prompt_ids(m, llm_dir, n, vocab)
        ids = ids.to(device)
        if m.family == "t5gemma":  # the reference pads every prompt to 512 and passes the mask
            full, mask = padded_to_512(ids)

            def run() -> object:
                with torch.no_grad():
                    return model(input_ids=full, attention_mask=mask).last_hidden_state

            return run

        def run_causal() -> object:
            with torch.no_grad():
                return model(ids, output_hidden_states=True).hidden_states[-1]

        return run_causal

    return for_length


def main(argv: list[str] | None = None) -> None:
    from benchmarks.models import bench_models, ensure

    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["ours", "hf"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--first-use", action="store_true", help="only the load and the first encode")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    m = bench_models(args.tiny)[args.model]
    llm_dir, adapter = ensure(m)
    if args.first_use:
        print(json.dumps(first_use(args.side, m, llm_dir, args.device)))
        return
    run = run_ours if args.side == "ours" else run_hf
    result = run(m, llm_dir, adapter, args.repeats, args.device)
    result["weight_bytes"] = weight_bytes(llm_dir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
