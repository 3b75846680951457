"""The plan: per-source sampling fractions that give each category its target share of *loss tokens*, and what the
resulting run costs (steps, epochs, GPUs, GPU-hours), from per-source token statistics alone.

Rebalancing (paper section 3): categories keep their intended shares of loss tokens, not of samples. The planner
keeps as much data as possible: it solves a small linear programme over one "unit" per category (or per source when
`source_shares` splits a category), maximising the unique loss tokens kept, subject to

* every unit's observed share within `share_tolerance` of its requested share (default 0.05 percentage points: the
  paper prints shares to 0.1 pp, so Table 1's own figures meet its printed allocation);
* a unit is subsampled (fraction < 1) or repeated, at most `max_repeat` times; repetition only happens when it lets
  more unique data in elsewhere (it is penalised slightly);
* optionally a total loss-token budget, when a mixture asks for one.

Within a unit every source gets the same fraction, so a category's internal proportions are its natural ones.
Selection is per sample and deterministic (`select_samples`: a seeded hash of the sample id), nested in the
fraction (a larger fraction keeps a superset), and streaming.

Training arithmetic (paper Table 6, Appendix D): global batch = micro x accumulation x GPUs (checked);
steps_per_epoch = floor(samples / global batch); a mixture smaller than the reference (the final mixture's 3,487
optimizer steps) trains for proportionally more epochs: epochs = max(recipe epochs, reference_steps /
steps_per_epoch), FRACTIONAL, so total_steps = ceil(epochs x steps_per_epoch) >= reference_steps (the paper:
"proportionally increase the number of training epochs to ensure ... at least as many gradient updates"; whole
epochs would overshoot by up to one epoch, e.g. 5,302 instead of 3,487 steps for multimodal-only). Training should
run `max_steps = total_steps`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from aloevision.config import CATEGORIES, ConfigError

PAPER_TABLE1 = Path(__file__).with_name("data") / "paper_table1.csv"
DEFAULT_SHARE_TOLERANCE = 0.0005
REPEAT_PENALTY = 1e-3  # objective cost of a repeated token relative to a kept unique one
PLAN_VERSION = "1"


class PlanError(ConfigError):
    """A mixture / recipe the planner cannot satisfy; the message names what to change."""


# -- statistics ----------------------------------------------------------------------------------------------------
@dataclass
class SourceStats:
    name: str
    domain: str
    modality: str
    samples: float
    loss_tokens: float
    total_tokens: float | None = None
    text_tokens: float | None = None
    image_tokens: float | None = None
    label: str | None = None  # display name, e.g. the paper's "PubMedVision"

    @property
    def category(self) -> str:
        return f"{self.domain}_{self.modality}"


def _num(v: Any) -> float | None:
    if v is None or (isinstance(v, str) and v.strip() == ""):
        return None
    return float(v)


def _reconcile(rows: list[dict[str, Any]], total: int) -> None:
    """Rounded per-row sample counts (each with its rounding unit) -> integers summing to the exact `total`, each
    moved by the same fraction of its half rounding unit (so every row stays within its printed rounding)."""
    printed = sum(r["samples"] for r in rows)
    half = [float(r.get("samples_unit") or 1) / 2 for r in rows]
    residual = total - printed
    if abs(residual) > sum(half):
        raise PlanError(f"stats total_samples={total} is not within the rows' rounding of their sum {printed:.0f}")
    exact = [r["samples"] + residual * h / sum(half) for r, h in zip(rows, half)]
    ints = [math.floor(x) for x in exact]
    order = sorted(range(len(rows)), key=lambda i: exact[i] - ints[i], reverse=True)
    for i in order[: total - sum(ints)]:
        ints[i] += 1
    for r, n in zip(rows, ints):
        r["samples_printed"], r["samples"] = r["samples"], n


def load_stats(path: str | Path) -> tuple[list[SourceStats], dict[str, Any]]:
    """Per-source stats from a CSV (`# key: value` comment lines are metadata) or JSON (a list of rows, or
    {"sources": [...], ...metadata}). Columns: name, domain, modality, samples, loss_tokens; optional
    total_tokens, text_tokens, image_tokens, label, samples_unit. Metadata `total_samples` reconciles rounded rows
    (a paper table) to an exact total."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan.stats={path}: no such file")
    meta: dict[str, Any] = {"path": str(path)}
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            rows = list(data.get("sources", []))
            meta.update({k: v for k, v in data.items() if k != "sources"})
        else:
            rows = list(data)
    else:
        lines = path.read_text().splitlines()
        for line in lines:
            if line.startswith("#") and ":" in line:
                k, v = line[1:].split(":", 1)
                if k.strip().replace("_", "").isalnum():
                    meta[k.strip()] = v.strip()
        rows = list(csv.DictReader(line for line in lines if line.strip() and not line.startswith("#")))
    out_rows = []
    for i, r in enumerate(rows):
        missing = [k for k in ("name", "domain", "modality", "samples", "loss_tokens") if _num_or_str(r.get(k)) is None]
        if missing:
            raise PlanError(f"{path}: row {i + 1} lacks {', '.join(missing)} (need name, domain, modality, samples, loss_tokens)")
        out_rows.append(dict(r) | {"samples": float(r["samples"]), "loss_tokens": float(r["loss_tokens"])})
    if "total_samples" in meta:
        _reconcile(out_rows, int(float(meta["total_samples"])))
    stats = []
    for r in out_rows:
        s = SourceStats(
            name=str(r["name"]),
            domain=str(r["domain"]),
            modality=str(r["modality"]),
            samples=r["samples"],
            loss_tokens=r["loss_tokens"],
            total_tokens=_num(r.get("total_tokens")),
            text_tokens=_num(r.get("text_tokens")),
            image_tokens=_num(r.get("image_tokens")),
            label=(r.get("label") or r.get("paper_name") or None),
        )
        if s.category not in CATEGORIES:
            raise PlanError(f"{path}: source {s.name} has domain={s.domain!r}, modality={s.modality!r}; "
                            "use medical|general and multimodal|text")
        if s.samples < 0 or s.loss_tokens < 0:
            raise PlanError(f"{path}: source {s.name} has negative samples or loss tokens")
        stats.append(s)
    names = [s.name for s in stats]
    if len(set(names)) != len(names):
        raise PlanError(f"{path}: duplicate source names {sorted({n for n in names if names.count(n) > 1})}")
    return stats, meta


