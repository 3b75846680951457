"""The local demo_medmcqa lm-eval tasks."""
