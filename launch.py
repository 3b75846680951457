"""The one entry point: compose the config with Hydra and run the selected stage(s).

    python launch.py                                   # the demo: whole pipeline, tiny model, CPU, minutes
    python launch.py stage=plan mixture=final model=qwen2vl_7b cluster=marenostrum5
    python launch.py -m +experiment=ablation_mixture   # one job per table row
    python launch.py stage=report report.group=ablation_mixture
    python launch.py --help                            # stages, config groups and options, presets, commands
"""

import os
import sys
from pathlib import Path

# Runs from a checkout without installing; PYTHONPATH too, so SLURM jobs submitted from here import the package.
SRC = str(Path(__file__).resolve().parent / "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from aloevision.cli import scrub_log_records  # noqa: E402
from aloevision.config import register_configs  # noqa: E402

register_configs()
scrub_log_records()  # before Hydra logs the overrides it launches


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from aloevision.cli import run_from_hydra

    run_from_hydra(cfg)


if __name__ == "__main__":
    main()
