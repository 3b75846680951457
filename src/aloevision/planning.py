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
Selection is per sample and deterministic (`copies_for`: a seeded hash of the sample id), nested in the
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
from typing import Any, Callable, Iterable, Mapping

from aloevision.config import CATEGORIES, ConfigError
from aloevision.gpus import GPU_SPECS, MODEL_SPECS, ModelSpec  # noqa: F401  (ModelSpec: re-exported)

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
    costs: list[StageCost] = field(default_factory=list)  # every GPU stage: GPU-hours, wall time, throughput source
    memory: list[MemoryEstimate] = field(default_factory=list)  # per-GPU memory of the training recipe

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
    names = set(_mixture_sources(cfg.mixture if mixture is None else mixture))
    plan.costs = price_stages(cfg, plan, stats)
    plan.memory = recipe_memory(cfg, [s for s in stats if s.name in names] or stats)
    plan.write(Path(out_dir) / "plan.json")
    print_plan(plan, console=console, model=_get(model, "name"), cluster=_get(_get(cfg, "cluster"), "name"))
    return plan


# -- what every GPU stage costs, and whether the training recipe fits a GPU --------------------------------------
PREFILL_MFU = 0.35  # vLLM prefill, share of peak bf16 (assumption)
FORWARD_MFU = 0.25  # transformers no-grad forward (perplexity), share of peak (assumption)
HBM_EFFICIENCY = 0.6  # decode steps read the weights once per step at this share of the bandwidth (assumption)
TAG_PROMPT_TOKENS = 700  # the Appendix A.1 taxonomy prompt around a sample (approximate)
TAG_ANSWER_TOKENS = 40  # the tag line (conf/filter/paper.yaml: "~40 tokens")
DEFAULT_TOKENS_PER_SAMPLE = 1000.0  # text + image tokens of a sample when the stats do not say (assumption)
MAX_CONCURRENT = 256  # vLLM's default max_num_seqs
EVAL_PROMPT_TOKENS = 1000.0
EVAL_ANSWER_TOKENS = 64  # mean generated tokens per benchmark item (MCQ letters to short answers; assumption)
# Item counts of the paper's benchmarks where datasets.md verifies them (others: eval.benchmarks.<k>.max_samples).
KNOWN_EVAL_ITEMS = {"probmed": 57132, "careqa_vision_mcq": 165, "careqa_vision_open": 136}


@dataclass
class StageCost:
    stage: str
    items: float
    model: str
    gpus_per_job: int
    samples_per_gpu_second: float | None
    throughput_source: str
    gpu_hours: float | None
    wall_hours: float | None
    notes: list[str] = field(default_factory=list)


def _gpu(cluster: Any) -> tuple[str | None, dict[str, Any] | None]:
    kind = _get(cluster, "gpu_type")
    return kind, GPU_SPECS.get(str(kind)) if kind else None


def _measured(paths: Iterable[str]) -> dict[str, tuple[float, str]]:
    """stage -> (samples/s per GPU, where it was measured) from run folders / files a previous run wrote."""
    out: dict[str, tuple[float, str]] = {}
    for raw in paths or []:
        p = Path(str(raw))
        files = [p] if p.is_file() else [p / "train_progress.json", p / "score_throughput.json"]
        for f in files:
            if not f.is_file():
                continue
            data = json.loads(f.read_text())
            if f.name.startswith("train") and data.get("samples_per_gpu_second"):
                out["train"] = (float(data["samples_per_gpu_second"]), f"measured: {f} ({data.get('device')})")
            for stage in ("tag", "perplexity"):
                if data.get(f"{stage}_samples_per_gpu_second"):
                    out[stage] = (float(data[f"{stage}_samples_per_gpu_second"]), f"measured: {f}")
    return out


def _rate(stage: str, derived: float | None, derivation: str, plan_cfg: Any, measured: dict) -> tuple[float | None, str]:
    over = (_get(plan_cfg, "throughput") or {}).get(stage)
    if over:
        return float(over), f"plan.throughput.{stage}"
    if stage in measured:
        return measured[stage]
    return derived, derivation


