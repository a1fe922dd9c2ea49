"""Smoke test of the benchmark harness on tiny shapes (not a timed test: it checks the table and JSON exist)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_harness_runs_on_tiny_models(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--tiny", "--models", "gemma", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| encode a 512-token prompt | s |" in proc.stdout and "ours / transformers" in proc.stdout
    path = Path(proc.stdout.strip().splitlines()[-1].removeprefix("JSON: "))
    data = json.loads(path.read_text())
    assert {"ours", "transformers"} <= set(data["gemma"]) and data["gemma"]["ours"]["encode_77_s"] > 0
    assert "| first encode after a cold load (77 tokens; min over fresh processes) | s |" in proc.stdout
    ran = [side for side in ("ours", "transformers") if "error" not in data["gemma"][side]]
    assert "ours" in ran  # the transformers side fails where the pins lack its model classes (A1111's)
    assert all(data["gemma"][side]["first_encode_s"] > 0 for side in ran)
    path.unlink()


def test_adapter_lora_benchmark_runs_on_a_tiny_adapter(tmp_path):
    out = tmp_path / "lora.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.adapter_lora",
            "--preset",
            "tiny",
            "--rank",
            "4",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert (
        "| merge_s |" in proc.stdout and data["targets"] == 24
    )  # 2 blocks x (q, k, v, out, mlp x2) + 12 outside and data["merge_s"] > 0


def test_lean_layers_launch_fewer_kernels():
    """The accelerator's lean layers keep a gemma-3-1b pair at 512 tokens within a kernel budget (the GPU is
    launch-bound there: ``benchmarks/kernel_count.py``)."""
    from benchmarks.kernel_count import count, narrowed
    from benchmarks.models import bench_models

    m = bench_models()["gemma"]
    lean = sum(count(narrowed(m), "gemma", 2, 512, 27, lean=True).values())
    op_by_op = sum(count(narrowed(m), "gemma", 2, 512, 27, lean=False).values())
    layers = m.config["num_hidden_layers"]
    assert lean <= 26 * layers + 80  # the adapter's ~70 and a few per forward
    assert lean < 0.4 * op_by_op


def test_gpu_check_reports_the_parts_that_ran_when_one_fails(tmp_path, monkeypatch, capsys):
    """The one-shot check on the CPU with tiny models: a failing part is one line with its error, and the
    parts after it still run and print (the check runs once on a lent card)."""
    from benchmarks import gpu_check

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "memory_policies", broken)
    monkeypatch.setattr(gpu_check, "DEVICE", gpu_check.DEVICE)  # main() sets it; put it back afterwards
    argv = ["--device", "cpu", "--tiny", "--repeats", "1", "--models", "gemma", "--out", str(tmp_path)]
    gpu_check.main([*argv, "--parts", "memory,deviation"])
    out = capsys.readouterr().out
    assert "| tiny-gemma | memory FAILED: RuntimeError: boom |" in out
    assert "| tiny-gemma | CUDA float32+fp32 vs CPU fp32: crossattn / pooled max abs |" in out
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["models"]["tiny-gemma"]["memory"] == {"error": "RuntimeError: boom"}


def test_gpu_check_shows_the_attention_forms_timed(monkeypatch):
    import torch

    from benchmarks import gpu_check
    from lib_llmcond.encoders import lean_check
    from lib_llmcond.encoders.config import config_from_hf
    from lib_llmcond.tiny.llm import TINY

    monkeypatch.setattr(gpu_check, "DEVICE", torch.device("cpu"))
    monkeypatch.setattr(lean_check, "TIMED_TOKENS", 32)
    times = gpu_check.attention_times(config_from_hf({**TINY["gemma3"], "vocab_size": 512}), torch.float32)
    assert list(times) == ["sdpa"] and times["sdpa"] > 0  # off CUDA only the fused form is tried
    cell = gpu_check._lean_cell("gemm", {"sdpa": 62.0, "gemm": 25.4})
    assert cell == "on, attention: gemm (sdpa 62 us, gemm 25 us)"
    assert gpu_check._lean_cell(False).startswith("OFF")
