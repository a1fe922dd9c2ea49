"""Run by the WebUI on every launch (separate process, unless --skip-install): installs only what is missing
and never a package the host pins. Specifiers are quoted: ``launch.run_pip`` goes through a shell."""

import os
import re

# (import name for launch.is_installed, pip specifier)
REQUIREMENTS = (
    ("gguf", "gguf>=0.10"),
    ("sentencepiece", "sentencepiece>=0.1.99"),
)
# Never installed or changed by us, whatever the host's files say: the hosts reinstall their pins on every launch.
NEVER = frozenset(
    [
        "torch",
        "torchvision",
        "torchaudio",
        "xformers",
        "transformers",
        "tokenizers",
        "safetensors",
        "gradio",
        "gradio-client",
        "numpy",
        "protobuf",
        "pydantic",
        "fastapi",
        "starlette",
        "huggingface-hub",
        "accelerate",
        "diffusers",
        "open-clip-torch",
        "pillow",
    ]
)
HOST_REQUIREMENT_FILES = ("requirements_versions.txt", "requirements.txt", "requirements_npu.txt")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def host_pins(root):
    """Package names listed in the host's requirement files (the WebUI root is where ``launch.py`` is)."""
    names = set()
    for fname in HOST_REQUIREMENT_FILES:
        path = os.path.join(root, fname)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _NAME.match(line.split("#", 1)[0])
                if m:
                    names.add(canonical(m.group(1)))
    return names


def plan(launch, root):
    """(name, quoted pip args) for each requirement that is missing and not pinned by the host."""
    blocked = {canonical(n) for n in NEVER} | host_pins(root)
    todo = []
    for name, spec in REQUIREMENTS:
        if canonical(name) in blocked or launch.is_installed(name):
            continue
        todo.append((name, f'install "{spec}"'))
    return todo


def main(launch):
    root = os.path.dirname(os.path.abspath(getattr(launch, "__file__", None) or os.getcwd()))
    for name, pip_args in plan(launch, root):
        launch.run_pip(pip_args, f"{name} for llmcond")


if __name__ == "__main__":
    import launch

    main(launch)