def _cost(stage, items, model, gpus, rate, source, parallel_jobs, notes=None) -> StageCost:
    gpu_h = items / rate / 3600 if rate else None
    wall = gpu_h / gpus / max(1, parallel_jobs) if gpu_h is not None else None
    return StageCost(stage, items, model, gpus, rate, source, gpu_h, wall, list(notes or []))


def price_stages(cfg: Any, plan: "Plan", stats: list[SourceStats]) -> list[StageCost]:
    """Per GPU stage: items, model, GPUs, GPU-hours and wall time on the cluster, with the throughput assumption
    used and its source (an explicit plan.throughput or a measured rate wins over the arithmetic defaults)."""
    cluster, plan_cfg = _get(cfg, "cluster"), _get(cfg, "plan")
    kind, gpu = _gpu(cluster)
    gpn = int(_get(cluster, "gpus_per_node", 0) or 0)
    parallel = min(int(_get(cluster, "data_shards", 1) or 1), int(_get(cluster, "array_parallelism", 1) or 1))
    measured = _measured(_get(plan_cfg, "measured") or [])
    out: list[StageCost] = []
    node = max(1, gpn)
    names = set(_mixture_sources(cfg.mixture)) if _get(cfg, "mixture") is not None else set()
    pool = [s for s in stats if not names or s.name in names]
    scored = sum(s.samples for s in pool)
    with_totals = [s for s in pool if s.total_tokens]
    if with_totals and len(with_totals) == len(pool):
        tokens, tok_src = sum(s.total_tokens for s in pool) / max(1.0, scored), "the stats' total_tokens"
    else:
        tokens = float(_get(plan_cfg, "tokens_per_sample") or DEFAULT_TOKENS_PER_SAMPLE)
        tok_src = "plan.tokens_per_sample" if _get(plan_cfg, "tokens_per_sample") else "assumed (stats lack total_tokens)"
    where = f"{kind}: {gpu['bf16_tflops']:.0f} TFLOPs bf16, {gpu['hbm_tb_s']} TB/s (nominal)" if gpu else None

    f = _get(cfg, "filter")
    sc = _get(f, "scorer")
    if f is not None and _get(f, "enabled") and sc is not None:
        tag_id = _get(sc, "tag_model") or "Qwen/Qwen2.5-VL-72B-Instruct"
        ppl_id = _get(sc, "ppl_model") or "Qwen/Qwen2-VL-7B-Instruct"
        tag, ppl = MODEL_SPECS.get(tag_id), MODEL_SPECS.get(ppl_id)
        notes = [f"{scored:,.0f} samples of the stats (scoring runs before filtering: the real pool is larger), "
                 f"{tokens:,.0f} tokens/sample ({tok_src})", "tag and perplexity run in the same job (one node): "
                 "the node is held for both"]
        rate_tag = rate_ppl = None
        src_tag = src_ppl = "n/a (no GPU type or unknown model)"
        if gpu and tag is not None and _get(sc, "backend") != "rules":
            tp, kv_tokens = node, None
            try:
                from aloevision.gpus import layout_for

                lay = layout_for(sc, cluster, tag_model=tag_id, ppl_model=ppl_id)
                if lay is not None:
                    tp, kv_tokens = lay.tensor_parallel_size, lay.kv_cache_tokens
            except ConfigError as e:
                notes.append(f"no valid vLLM layout: {e}")
            t_in, t_out = tokens + TAG_PROMPT_TOKENS, TAG_ANSWER_TOKENS
            prefill = 2 * tag.params * t_in / (tp * gpu["bf16_tflops"] * 1e12 * PREFILL_MFU)
            step = tag.params * 2 / tp / (gpu["hbm_tb_s"] * 1e12 * HBM_EFFICIENCY)
            conc = max(1.0, min(MAX_CONCURRENT, (kv_tokens or MAX_CONCURRENT * (t_in + t_out)) / (t_in + t_out)))
            per_sample = prefill + t_out * step / conc
            rate_tag = 1 / per_sample / node  # per GPU of the held node
            src_tag = (f"arithmetic: prefill 2·{tag.params / 1e9:.1f}B·{t_in:,.0f} tokens at {PREFILL_MFU:.0%} of peak on "
                       f"tp={tp}, + {t_out} decode steps ({step * 1e3:.0f} ms, {conc:.0f} concurrent); {where}")
        if gpu and ppl is not None:
            per_sample = 2 * ppl.params * tokens / (gpu["bf16_tflops"] * 1e12 * FORWARD_MFU)
            rate_ppl = 1 / per_sample / node
            src_ppl = (f"arithmetic: forward 2·{ppl.params / 1e9:.1f}B·{tokens:,.0f} tokens at {FORWARD_MFU:.0%} of peak "
                       f"on one GPU; {where}")
        rate_tag, src_tag = _rate("tag", rate_tag, src_tag, plan_cfg, measured)
        rate_ppl, src_ppl = _rate("perplexity", rate_ppl, src_ppl, plan_cfg, measured)
        out.append(_cost("score/tag", scored, tag_id, node, rate_tag, src_tag, parallel, notes))
        out.append(_cost("score/perplexity", scored, ppl_id, node, rate_ppl, src_ppl, parallel))

    tr = plan.training
    model = _get(cfg, "model")
    if tr is not None:
        rate, src = _rate("train", tr.samples_per_gpu_second,
                          "model.recipe.samples_per_gpu_second (≈ the paper's GPU-hours / 3.57M samples)", plan_cfg,
                          measured)
        out.append(_cost("train", tr.samples_seen, str(_get(model, "name")), tr.gpus, rate, src, 1,
                         [f"{tr.total_steps:,} steps x global batch {tr.global_batch_size}"]))

    ev = _get(cfg, "eval")
    spec = MODEL_SPECS.get(str(_get(model, "name"))) or MODEL_SPECS.get(str(_get(model, "checkpoint")))
    if ev is not None and gpu and spec is not None:
        items, unknown = 0, []
        for key, b in (_get(ev, "benchmarks") or {}).items():
            n = _get(b, "max_samples") or KNOWN_EVAL_ITEMS.get(str(key))
            if n:
                items += int(n)
            else:
                unknown.append(str(key))
        gpus = 1 if spec.weights_gib * 1.25 <= float(_get(cluster, "gpu_memory_gb", 64) or 64) else node
        batch = int(_get(ev, "batch_size", 8) or 8)
        prefill = 2 * spec.params * EVAL_PROMPT_TOKENS / (gpus * gpu["bf16_tflops"] * 1e12 * FORWARD_MFU)
        # device_map="auto" runs the layers GPU after GPU: one decode step reads all weights at one GPU's bandwidth.
        step = spec.params * 2 / (gpu["hbm_tb_s"] * 1e12 * HBM_EFFICIENCY)
        # Greedy answers stop at end-of-turn: max_new_tokens is a cap, not what an item costs.
        new = min(int(_get(ev, "max_new_tokens", 32) or 32), EVAL_ANSWER_TOKENS)
        per_item = prefill + new * step / batch
        rate, src = _rate("eval", 1 / per_item / gpus,
                          f"arithmetic: transformers generate, batch {batch}, {new} new tokens per item (assumed; "
                          f"eval.max_new_tokens caps it), {EVAL_PROMPT_TOKENS:.0f}-token prompts, one job; {where}",
                          plan_cfg, measured)
        notes = [f"items of benchmarks without a known size are not counted: {', '.join(unknown)} "
                 "(set eval.benchmarks.<k>.max_samples)"] if unknown else []
        out.append(_cost("eval", items, str(_get(model, "name")), gpus, rate, src, 1, notes))
        judges = [j for j in (_get(ev, "judges") or []) if j not in ("self", "rules")]  # those load no model
        open_items = sum(int(_get(b, "max_samples") or KNOWN_EVAL_ITEMS.get(str(k), 0))
                         for k, b in (_get(ev, "benchmarks") or {}).items() if _get(b, "kind") == "open")
        for j in judges:
            js = MODEL_SPECS.get(str(j))
            if js is None:
                out.append(StageCost(f"judge:{str(j).split('/')[-1]}", open_items, str(j), node, None, "n/a (unknown model)", None, None))
                continue
            jg = 1 if js.weights_gib * 1.25 <= float(_get(cluster, "gpu_memory_gb", 64) or 64) else node
            per = (2 * js.params * 400 / (jg * gpu["bf16_tflops"] * 1e12 * FORWARD_MFU)
                   + 10 * js.params * 2 / (gpu["hbm_tb_s"] * 1e12 * HBM_EFFICIENCY) / batch)
            rate, src = _rate("judges", 1 / per / jg, f"arithmetic: 400-token judge prompt, 10-token verdict; {where}",
                              plan_cfg, measured)
            out.append(_cost(f"judge:{str(j).split('/')[-1]}", open_items, str(j), jg, rate, src, 1))
    return out


