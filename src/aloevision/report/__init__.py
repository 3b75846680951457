"""Paper tables rebuilt from runs: `runs` (collect run records / W&B runs), `tables` (Tables 3, 4, 7, 8, 9, 10 as
Markdown, LaTeX, CSV and a bar chart), `wandb_report` (optional W&B Report), `build` (the report stage's entry)."""
