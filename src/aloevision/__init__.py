"""aloevision: an open, reproducible Hydra framework for the Aloe-Vision medical VLM recipe."""

__version__ = "0.1.0"