def _num_or_str(v: Any) -> Any:
    return None if v is None or (isinstance(v, str) and not v.strip()) else v


def write_stats(path: str | Path, stats: Iterable[SourceStats | Mapping[str, Any]], **meta: Any) -> Path:
    """The measured stats file (JSON) a later `stage=plan` reads with `plan.stats=<path>`."""
    rows = [asdict(s) if isinstance(s, SourceStats) else dict(s) for s in stats]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "sources": rows}, indent=1))
    return path


# -- the plan ------------------------------------------------------------------------------------------------------
@dataclass
class SourcePlan:
    name: str
    label: str
    category: str
    available_samples: float
    available_loss_tokens: float
    fraction: float  # < 1 subsampled, > 1 repeated
    samples: float
    loss_tokens: float
    share: float  # observed share of all loss tokens
    requested_share: float | None  # of all loss tokens, when the mixture sets source_shares


@dataclass
class CategoryPlan:
    category: str
    requested_share: float | None
    share: float
    samples: float
    loss_tokens: float
    available_samples: float
    available_loss_tokens: float


@dataclass
class TrainingPlan:
    global_batch_size: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    gpus: int
    gpus_per_node: int | None
    nodes: int
    steps_per_epoch: int
    epochs: float
    epochs_rule: str
    total_steps: int
    reference_steps: int | None
    samples_seen: int
    samples_per_gpu_second: float | None
    gpu_hours: float | None
    wall_hours: float | None
    paper_gpu_hours: float | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    mixture: str
    seed: int
    share_tolerance: float
    max_repeat: float
    sources: list[SourcePlan]
    categories: list[CategoryPlan]
    samples: float
    loss_tokens: float
    training: TrainingPlan | None
    stats: dict[str, Any] = field(default_factory=dict)
    version: str = PLAN_VERSION

    def fractions(self) -> dict[str, float]:
        return {s.name: s.fraction for s in self.sources}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    try:
        return getattr(obj, key)
    except AttributeError:
        return default
    except Exception:  # omegaconf: missing key in a struct config
        return default


def _mixture_sources(mixture: Any) -> dict[str, dict[str, Any]]:
    """name -> {domain, modality, cap} from the mixture's `sources` (SourceConfig nodes or plain dicts)."""
    out = {}
    for key, src in (_get(mixture, "sources") or {}).items():
        name = str(_get(src, "name") or key)
        out[name] = {"key": key, "domain": _get(src, "domain"), "modality": _get(src, "modality"), "cap": _get(src, "cap")}
    return out


