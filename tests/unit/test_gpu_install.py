"""The GPU install as far as a CPU machine can check it: the extras parse and name installable distributions, none of
them is flash-attn (its build needs the installed torch: an isolated `pip install -e .[gpu]` cannot build it), the
docs give the working line, and the prepared GPU check script is valid bash."""

from __future__ import annotations

import subprocess
import tomllib

from packaging.requirements import Requirement

from conftest import REPO

FLASH_LINE = "pip install flash-attn --no-build-isolation"


def test_extras_parse_and_flash_attn_is_installed_separately():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {k: [Requirement(r).name for r in v] for k, v in extras.items()}
    assert names["gpu"] == ["bitsandbytes"] and names["vllm"] == ["vllm"]
    assert not any("flash" in n for v in names.values() for n in v)
    for doc in ("README.md", "docs/cluster.md"):
        assert FLASH_LINE in (REPO / doc).read_text(), doc


def test_gpu_check_script_is_valid_bash():
    script = REPO / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for check in ("train_bf16", "signal_resume", "score_vllm", "eval_gpu"):
        assert f"check {check} " in text
