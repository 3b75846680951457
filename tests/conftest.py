"""Shared test fixtures: every test writes under a temp root; W&B is offline with its dirs inside the temp dir;
the tiny model and the demo data are built once per session and shared through one artifact cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurm_fixture import slurm_cluster  # noqa: E402,F401  (a local SLURM for the cluster tests)
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def session_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aloevision")
    # W&B writes only inside the test's temp dir and never prompts.
    for var, sub in (("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config"),
                     ("WANDB_DATA_DIR", "wandb-data")):
        os.environ[var] = str(root / sub)
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("WANDB_API_KEY", None)
    os.environ["HF_HOME"] = str(root / "hf-home")
    return root


@pytest.fixture(scope="session")
def cache_dir(session_root) -> Path:
    return session_root / "cache"


@pytest.fixture(scope="session")
def demo_dir(session_root) -> Path:
    from aloevision.demo.generate import ensure_demo_data

    return Path(ensure_demo_data(session_root / "demo_data"))


@pytest.fixture(scope="session")
def tiny_path(cache_dir) -> str:
    from omegaconf import OmegaConf

    from aloevision.model.loading import checkpoint_path

    model_cfg = OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml")  # the demo's model, without composing all
    return checkpoint_path(model_cfg, cache_dir / "shared")


def compose(overrides: list[str], root: Path | None = None, output_dir: Path | None = None):
    """The config `launch.py` would run with, composed without running it (paths pinned for tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from aloevision.config import register_configs

    register_configs()
    root = root or Path("/tmp/aloevision-compose")
    pinned = [f"paths.root={root}", f"paths.output_dir={output_dir or root / 'run'}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=pinned + list(overrides))


@pytest.fixture
def run_launch(session_root, tmp_path):
    """Run `python launch.py ...` in a subprocess with outputs under tmp and the session's shared cache."""
    import subprocess

    def _run(*args: str, check: bool = True, timeout: int = 900, cache: bool = True):
        env = {**os.environ, "ALOEVISION_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1"}
        extra = [f"paths.cache_dir={session_root / 'cache' / 'shared'}", f"paths.demo_dir={session_root / 'demo_data'}"] if cache else []
        proc = subprocess.run([sys.executable, str(REPO / "launch.py"), *args, *extra], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"launch.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return proc

    return _run