def plan_mixture(
    mixture: Any,
    stats: list[SourceStats],
    *,
    seed: int = 0,
    total_loss_tokens: float | None = None,
    share_tolerance: float | None = None,
) -> Plan:
    """Per-source fractions meeting the mixture's loss-token targets while keeping as much data as possible."""
    name = str(_get(mixture, "name") or "mixture")
    targets = {str(k): float(v) for k, v in (_get(mixture, "targets") or {}).items()}
    source_shares = {str(k): float(v) for k, v in (_get(mixture, "source_shares") or {}).items()}
    max_repeat = float(_get(mixture, "max_repeat", 1.0) or 1.0)
    if share_tolerance is None:
        share_tolerance = _get(mixture, "share_tolerance")  # when the mixture config carries one
    tol = DEFAULT_SHARE_TOLERANCE if share_tolerance is None else float(share_tolerance)
    if max_repeat < 1:
        raise PlanError(f"mixture.max_repeat={max_repeat}: must be >= 1 (1 = never repeat a sample)")

    by_name = {s.name: s for s in stats}
    declared = _mixture_sources(mixture)
    if not declared:
        raise PlanError(f"mixture {name} declares no sources")
    missing = [n for n in declared if n not in by_name]
    if missing:
        raise PlanError(f"no statistics for source(s) {missing} of mixture {name}; the stats have {sorted(by_name)}")
    chosen: list[SourceStats] = []
    for n, d in declared.items():
        s = by_name[n]
        if (d["domain"] and d["domain"] != s.domain) or (d["modality"] and d["modality"] != s.modality):
            raise PlanError(f"source {n}: the mixture says {d['domain']}/{d['modality']}, the stats {s.domain}/{s.modality}")
        if d["cap"] is not None and s.samples > int(d["cap"]):  # stats measured before the cap: scale down
            f = int(d["cap"]) / s.samples
            s = SourceStats(**{**asdict(s), "samples": float(d["cap"]), "loss_tokens": s.loss_tokens * f})
        chosen.append(s)
    present = sorted({s.category for s in chosen}, key=CATEGORIES.index)

    # -- validate shares
    if targets:
        from aloevision.config import target_shares_problem

        problem = target_shares_problem(dict(targets))
        if problem:
            raise PlanError(problem)
        untargeted = [c for c in present if c not in targets]
        if untargeted:
            srcs = [s.name for s in chosen if s.category in untargeted]
            raise PlanError(f"mixture {name}: sources {srcs} are in categories {untargeted} that have no target; "
                            "add a target for them or remove the sources")
        for c, t in targets.items():
            if t > 0 and c not in present:
                raise PlanError(f"mixture {name}: category {c} has target {t:.1%} but no source of the mixture is in it")
    for n in source_shares:
        if n not in declared:
            raise PlanError(f"mixture.source_shares names {n}, which is not a source of mixture {name}")
    for c in present:
        listed = [s for s in chosen if s.category == c and s.name in source_shares]
        if listed:
            members = [s.name for s in chosen if s.category == c]
            if len(listed) != len(members):
                raise PlanError(f"mixture.source_shares covers only {[s.name for s in listed]} of category {c}; "
                                f"give a share for each of {members}")
            ssum = sum(source_shares[s.name] for s in listed)
            if abs(ssum - 1) > 1e-6:
                raise PlanError(f"mixture.source_shares for category {c} must sum to 1; they sum to {ssum:.4f} ("
                                + ", ".join(f"{s.name}={source_shares[s.name]}" for s in listed) + ")")

    # -- units: a category, or a source when source_shares split its category
    units: list[tuple[list[SourceStats], float | None]] = []
    for c in present:
        members = [s for s in chosen if s.category == c]
        if any(s.name in source_shares for s in members):
            units += [([s], targets.get(c, 1.0) * source_shares[s.name] if targets else None) for s in members]
        else:
            units.append((members, targets.get(c) if targets else None))
    if not targets and source_shares:
        raise PlanError("mixture.source_shares needs mixture.targets (shares within a category of a target)")

    for members, tau in units:
        avail = sum(s.loss_tokens for s in members)
        if tau and avail <= 0:
            raise PlanError(f"source(s) {[s.name for s in members]} are short: target {tau:.1%} of loss tokens, "
                            "0 loss tokens available (short by 100%)")
    fractions = _solve(units, max_repeat, tol, total_loss_tokens)

    # -- assemble
    rows = []
    for (members, tau), f in zip(units, fractions):
        avail = sum(s.loss_tokens for s in members)
        for s in members:
            rows.append((s, f, tau * s.loss_tokens / avail if (tau is not None and len(members) == 1) else None))
    total_loss = sum(f * s.loss_tokens for s, f, _ in rows)
    total_samples = sum(f * s.samples for s, f, _ in rows)
    sources = [
        SourcePlan(
            name=s.name, label=s.label or s.name, category=s.category, available_samples=s.samples,
            available_loss_tokens=s.loss_tokens, fraction=f, samples=f * s.samples, loss_tokens=f * s.loss_tokens,
            share=(f * s.loss_tokens / total_loss) if total_loss else 0.0,
            requested_share=(tau if s.name in source_shares else None),
        )
        for s, f, tau in rows
    ]
    categories = []
    for c in present:
        mem = [p for p in sources if p.category == c]
        lt = sum(p.loss_tokens for p in mem)
        categories.append(CategoryPlan(
            category=c, requested_share=targets.get(c) if targets else None,
            share=lt / total_loss if total_loss else 0.0, samples=sum(p.samples for p in mem), loss_tokens=lt,
            available_samples=sum(p.available_samples for p in mem),
            available_loss_tokens=sum(p.available_loss_tokens for p in mem),
        ))
    return Plan(mixture=name, seed=seed, share_tolerance=tol, max_repeat=max_repeat, sources=sources,
                categories=categories, samples=total_samples, loss_tokens=total_loss, training=None)


