"""What launch.py runs once Hydra has composed the config: logging, threads, the pipeline, the summary."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from aloevision.config import ConfigError


def run_from_hydra(cfg: DictConfig) -> None:
    from aloevision import pipeline
    from aloevision.summary import print_summary

    logging.getLogger("aloevision").setLevel(logging.INFO)
    pipeline.set_cpu_threads(cfg)
    try:
        results = pipeline.run(cfg)
    except ConfigError as e:
        raise SystemExit(f"Config error: {e}") from None
    print_summary(cfg, results)
