"""Evaluation: answer extraction and scoring (`answers`), LLM judges with majority vote and agreement (`judges`),
lm-evaluation-harness integration and harness availability (`lm_eval_task`)."""