def _solve(units, max_repeat: float, tol: float, budget: float | None) -> list[float]:
    """Fraction per unit. LP over kept-unique fraction x in [0,1] and repeat fraction y in [0, max_repeat-1]."""
    n = len(units)
    avail = [sum(s.loss_tokens for s in m) for m, _ in units]
    taus = [t for _, t in units]
    if all(t is None for t in taus):  # natural shares: keep everything once (or scale to a budget)
        if budget is None:
            return [1.0] * n
        f = budget / sum(avail)
        if f > max_repeat:
            _short(units, avail, [a / sum(avail) for a in avail], max_repeat, tol, budget)
        return [f] * n
    import numpy as np
    from scipy.optimize import linprog

    # variables: x_0..x_{n-1}, y_0..y_{n-1}; tokens_u = (x_u + y_u) * A_u; S = sum tokens
    c = np.concatenate([-np.asarray(avail), REPEAT_PENALTY * np.asarray(avail)])
    a_ub, b_ub = [], []
    for u in range(n):
        for sign, bound in ((1, taus[u] + tol), (-1, max(taus[u] - tol, 0.0))):
            row = np.zeros(2 * n)
            for k in range(n):
                coef = -bound * avail[k]
                row[k] += coef
                row[n + k] += coef
            row[u] += avail[u]
            row[n + u] += avail[u]
            a_ub.append(sign * row)
            b_ub.append(0.0)
    a_eq = b_eq = None
    if budget is not None:
        a_eq = [np.concatenate([avail, avail])]
        b_eq = [float(budget)]
    bounds = [(0.0, 1.0)] * n + [(0.0, max_repeat - 1.0)] * n
    # Scale tokens to ~1 for numerical health.
    scale = max(avail) or 1.0
    res = linprog(c / scale, A_ub=np.asarray(a_ub) / scale, b_ub=b_ub,
                  A_eq=None if a_eq is None else np.asarray(a_eq) / scale,
                  b_eq=None if b_eq is None else np.asarray(b_eq) / scale, bounds=bounds, method="highs")
    if res.status != 0:
        if budget is not None:
            _short(units, avail, taus, max_repeat, tol, budget)
        raise PlanError(f"no sampling meets the targets: {res.message}")
    x, y = res.x[:n], res.x[n:]
    # Snap solver noise (1e-9) so that "kept whole" reads exactly 1.
    return [round(float(a + b), 9) for a, b in zip(x, y)]