# -- per-GPU memory of the training recipe under ZeRO-3 --------------------------------------------------------------
@dataclass
class MemoryEstimate:
    model: str
    gpus: int
    micro_batch: int
    seq_len: int
    parameters_gib: float
    gradients_gib: float
    optimizer_gib: float
    largest_layer_gib: float
    activations_gib: float
    logits_gib: float
    total_gib: float
    gpu_gib: float | None
    fits: bool | None
    basis: str
    advice: str | None = None


def zero3_model_states_bytes(total_params: float, largest_layer_params: float, total_gpus: int,
                             optimizer: str = "adamw_torch") -> float:
    """Per-GPU bytes of parameters + gradients + optimizer states under ZeRO-3 without offload: DeepSpeed's own
    rule (`estimate_zero3_model_states_mem_needs`: 4 x largest layer + 18 bytes x params / GPUs for Adam: bf16
    parameters and gradients, fp32 master weights, momentum and variance, fp32 gradient partition). An 8-bit
    optimizer (bitsandbytes) keeps momentum and variance in 1 byte each: 12 bytes instead of 18."""
    per_param = 12 if "8bit" in str(optimizer) else 18
    return 4 * largest_layer_params + per_param * total_params / total_gpus


def training_memory(spec: ModelSpec, *, gpus: int, micro_batch: int, seq_len: int, optimizer: str,
                    gradient_checkpointing: bool = True, gpu_gib: float | None = None, name: str = "",
                    basis: str = "") -> MemoryEstimate:
    """Per-GPU memory of one training step. Activations with checkpointing: each layer's input (b·s·h bf16) kept,
    plus one layer recomputed in backward (b·s·(34·h + 4·i) bytes: the Korthikanti et al. count with flash
    attention, SwiGLU's intermediate added); without checkpointing every layer's. Logits: bf16 logits, their fp32
    copy for the loss and its gradient (10 bytes per vocabulary entry per token) — the largest term at long
    sequences."""
    states = zero3_model_states_bytes(spec.params, spec.largest_layer_params, gpus, optimizer)
    largest = 4 * spec.largest_layer_params
    p = 2 * spec.params / gpus
    g = 2 * spec.params / gpus
    o = states - largest - p - g
    tokens = micro_batch * seq_len
    layer = tokens * (34 * spec.hidden + 4 * spec.intermediate)
    acts = (tokens * spec.hidden * 2 * spec.layers + layer) if gradient_checkpointing else layer * spec.layers
    logits = tokens * spec.vocab * 10
    gib = 2**30
    total = (states + acts + logits) / gib
    return MemoryEstimate(name, gpus, micro_batch, seq_len, p / gib, g / gib, o / gib, largest / gib, acts / gib,
                          logits / gib, total, gpu_gib, None if gpu_gib is None else total <= gpu_gib, basis)


