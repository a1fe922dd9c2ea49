"""``python -m lib_llmcond encode|info|demo``: the library without any WebUI.

``encode`` is a contract other tools rely on: it writes fp32 ``crossattn`` [1,308,2048], ``pooled`` [1,1280] and
``vector`` [1,2816] to a safetensors file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from lib_llmcond.errors import LlmcondError


def _encode(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from lib_llmcond.engine import EncodeOptions, Engine

    opts = EncodeOptions(
        llm=args.llm,
        adapter=args.adapter,
        emphasis="None" if args.emphasis == "off" else args.emphasis,
        emphasis_syntax=args.emphasis_syntax,
        break_mode=args.break_mode,
        system_prompt=args.system_prompt,
        chunk=args.chunk,
        device=args.device,
        llm_dtype=args.llm_dtype,
        memory="keep",
        adapter_loras=tuple(args.adapter_lora),
    )
    reports: list = []
    engine = Engine(pack_when_idle=False, map_adapters=True)  # one shot: packing could never pay back
    cond = engine.get_conditioning(
        [args.prompt], opts, width=args.width, height=args.height, is_negative=False, reports=reports
    )
    for r in engine.adapter_lora_results(opts):
        if r.applied:
            print(f"adapter LoRA {r.name}: {r.modules} modules merged at {r.multiplier:g}")
        elif r.error:
            print(f"llmcond: {r.describe()}", file=sys.stderr)
    pooled = cond["vector"][:, :1280].clone()
    tensors = {
        "crossattn": cond["crossattn"].contiguous(),
        "pooled": pooled,
        "vector": cond["vector"].contiguous(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().cpu().contiguous() for k, v in tensors.items()}, args.out)
    print(f"{args.out}: crossattn {tuple(tensors['crossattn'].shape)}, tokens {reports[0].describe()}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from lib_llmcond.info import describe_path

    info = describe_path(Path(args.path))
    print(
        json.dumps(info, indent=2, default=str)
        if args.json
        else "\n".join(f"{k}: {v}" for k, v in info.items())
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    print("llmcond demo: TINY RANDOM models (not real weights), built only to exercise the whole chain")
    if args.dir:
        _run_demo(Path(args.dir))
        print(f"models written to {args.dir}")
        return 0
    with tempfile.TemporaryDirectory(prefix="llmcond-demo-", ignore_cleanup_errors=True) as root:
        _run_demo(Path(root))
    print("temporary models removed (keep them with --dir)")
    return 0


def _run_demo(root: Path) -> None:
    from lib_llmcond.engine import EncodeOptions, Engine
    from lib_llmcond.tiny import build_demo_models

    llm_dir, adapter_file = build_demo_models(root)
    opts = EncodeOptions(llm=str(llm_dir), adapter=str(adapter_file), device="cpu", memory="keep")
    engine = Engine()
    prompts = [
        "## Character 1\nA (red:1.3) fox sitting in the snow, looking at the viewer.",
        "masterpiece, 1girl, [simple background] BREAK night sky, stars",
        "",
    ]
    for prompt in prompts:
        reports: list = []
        t0 = time.perf_counter()
        cond = engine.get_conditioning([prompt], opts, width=1024, height=1024, reports=reports)
        ms = (time.perf_counter() - t0) * 1000
        print(
            f"  {prompt[:48]!r:52} -> crossattn {tuple(cond['crossattn'].shape)}, vector "
            f"{tuple(cond['vector'].shape)}, tokens {reports[0].describe()}, {ms:.0f} ms"
        )
    engine.unload()  # the models map their files: release them before the folder goes


def lora_arg(value: str) -> tuple[str, float]:
    """``PATH`` or ``PATH:M`` (a path may hold colons itself, e.g. ``C:\\x.safetensors``)."""
    path, sep, multiplier = value.rpartition(":")
    if sep and path:
        try:
            return path, float(multiplier)
        except ValueError:
            pass
    return value, 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib_llmcond", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="encode one prompt to SDXL conditioning (safetensors)")
    enc.add_argument("--llm", required=True, help="an HF model directory or a .gguf file")
    enc.add_argument("--adapter", required=True, help="the adapter file (.safetensors)")
    enc.add_argument("--prompt", required=True)
    enc.add_argument("--width", type=int, default=1024)
    enc.add_argument("--height", type=int, default=1024)
    enc.add_argument(
        "--emphasis",
        default="Original",
        choices=["off", "Ignore", "Original", "No norm"],
        help="as EncodeOptions (default Original, the WebUIs' default); off: the text reaches the LLM untouched",
    )
    enc.add_argument("--emphasis-syntax", default="full", choices=["full", "weights_only"])
    enc.add_argument("--break-mode", default="paragraphs", choices=["paragraphs", "blocks"])
    enc.add_argument(
        "--chunk", action="store_true", help="split prompts past the 512-token budget into pieces"
    )
    enc.add_argument("--system-prompt", default=None, help="replace the reference's system prompt")
    enc.add_argument("--llm-dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    enc.add_argument("--device", default="cpu")
    enc.add_argument(
        "--adapter-lora",
        action="append",
        default=[],
        type=lora_arg,
        metavar="PATH[:M]",
        help="merge the lora_te_* part of this LoRA into the adapter at multiplier M (default 1); repeatable",
    )
    enc.add_argument("--out", required=True)
    enc.set_defaults(func=_encode)

    info = sub.add_parser("info", help="what a model or adapter file is")
    info.add_argument("path")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_info)

    demo = sub.add_parser("demo", help="build tiny random models and run the whole chain")
    demo.add_argument(
        "--dir",
        "--out-dir",
        dest="dir",
        default=None,
        help="where to write (and keep) the tiny models; default: a temporary folder, removed afterwards",
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LlmcondError as e:
        print(f"llmcond: {e}", file=sys.stderr)
        return 2