def _short(units, avail, taus, max_repeat, tol, budget) -> None:
    lines = []
    for (members, _), a, t in zip(units, avail, taus):
        need = budget * max(t - tol, 0.0)
        have = a * max_repeat
        if need > have:
            lines.append(f"{'+'.join(s.name for s in members)} ({members[0].category}) needs >= {need:,.0f} loss tokens "
                         f"for its {t:.1%} share of {budget:,.0f}, has {a:,.0f} x max_repeat {max_repeat:g} = "
                         f"{have:,.0f}: short by {need - have:,.0f} ({(need - have) / need:.1%})")
    raise PlanError("targets cannot be met: " + ("; ".join(lines) or "the budget and shares are inconsistent")
                    + ". Lower the budget, raise mixture.max_repeat, or add data.")


# -- batch and steps: the ONE rule that plan, mix and train use ----------------------------------------------------
def batch_factors(recipe: Any, *, micro_batch_size: int | None = None, gradient_accumulation_steps: int | None = None,
                  world_size: int | None = None) -> tuple[int, int, int]:
    """(micro batch per device, accumulation steps, world size): the train.* overrides when given, else the recipe's
    (world size: the recipe's `gpus`)."""
    micro = int(micro_batch_size or _get(recipe, "micro_batch_size"))
    accum = int(gradient_accumulation_steps or _get(recipe, "gradient_accumulation_steps"))
    world = int(world_size if world_size is not None else _get(recipe, "gpus"))
    return micro, accum, world


def check_global_batch(recipe: Any, *, micro_batch_size: int | None = None,
                       gradient_accumulation_steps: int | None = None, world_size: int | None = None,
                       global_batch: int | None = None) -> int:
    """Fail unless micro x accumulation x world size equals the recipe's global batch; return it. The message shows
    the three factors (run before submission, again in every rank)."""
    micro, accum, world = batch_factors(recipe, micro_batch_size=micro_batch_size,
                                        gradient_accumulation_steps=gradient_accumulation_steps, world_size=world_size)
    target = int(global_batch if global_batch is not None else _get(recipe, "global_batch_size"))
    for name, value in (("micro batch", micro), ("gradient accumulation", accum), ("world size", world)):
        if value < 1:
            raise PlanError(f"{name} must be >= 1, got {value}")
    got = micro * accum * world
    if got != target:
        raise PlanError(
            f"global batch mismatch: micro batch {micro} x gradient accumulation {accum} x world size {world} = {got}"
            f" ≠ configured global batch {target}. Fix model.recipe (micro_batch_size, gradient_accumulation_steps,"
            f" global_batch_size, gpus), the train.* overrides, or the cluster size (nodes x gpus_per_node)."
        )
    return got


def epochs_and_steps(samples: float, global_batch: int, epochs: float, reference_steps: int | None = None, *,
                     strict: bool = True) -> tuple[int, float, int, str]:
    """(steps per epoch, epochs, total steps, rule). steps_per_epoch = floor(samples / global batch); a mixture
    whose recipe epochs give fewer optimizer steps than `reference_steps` trains fractional epochs reaching them
    (paper Appendix D). strict: fewer samples than one global batch is an error (else one step per epoch: tiny runs)."""
    n = int(round(samples))
    steps_per_epoch = n // int(global_batch)
    if steps_per_epoch < 1:
        if strict:
            raise PlanError(f"{n} samples do not fill one global batch of {global_batch}")
        steps_per_epoch = 1
    rule = "recipe"
    if reference_steps and steps_per_epoch * epochs < reference_steps:
        epochs, rule = reference_steps / steps_per_epoch, "fractional: reference_steps / steps_per_epoch"
    return steps_per_epoch, float(epochs), math.ceil(round(epochs * steps_per_epoch, 6)), rule


