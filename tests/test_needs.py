"""tests/needs.py and the oracle gate: where dev/test.sh says an environment must have the oracles, a broken
transformers fails the oracle tests; elsewhere they skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def run(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess:
    broken = tmp_path / "broken"
    (broken / "transformers").mkdir(parents=True, exist_ok=True)
    (broken / "transformers" / "__init__.py").write_text("raise ImportError('a broken install')\n")
    (tmp_path / "test_gate.py").write_text(
        "import pytest\n\n@pytest.mark.oracle\ndef test_against_the_oracle():\n    pass\n\n"
        "def test_tokenizers_present():\n    import needs\n    needs.module('no_such_package_xyz', 'tokenizers')\n"
    )
    (tmp_path / "test_gate_module.py").write_text(  # at import time, as pytest.importorskip is used
        "import needs\n\nneeds.module('no_such_package_xyz', 'diffusers')\n\ndef test_never():\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LLMCOND_REQUIRE"}
    env["PYTHONPATH"] = os.pathsep.join([str(broken), str(TESTS), str(REPO)])
    if require is not None:
        env["LLMCOND_REQUIRE"] = require
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "conftest",
        "-c",
        str(REPO / "pyproject.toml"),
    ]
    files = [str(tmp_path / "test_gate.py"), str(tmp_path / "test_gate_module.py")]
    return subprocess.run([*cmd, "--rootdir", str(REPO), *files], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip


def test_missing_oracles_skip_where_not_required(tmp_path):
    r = run(tmp_path, None)
    assert r.returncode == 0 and "3 skipped" in r.stdout, r.stdout + r.stderr
    assert "a broken install" in r.stdout  # the skip says why


def test_missing_oracles_fail_where_required(tmp_path):
    r = run(tmp_path, "oracles,tokenizers")
    assert r.returncode == 1 and "1 failed, 1 skipped, 1 error" in r.stdout, (
        r.stdout + r.stderr
    )  # oracle: setup
    assert "must have 'oracles'" in r.stdout and "must have 'tokenizers'" in r.stdout


def test_unknown_group_is_a_mistake():
    import needs

    with pytest.raises(AssertionError):
        needs.required("oracle")
