"""Which shard of a data stage this job does: data stages (hash, score) split their work into
`cluster.data_shards` parts, run as a SLURM job array (or `-m cluster.data_shard=range(0,n)` locally)."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from aloevision.config import ConfigError


def shard_spec(cfg, env: dict[str, str] | None = None, stage: str = "data") -> tuple[int, int]:
    """(k, n). (0, 1) unless `cluster.data_shards` > 1 and this job knows its index (`cluster.data_shard`, else the
    SLURM array task id). An array whose size differs from data_shards is an error: shards would be skipped or done
    twice."""
    env = os.environ if env is None else env
    n = int(cfg.cluster.data_shards or 1)
    if n <= 1:
        return 0, 1
    k = OmegaConf.select(cfg, "cluster.data_shard", default=None)
    if k is None and env.get("SLURM_ARRAY_TASK_ID") not in (None, ""):
        k = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN") or 0)
        count = env.get("SLURM_ARRAY_TASK_COUNT")
        if count and int(count) != n:
            raise ConfigError(
                f"cluster.data_shards={n} but this SLURM array has {count} tasks: launch the {stage} array with "
                f"--array=0-{n - 1} (or set cluster.data_shards={count}), else shards would be skipped or repeated"
            )
    if k is None:
        return 0, 1  # not an array task: this job does everything
    k = int(k)
    if not 0 <= k < n:
        raise ConfigError(f"{stage} shard {k} is outside 0..{n - 1} (cluster.data_shards={n})")
    return k, n