def run_schedule(n_samples: int, recipe: Any, train: Any = None, *, world_size: int,
                 planned: Mapping[str, Any] | None = None, reference_steps: int | None = None) -> dict[str, Any]:
    """Micro batch, accumulation and steps of an actual training job of `world_size` ranks (the train stage).

    Steps: the plan's (`planned` = plan.json's "training", written by plan/mix) when this job's global batch is the
    plan's; with another global batch (a local run of a cluster recipe) the plan's epochs are kept and the steps
    follow this batch. Without a plan, the same rule as the planner from `reference_steps`. `train.max_steps`
    overrides everything. The recipe's global batch is enforced when the job has the recipe's world size and no
    train.* batch override (a smaller local job of a cluster recipe is allowed to differ)."""
    t_micro, t_accum = _get(train, "micro_batch_size"), _get(train, "gradient_accumulation_steps")
    micro, accum, ws = batch_factors(recipe, micro_batch_size=t_micro, gradient_accumulation_steps=t_accum,
                                     world_size=world_size)
    global_batch = micro * accum * ws
    if t_micro is None and t_accum is None and ws == int(_get(recipe, "gpus")):
        check_global_batch(recipe, world_size=ws)
    if planned:
        steps_per_epoch, epochs, _, _ = epochs_and_steps(n_samples, global_batch, float(planned["epochs"]),
                                                         strict=False)
        if global_batch == int(planned["global_batch_size"]):
            total, source = int(planned["total_steps"]), "plan"
        else:
            total, source = math.ceil(round(epochs * steps_per_epoch, 6)), "plan epochs x this run's steps/epoch"
    else:
        steps_per_epoch, epochs, total, rule = epochs_and_steps(
            n_samples, global_batch, float(_get(recipe, "epochs", 1.0) or 1.0), reference_steps, strict=False)
        source = "recipe" if rule == "recipe" else "mixture.reference_steps"
    if _get(train, "max_steps"):
        total, source = int(_get(train, "max_steps")), "train.max_steps"
    return dict(micro=micro, accum=accum, world_size=ws, global_batch=global_batch,
                steps_per_epoch=steps_per_epoch, epochs=epochs, max_steps=total, steps_from=source)


# -- training arithmetic -------------------------------------------------------------------------------------------
def plan_training(
    samples: float,
    recipe: Any,
    cluster: Any = None,
    *,
    reference_steps: int | None = None,
    micro_batch_size: int | None = None,
    gradient_accumulation_steps: int | None = None,
    world_size: int | None = None,
) -> TrainingPlan:
    gb = check_global_batch(recipe, micro_batch_size=micro_batch_size,
                            gradient_accumulation_steps=gradient_accumulation_steps, world_size=world_size)
    micro, accum, gpus = batch_factors(recipe, micro_batch_size=micro_batch_size,
                                       gradient_accumulation_steps=gradient_accumulation_steps, world_size=world_size)
    notes = []
    gpn = int(_get(cluster, "gpus_per_node", 0) or 0)
    if gpn > 0:
        nodes = math.ceil(gpus / gpn)
        if gpus % gpn:
            notes.append(f"{gpus} GPUs do not fill {nodes} nodes of {gpn}")
        cn = int(_get(cluster, "nodes", nodes) or nodes)
        if cn * gpn != gpus:
            notes.append(f"cluster.nodes={cn} x gpus_per_node={gpn} = {cn * gpn} GPUs; the recipe needs {gpus}: "
                         f"launch with cluster.nodes={nodes}")
    else:
        nodes = int(_get(cluster, "nodes", 1) or 1)
        if gpus > 1:
            notes.append(f"cluster {_get(cluster, 'name', '')!s} declares no GPUs per node; the node count is the "
                         "cluster's own (pick a GPU cluster config, e.g. cluster=marenostrum5, for the real layout)")
    steps_per_epoch, epochs, total_steps, rule = epochs_and_steps(
        samples, gb, float(_get(recipe, "epochs", 1.0) or 1.0), reference_steps)
    seen = total_steps * gb
    sps = _get(recipe, "samples_per_gpu_second")
    gpu_hours = seen / float(sps) / 3600 if sps else None
    return TrainingPlan(
        global_batch_size=gb, micro_batch_size=micro, gradient_accumulation_steps=accum, gpus=gpus,
        gpus_per_node=gpn or None, nodes=nodes, steps_per_epoch=steps_per_epoch, epochs=epochs, epochs_rule=rule,
        total_steps=total_steps, reference_steps=reference_steps, samples_seen=seen,
        samples_per_gpu_second=float(sps) if sps else None, gpu_hours=gpu_hours,
        wall_hours=gpu_hours / gpus if gpu_hours else None,
        paper_gpu_hours=_get(recipe, "gpu_hours_estimate"), notes=notes,
    )