def recipe_memory(cfg: Any, stats: list[SourceStats] | None = None) -> list[MemoryEstimate]:
    """The training recipe's per-GPU memory at the recipe's micro batch, at model.max_length (worst case) and at the
    mean sample length when the stats give total tokens (typical)."""
    model = _get(cfg, "model")
    spec = MODEL_SPECS.get(str(_get(model, "name"))) or MODEL_SPECS.get(str(_get(model, "checkpoint")))
    r = _get(model, "recipe")
    if spec is None or r is None:
        return []
    micro, _, gpus = batch_factors(r, micro_batch_size=_get(_get(cfg, "train"), "micro_batch_size"),
                                   world_size=_get(_get(cfg, "train"), "world_size"))
    mem = _get(_get(cfg, "cluster"), "gpu_memory_gb")
    kw = dict(gpus=gpus, micro_batch=micro, optimizer=str(_get(r, "optimizer")),
              gradient_checkpointing=bool(_get(r, "gradient_checkpointing")), gpu_gib=float(mem) if mem else None,
              name=str(_get(model, "name")))
    out = [training_memory(spec, seq_len=int(_get(model, "max_length")), basis="worst case: every row at "
                           "model.max_length", **kw)]
    worst = out[0]
    if worst.fits is False:  # the largest micro batch that fits, keeping the global batch (more accumulation)
        gb = int(_get(r, "global_batch_size"))
        for m in range(micro - 1, 0, -1):
            if gb % (m * gpus) == 0 and training_memory(spec, seq_len=worst.seq_len, **{**kw, "micro_batch": m}).fits:
                worst.advice = (f"micro batch {m} fits the worst case: train.micro_batch_size={m} "
                                f"train.gradient_accumulation_steps={gb // (m * gpus)} (same global batch {gb})")
                break
    if stats and all(s.total_tokens for s in stats):
        mean, src = sum(s.total_tokens for s in stats) / max(1.0, sum(s.samples for s in stats)), "the stats' mean"
    else:
        given = _get(_get(cfg, "plan"), "tokens_per_sample")
        mean = float(given or DEFAULT_TOKENS_PER_SAMPLE)
        src = "plan.tokens_per_sample" if given else "an assumed mean (the stats lack total_tokens)"
    out.append(training_memory(spec, seq_len=int(math.ceil(mean)), basis=f"typical: rows at {src} length (padding "
                               "to the longest row of a batch adds to this)", **kw))
    return out


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
    if plan.costs:
        c = Table(title="GPU stages (throughput in samples/s per GPU; its source below)")
        for col in ("stage", "items", "model", "GPUs/job", "samples/s/GPU", "GPU-hours", "wall h"):
            c.add_column(col, justify="left" if col in ("stage", "model") else "right")
        for i, k in enumerate(plan.costs, 1):
            c.add_row(f"{k.stage} [{i}]", _m(k.items), k.model, str(k.gpus_per_job),
                      f"{k.samples_per_gpu_second:.3g}" if k.samples_per_gpu_second else "n/a",
                      f"{k.gpu_hours:,.1f}" if k.gpu_hours is not None else "n/a",
                      f"{k.wall_hours:,.1f}" if k.wall_hours is not None else "n/a")
        total = sum(k.gpu_hours for k in plan.costs if k.gpu_hours is not None)
        c.add_row("[b]total[/b]", "", "", "", "", f"[b]{total:,.0f}[/b]", "")
        console.print(c)
        for i, k in enumerate(plan.costs, 1):
            console.print(f"[{i}] {k.stage}: {k.throughput_source}", soft_wrap=True)
            for note in k.notes:
                console.print(f"    {note}", soft_wrap=True)
    for m in plan.memory:
        verdict = ("" if m.fits is None else " [green]fits[/green]" if m.fits
                   else f" [red]EXCEEDS the {m.gpu_gib:.0f} GiB GPU[/red]")
        console.print(f"memory per GPU ({m.model}, ZeRO-3 over {m.gpus}, micro {m.micro_batch} x {m.seq_len} tokens; "
                      f"{m.basis}): params {m.parameters_gib:.1f} + grads {m.gradients_gib:.1f} + optimizer "
                      f"{m.optimizer_gib:.1f} + gathered layer {m.largest_layer_gib:.1f} + activations "
                      f"{m.activations_gib:.1f} + logits {m.logits_gib:.1f} = {m.total_gib:.1f} GiB{verdict}")
        if m.advice:
            console.print(f"    {m.advice}")


# -- streaming selection -------------------------------------------------------------------------------------------
def _unit_interval(seed: int, source: str, sample_id: str) -> float:
    h = hashlib.blake2b(f"{seed}\x1f{source}\x1f{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def copies_for(sample_id: str, source: str, fraction: float, seed: int = 0) -> int:
    """How many times a sample enters the mixture: floor(fraction), plus one more with probability frac(fraction),
    decided by a seeded hash of its id (deterministic, order-free, nested in the fraction)."""
    whole = math.floor(fraction)
    return whole + (1 if _unit_interval(seed, source, sample_id) < fraction - whole else 0)
