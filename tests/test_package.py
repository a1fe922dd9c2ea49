"""The installable package: public names, the import graph (no test fixtures, no WebUI in the library), one
emphasis default, and a built wheel installed into a fresh venv running ``llmcond demo`` / ``llmcond info``."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import site
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib_llmcond"
DEMO_ONLY = {("lib_llmcond.cli", "_run_demo")}  # (module, function) allowed to import lib_llmcond.tiny


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[str, str | None]]:
    """(absolute module imported, enclosing top-level function or None) for every import in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for top in tree.body:
        func = top.name if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef) else None
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                found += [(a.name, func) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                found.append((base, func))
                found += [(f"{base}.{a.name}", func) for a in node.names]  # `from pkg import submodule`
    return found


def library_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def test_the_import_walker_resolves_relative_and_nested_imports():
    found = imported_modules(PACKAGE / "adapters" / "perceiver.py")
    assert ("lib_llmcond.errors", None) in found and ("lib_llmcond.adapters.base", None) in found
    tiny = imported_modules(PACKAGE / "tiny" / "adapter.py")
    assert ("lib_llmcond.adapters.perceiver", None) in tiny  # `from ..adapters import perceiver`
    cli = imported_modules(PACKAGE / "cli.py")
    assert ("lib_llmcond.tiny", "_run_demo") in cli  # the demo's import is found, inside its function


def test_only_the_demo_imports_the_tiny_models():
    offenders = []
    for path in library_files():
        name = module_name(path)
        if within(name, "lib_llmcond.tiny"):
            continue
        for target, func in imported_modules(path):
            if within(target, "lib_llmcond.tiny") and (name, func) not in DEMO_ONLY:
                offenders.append(f"{path.relative_to(ROOT)} ({func or 'module level'}) imports {target}")
    assert not offenders, offenders


def test_nothing_outside_webui_imports_webui_or_a_host():
    """The wheel leaves ``lib_llmcond/webui`` out: the library must not need it."""
    hosts = ("lib_llmcond.webui", "modules", "gradio", "backend", "ldm_patched", "sgm")
    offenders = []
    for path in library_files():
        name = module_name(path)
        if within(name, "lib_llmcond.webui"):
            continue
        for target, _ in imported_modules(path):
            if any(within(target, h) for h in hosts):
                offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not offenders, offenders


def test_public_names_resolve_and_import_lib_llmcond_stays_light():
    code = (
        "import sys, lib_llmcond\n"
        "light = 'torch' not in sys.modules\n"
        "from lib_llmcond import *\n"
        "print(light, sorted(lib_llmcond.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    light, names = out.stdout.split(" ", 1)
    assert light == "True", "import lib_llmcond imported torch"
    import lib_llmcond

    assert "sdxl_prompt_embeds" in names and "Engine" in names
    assert set(lib_llmcond.__all__) == {"__version__", *lib_llmcond._EXPORTS}
    for name in lib_llmcond.__all__:
        if name == "__version__":
            continue
        value = getattr(lib_llmcond, name)
        assert value is getattr(import_module(lib_llmcond._EXPORTS[name]), name)
        assert name in dir(lib_llmcond)
    with pytest.raises(AttributeError):
        _ = lib_llmcond.no_such_name
    from lib_llmcond import safetensors_file  # submodules still import the normal way

    assert safetensors_file.__name__ == "lib_llmcond.safetensors_file"


def test_one_emphasis_default_for_cli_and_python():
    from lib_llmcond.cli import build_parser
    from lib_llmcond.engine import EncodeOptions
    from lib_llmcond.pipeline import TextOptions

    args = build_parser().parse_args(
        ["encode", "--llm", "x", "--adapter", "y", "--prompt", "p", "--out", "o"]
    )
    defaults = {f.name: f.default for f in dataclasses.fields(EncodeOptions)}
    text_defaults = {f.name: f.default for f in dataclasses.fields(TextOptions)}
    assert args.emphasis == defaults["emphasis"] == text_defaults["emphasis"] == "Original"


# ---- the wheel ---------------------------------------------------------------------------------------------
def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path]:
    """A clean copy of the repository built into a wheel and installed into a fresh venv without network;
    torch and the other dependencies come from this environment through a .pth file."""
    pytest.importorskip("setuptools", minversion="77")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(".venv*", ".git", "__pycache__", "build", "*.egg-info", ".*cache*"),
    )
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp / "dist"), str(src)], cwd=tmp)  # fmt: skip
    wheel = next((tmp / "dist").glob("llmcond-*.whl"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    purelib = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).strip()
    )
    (purelib / "_parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp)  # fmt: skip
    return venv, tmp


def clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp / "tmpdir")
    return env


@pytest.mark.slow
def test_wheel_installs_the_library_with_its_data(wheel_venv):
    venv, tmp = wheel_venv
    code = (
        "import json, importlib.util, lib_llmcond\n"
        "from pathlib import Path\n"
        "from lib_llmcond.prompt.templates import list_templates\n"
        "pkg = Path(lib_llmcond.__file__).parent\n"
        "print(json.dumps({'file': lib_llmcond.__file__, 'templates': [str(t.path) for t in list_templates()],\n"
        "  'typed': (pkg / 'py.typed').is_file(), 'webui': importlib.util.find_spec('lib_llmcond.webui') is not None,\n"
        "  'diffusers_sdxl': importlib.util.find_spec('lib_llmcond.diffusers_sdxl') is not None}))\n"
    )
    info = json.loads(run([str(venv / "bin" / "python"), "-c", code], cwd=tmp, env=clean_env(tmp)))
    installed = Path(info["file"]).parent
    assert installed.is_relative_to(venv), info["file"]  # not the repository's copy
    assert len(info["templates"]) >= 6 and all(Path(t).is_relative_to(installed) for t in info["templates"])
    assert info["typed"] and info["diffusers_sdxl"] and not info["webui"]


@pytest.mark.slow
def test_wheel_console_script_runs_demo_and_info(wheel_venv):
    venv, tmp = wheel_venv
    llmcond, env = str(venv / "bin" / "llmcond"), clean_env(tmp)
    out = run([llmcond, "demo"], cwd=tmp, env=env)
    assert "TINY RANDOM" in out and "crossattn (1, 308, 2048)" in out and "removed" in out
    assert not list((tmp / "tmpdir").glob("llmcond-demo-*"))  # the demo removed its temporary folder

    kept = tmp / "demo-models"
    out = run([llmcond, "demo", "--out-dir", str(kept)], cwd=tmp, env=env)
    assert f"models written to {kept}" in out
    adapter = json.loads(run([llmcond, "info", "--json", str(kept / "llm_adapters" / "tiny-adapter.safetensors")],
                             cwd=tmp, env=env))  # fmt: skip
    llm = json.loads(run([llmcond, "info", "--json", str(kept / "LLM" / "tiny-gemma3")], cwd=tmp, env=env))
    assert llm["family"] == "gemma3" and llm["kind"] == "LLM (HF directory)"
    assert adapter and "kind" in adapter
    as_module = run([str(venv / "bin" / "python"), "-m", "lib_llmcond", "--help"], cwd=tmp, env=env)
    assert as_module == run([llmcond, "--help"], cwd=tmp, env=env) and "encode" in as_module