def make_plan(
    mixture: Any,
    stats: list[SourceStats],
    recipe: Any = None,
    cluster: Any = None,
    *,
    seed: int = 0,
    train: Any = None,
    total_loss_tokens: float | None = None,
    stats_meta: dict[str, Any] | None = None,
    reference_steps: int | None = None,
) -> Plan:
    """The mixture plan plus its training arithmetic. `reference_steps` (when given) overrides the mixture's own,
    e.g. the steps of a reference mixture planned on the same stats (`reference_steps_from`)."""
    plan = plan_mixture(mixture, stats, seed=seed, total_loss_tokens=total_loss_tokens)
    plan.stats = dict(stats_meta or {})
    if recipe is not None:
        ref = reference_steps if reference_steps is not None else _get(mixture, "reference_steps")
        plan.training = plan_training(
            plan.samples, recipe, cluster, reference_steps=ref or None,
            micro_batch_size=_get(train, "micro_batch_size"),
            gradient_accumulation_steps=_get(train, "gradient_accumulation_steps"),
            world_size=_get(train, "world_size"),
        )
    return plan


def reference_steps_from(
    cfg, stats: list[SourceStats], load_mixture: Callable[[str], Any] | None = None
) -> int | None:
    """Optimizer steps a smaller mixture must reach (paper Appendix D): those of `mixture.reference_mixture`
    (a mixture name, e.g. `final`) planned on the SAME stats with the same recipe, else `mixture.reference_steps`.

    A named reference keeps the rule true on any data: with the paper's Table 1 it is the paper's 3,487 steps; on
    the demo data it is the final mixture's few demo steps (a fixed 3,487 there would mean thousands of tiny steps).
    The run's own mixture as its reference means no extra steps."""
    mixture = cfg.mixture
    ref = _get(mixture, "reference_mixture")
    if not ref:
        return _get(mixture, "reference_steps")
    if str(ref) == str(_get(mixture, "name")):
        return 0  # the reference itself: its own recipe epochs
    ref_mix = (load_mixture or compose_mixture)(str(ref))
    model = _get(cfg, "model")
    ref_plan = make_plan(ref_mix, stats, _get(model, "recipe"), _get(cfg, "cluster"), seed=int(_get(cfg, "seed", 0)),
                         train=_get(cfg, "train"), total_loss_tokens=_get(ref_mix, "total_loss_tokens"),
                         reference_steps=0)
    return ref_plan.training.total_steps if ref_plan.training else None


