"""Save a W&B Report for a sweep group (a run table + one bar panel per benchmark) with `wandb-workspaces`.

Only when online and asked to (`report.wandb_report=true`); otherwise it says why it skipped. `wandb-workspaces` is
an optional extra (`pip install 'aloevision[reports]'`). Runs are selected by `Config('experiment')`, which the
tracker writes at the top level of every run's config (equal to the W&B group).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Sequence

log = logging.getLogger(__name__)


def save_report(group: str, metric_keys: Sequence[str], *, project: str, entity: str | None = None,
                mode: str = "auto", group_by: Sequence[str] = (), title: str | None = None) -> str:
    """The report's URL, or a sentence saying why no report was saved (never raises)."""
    from aloevision.tracking import resolve_mode

    try:
        online = resolve_mode(mode) == "online"
    except ValueError as e:
        return f"skipped ({e})"
    if not online:
        return "skipped (offline)"
    if importlib.util.find_spec("wandb_workspaces") is None:
        return "skipped (wandb-workspaces not installed: pip install 'aloevision[reports]')"
    if not entity:
        return "skipped (wandb.entity is not set; a report needs an entity)"
    try:
        import wandb_workspaces.reports.v2 as wr

        runset = wr.Runset(entity=entity, project=project, name=group,
                           filters=f"Config('experiment') == '{group}'", groupby=list(group_by))
        bars = [wr.BarPlot(title=k.removeprefix("eval/"), metrics=[k]) for k in metric_keys]
        report = wr.Report(
            entity=entity,
            project=project,
            title=title or f"Aloe-Vision: {group}",
            description=f"Runs of experiment {group}, rebuilt by `python launch.py stage=report report.group={group}`.",
            blocks=[
                wr.H1(text=f"{group}: results"),
                wr.PanelGrid(runsets=[runset], panels=[wr.RunComparer(diff_only=True), *bars]),
            ],
        )
        report.save()
        return str(report.url)
    except Exception as e:  # the report is a convenience: its failure must not fail the stage
        log.warning("W&B report not saved: %s", e)
        return f"failed ({e})"
