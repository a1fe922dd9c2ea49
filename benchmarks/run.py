"""Our path vs the reference's transformers path, same random-weight models of the real shapes, same run.

    python -m benchmarks.run [--models gguf,gemma,t5gemma,qwen3] [--repeats 3] [--device cpu|cuda] [--tiny]

Each side runs in its own process (clean memory numbers); the table shows min-of-N times, memory and the
ratio ours / transformers (lower is better). JSON goes to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

ROWS = [
    ("load_cold_s", "load, first in process (files in the page cache; min over fresh processes)", "s"),
    ("load_warm_s", "load, again (page cache warm)", "s"),
    ("first_encode_s", "first encode after a cold load (77 tokens; min over fresh processes)", "s"),
    ("first_image_s", "first image: load + cond + uncond (WebUI path)", "s"),
    ("cli_77_s", "whole process `encode`, 77-token prompt", "s"),
    ("cli_512_s", "whole process `encode`, 512-token prompt", "s"),
    ("pack_s", "background packing after the first request", "s"),
    ("resident_after_load", "resident memory added by the load", "GB"),
    ("resident_after_encode", "resident memory after the encodes", "GB"),
    ("encode_16_s", "encode a 16-token prompt", "s"),
    ("encode_77_s", "encode a 77-token prompt", "s"),
    ("encode_256_s", "encode a 256-token prompt", "s"),
    ("encode_512_s", "encode a 512-token prompt", "s"),
    ("adapter_77_s", "adapter only (77 tokens, fp32)", "s"),
    ("engine_1_prompt_s", "whole chain, 1 prompt (~80 tokens)", "s"),
    ("engine_cond_uncond_s", "whole chain, cond + uncond", "s"),
    ("engine_4_prompts_s", "whole chain, 4 per-image prompts", "s"),
    ("cache_hit_s", "cache hit (same prompt, new size)", "ms"),
    ("peak_rss", "peak RSS while loading + encoding (above the bare process)", "GB"),
    ("weight_bytes", "weights on disk (file size for GGUF)", "GB"),
]


def warm_page_cache(paths: list[Path]) -> None:
    """Read the model files once, so each side's first load finds them in the page cache (the side that ran
    second would otherwise get that for free)."""
    for path in paths:
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                with f.open("rb") as fh:
                    while fh.read(64 * 2**20):
                        pass


def first_use_rows(model: str, files: list[Path], args: argparse.Namespace) -> tuple[dict, dict]:
    """Load and first encode, min over ``repeats`` fresh processes per side, interleaved: (ours, hf)."""
    mins: dict[str, dict] = {"ours": {}, "hf": {}}
    for _ in range(args.repeats):
        for side, rows in mins.items():
            warm_page_cache(files)
            got = run_side(side, model, args, ["--first-use"])
            if "error" in got:
                return {}, {}
            for key, value in got.items():
                rows[key] = min(value, rows.get(key, value))
    return mins["ours"], mins["hf"]


def run_side(side: str, model: str, args: argparse.Namespace, extra: list[str] | None = None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.worker", "--side", side, "--model", model]
    cmd += ["--repeats", str(args.repeats), "--device", args.device] + (["--tiny"] if args.tiny else [])
    cmd += extra or []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


CLI_LENGTHS = (77, 512)


def whole_process(m, llm_dir: Path, adapter: Path, repeats: int) -> tuple[dict, dict]:
    """Min wall time of ``python -m lib_llmcond encode`` and of the reference's process
    (``benchmarks.reference_encode``) on one prompt, runs interleaved; (ours, transformers)."""
    from benchmarks.worker import prompt_of

    ours: dict = {}
    hf: dict = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        for n in CLI_LENGTHS:
            text = prompt_of(llm_dir, m.family, n)
            common = ["--llm", str(llm_dir), "--adapter", str(adapter), "--prompt", text]
            cmds = {
                "ours": [sys.executable, "-m", "lib_llmcond", "encode", *common, "--out", f"{tmp}/o.st"],
                "hf": [
                    sys.executable,
                    "-m",
                    "benchmarks.reference_encode",
                    "--family",
                    m.family,
                    *common,
                    "--out",
                    f"{tmp}/r.st",
                ],
            }
            times: dict[str, list[float]] = {"ours": [], "hf": []}
            for _ in range(repeats):
                for side, cmd in cmds.items():
                    t0 = time.perf_counter()
                    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
                    times[side].append(time.perf_counter() - t0)
            ours[f"cli_{n}_s"], hf[f"cli_{n}_s"] = min(times["ours"]), min(times["hf"])
    return ours, hf


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "GB":
        return f"{value / 1e9:.2f}"
    if unit == "ms":
        return f"{value * 1000:.1f}"
    return f"{value:.3f}"


def table(name: str, ours: dict, hf: dict) -> str:
    lines = [
        f"### {name}",
        "",
        "| row | unit | ours | transformers | ours / transformers |",
        "|---|---|---|---|---|",
    ]
    for key, label, unit in ROWS:
        a, b = ours.get(key), hf.get(key)
        if a is None and b is None:
            continue
        ratio = f"{a / b:.2f}x" if a is not None and b else "-"
        lines.append(f"| {label} | {unit} | {fmt(a, unit)} | {fmt(b, unit)} | {ratio} |")
    if "peak_rss" in ours and ours.get("weight_bytes"):
        lines.append(
            f"| peak RSS / weight bytes (ours) | | {ours['peak_rss'] / ours['weight_bytes']:.2f} | | |"
        )
    for side, res in (("ours", ours), ("transformers", hf)):
        if "error" in res:
            lines.append(f"\n{side} failed: {res['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gguf,gemma,t5gemma,qwen3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke test of the harness")
    parser.add_argument(
        "--no-whole-process",
        dest="whole_process",
        action="store_false",
        help="skip the whole-process `encode` rows (one process per run and side)",
    )
    args = parser.parse_args(argv)
    from benchmarks.models import bench_models, ensure

    models = bench_models(args.tiny)
    report, out = [], {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = (
        RESULTS / f"bench-{args.device}{'-tiny' if args.tiny else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    for key in [k.strip() for k in args.models.split(",") if k.strip()]:
        files = [p for p in ensure(models[key]) if p is not None]  # written once, outside the timed runs
        sides = {}
        for side in ("ours", "hf"):
            warm_page_cache(files)
            sides[side] = run_side(side, key, args)
        ours, hf = sides["ours"], sides["hf"]
        if "error" not in ours and "error" not in hf:  # first use: min over fresh processes, not one sample
            first_ours, first_hf = first_use_rows(key, files, args)
            ours.update(first_ours)
            hf.update(first_hf)
        adapter = ensure(models[key])[1]
        if adapter is not None and args.whole_process and "error" not in ours and "error" not in hf:
            cli_ours, cli_hf = whole_process(models[key], files[0], adapter, args.repeats)
            ours.update(cli_ours)
            hf.update(cli_hf)
        out[key] = {"ours": ours, "transformers": hf}
        report.append(table(f"{models[key].name} ({args.device})", ours, hf))
        print(report[-1] + "\n", flush=True)
        path.write_text(json.dumps(out, indent=2))  # after each model: a long run cut short keeps its rows
    print(f"JSON: {path}")
    return 0 if all("error" not in v["ours"] for v in out.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