def compose_mixture(name: str):
    """`conf/mixture/<name>.yaml` composed with this run's other overrides (so e.g. source caps match)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"mixture={name}"]
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides += [o for o in HydraConfig.get().overrides.task
                      if not o.lstrip("+~").startswith(("mixture", "hydra", "experiment", "+experiment"))]
    except ValueError:  # not inside a Hydra app (tests, notebooks)
        pass
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides).mixture
    conf = Path(__file__).resolve().parents[2] / "conf"
    if not conf.is_dir():
        raise PlanError(f"mixture.reference_mixture={name}: cannot find the config folder {conf}")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="config", overrides=overrides).mixture


def run_plan(cfg, out_dir: str | Path, stats_path: str | Path | None = None, console=None, mixture=None) -> Plan:
    """`stage=plan`: stats (plan.stats, else `stats_path` measured by a previous run) -> plan.json + printed table."""
    path = _get(_get(cfg, "plan"), "stats") or stats_path
    if not path:
        raise PlanError("stage=plan needs token statistics: plan.stats=<csv|json> (e.g. the paper's Table 1 at "
                        f"{PAPER_TABLE1}) or a stats file measured by a previous run's tokens stage")
    stats, meta = load_stats(path)
    model = _get(cfg, "model")
    plan = make_plan(
        cfg.mixture if mixture is None else mixture, stats, _get(model, "recipe"), _get(cfg, "cluster"), seed=int(_get(cfg, "seed", 0)),
        train=_get(cfg, "train"), total_loss_tokens=_get(cfg.mixture, "total_loss_tokens"), stats_meta=meta,
        reference_steps=reference_steps_from(cfg, stats) if _get(model, "recipe") is not None else None,
    )
    plan.write(Path(out_dir) / "plan.json")
    print_plan(plan, console=console, model=_get(model, "name"), cluster=_get(_get(cfg, "cluster"), "name"))
    return plan


# -- display -------------------------------------------------------------------------------------------------------
def _m(x: float) -> str:
    return f"{x / 1e6:,.2f}M" if x >= 1e5 else f"{x:,.0f}"


def print_plan(plan: Plan, console=None, model: str | None = None, cluster: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

    # Wide enough for the table when output is a file or CI log (rich defaults to 80 columns there).
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    t = Table(title=f"plan: mixture={plan.mixture}" + (f" model={model}" if model else "") + (f" cluster={cluster}" if cluster else ""))
    for col in ("source", "category", "fraction", "samples", "loss tokens", "share", "requested"):
        t.add_column(col, justify="left" if col in ("source", "category") else "right")
    for c in plan.categories:
        for s in (p for p in plan.sources if p.category == c.category):
            t.add_row(s.label, s.category, f"{s.fraction:.4f}", _m(s.samples), _m(s.loss_tokens), f"{s.share:.1%}",
                      f"{s.requested_share:.1%}" if s.requested_share is not None else "")
        t.add_row(f"[b]{c.category}[/b]", "", "", f"[b]{_m(c.samples)}[/b]", f"[b]{_m(c.loss_tokens)}[/b]",
                  f"[b]{c.share:.1%}[/b]", f"{c.requested_share:.1%}" if c.requested_share is not None else "natural",
                  end_section=True)
    t.add_row("[b]total[/b]", "", "", f"[b]{_m(plan.samples)}[/b]", f"[b]{_m(plan.loss_tokens)}[/b]", "100%", "")
    console.print(t)
    tr = plan.training
    if tr is not None:
        u = Table(title="training")
        u.add_column("quantity")
        u.add_column("value", justify="right")
        for k, v in (
            ("global batch", f"{tr.global_batch_size} = {tr.micro_batch_size} x {tr.gradient_accumulation_steps} x {tr.gpus}"),
            ("steps / epoch", f"{tr.steps_per_epoch:,}"),
            ("epochs", f"{tr.epochs:.4f} ({tr.epochs_rule})"),
            ("total steps", f"{tr.total_steps:,}" + (f" (reference {tr.reference_steps:,})" if tr.reference_steps else "")),
            ("GPUs / nodes", f"{tr.gpus} / {tr.nodes}" + (f" x {tr.gpus_per_node}" if tr.gpus_per_node else "")),
            ("GPU-hours", (f"{tr.gpu_hours:,.0f}" if tr.gpu_hours is not None else "n/a (no recipe.samples_per_gpu_second)")
             + (f"  (paper: {tr.paper_gpu_hours:,.0f})" if tr.paper_gpu_hours else "")),
            ("wall-clock hours", f"{tr.wall_hours:,.1f}" if tr.wall_hours is not None else "n/a"),
        ):
            u.add_row(k, v)
        console.print(u)
        for note in tr.notes:
            console.print(f"[yellow]note:[/yellow] {note}")


# -- streaming selection -------------------------------------------------------------------------------------------
def _unit_interval(seed: int, source: str, sample_id: str) -> float:
    h = hashlib.blake2b(f"{seed}\x1f{source}\x1f{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def copies_for(sample_id: str, source: str, fraction: float, seed: int = 0) -> int:
    """How many times a sample enters the mixture: floor(fraction), plus one more with probability frac(fraction),
    decided by a seeded hash of its id (deterministic, order-free, nested in the fraction)."""
    whole = math.floor(fraction)
    return whole + (1 if _unit_interval(seed, source, sample_id) < fraction - whole else 0)


@dataclass
class SelectionTally:
    samples: dict[str, int] = field(default_factory=dict)
    loss_tokens: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


def select_samples(
    stream: Iterable[tuple[str, str, float]],
    fractions: Mapping[str, float] | Plan,
    seed: int = 0,
    tally: SelectionTally | None = None,
) -> Iterator[tuple[str, str, int]]:
    """For each (sample_id, source, loss_tokens): yield (sample_id, source, copies) for kept samples (copies >= 1),
    streaming. `tally` (optional) accumulates per-source kept samples / loss tokens (with repeats) and drops, for
    the observed side of the requested-vs-observed table. Sources absent from `fractions` are an error."""
    fr = fractions.fractions() if isinstance(fractions, Plan) else dict(fractions)
    for sample_id, source, loss in stream:
        if source not in fr:
            raise PlanError(f"sample {sample_id}: source {source} is not in the plan ({sorted(fr)})")
        k = copies_for(sample_id, source, fr[source], seed)
        if tally is not None:
            if k:
                tally.samples[source] = tally.samples.get(source, 0) + k
                tally.loss_tokens[source] = tally.loss_tokens.get(source, 0.0) + k * float(loss)
            else:
                tally.dropped[source] = tally.dropped.get(source, 0) + 1
        if k:
            yield sample_id, source, k
