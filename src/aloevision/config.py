"""Structured configs: the schema every YAML in conf/ is merged into (strict: a misspelled key or a wrong type fails
at start-up naming the key), plus the checks that need several values at once (batch arithmetic, shares)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

STAGES = ("all", "plan", "ingest", "hash", "leakage", "score", "filter", "adversarial", "tokens", "images", "mix",
          "export", "train", "eval", "report")
CATEGORIES = ("medical_multimodal", "medical_text", "general_multimodal", "general_text")


@dataclass
class SourceConfig:
    """One training source: where it lives and how to read it (conf/source/<name>.yaml)."""

    name: str = MISSING
    adapter: str = MISSING  # key in aloevision.sources.ADAPTERS
    domain: str = MISSING  # medical | general
    modality: str = MISSING  # multimodal | text
    path: str = MISSING  # Hugging Face dataset id, local folder or file
    files: List[str] = field(default_factory=list)  # data files (globs) inside `path`; adapter default when empty
    images: Optional[str] = None  # image folder, archive or archive glob; adapter default when None
    hf_config: Optional[str] = None
    split: str = "train"
    boxes: bool = False
    cap: Optional[int] = None  # at most this many samples after cleaning (seeded subsample), e.g. MedTrinity 400K
    options: Dict[str, Any] = field(default_factory=dict)  # adapter-specific switches


@dataclass
class MixtureConfig:
    """Which sources, and the target share of loss tokens per category (conf/mixture/)."""

    name: str = MISSING
    sources: Dict[str, SourceConfig] = field(default_factory=dict)
    # category -> share of loss tokens; must sum to 1 over the categories present. Empty: keep natural shares.
    targets: Dict[str, float] = field(default_factory=dict)
    source_shares: Dict[str, float] = field(default_factory=dict)  # optional share of a source within its category
    max_repeat: float = 1.0  # a source may be repeated up to this factor to meet a target
    # Smaller ablation mixtures train for at least the optimizer steps of this reference (paper Appendix D).
    reference_steps: Optional[int] = None
    # ... or the steps of this mixture planned on the same stats with the same recipe (e.g. "final").
    reference_mixture: Optional[str] = None
    share_tolerance: float = 0.0005  # observed shares may differ from targets by this much (Table 1 sums to 99.9%)
    total_loss_tokens: Optional[float] = None  # optional budget: then a source too small for its share is an error


@dataclass
class TinySpec:
    seed: int = 0
    tokenizer_vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_depth: int = 2
    vision_embed_dim: int = 32
    vision_num_heads: int = 2
    rope_theta: float = 1000000.0  # the LLM's M-RoPE base (Qwen2-VL's); smaller = image rows/columns rotate more
    mrope_section: Optional[List[int]] = None  # (temporal, height, width) rotary pairs; None: head_dim/2 split 2:1:1
    min_pixels: int = 3136  # 56 x 56
    max_pixels: int = 12544  # 112 x 112


@dataclass
class RecipeConfig:
    """Training hyper-parameters of a model scale (paper Table 6)."""

    global_batch_size: int = MISSING
    micro_batch_size: int = MISSING
    gradient_accumulation_steps: int = MISSING
    gpus: int = MISSING  # world size the recipe was written for
    learning_rate: float = MISSING
    optimizer: str = "adamw_torch"  # transformers optim name, e.g. adamw_torch, adamw_bnb_8bit
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    epochs: float = 1.0
    weight_decay: float = 0.0
    bf16: bool = True
    gradient_checkpointing: bool = True
    zero_stage: int = 3  # 0 = no DeepSpeed
    zero_offload: str = "none"  # none | cpu | nvme (optimizer + parameter offload under ZeRO-3)
    max_grad_norm: float = 1.0
    gpu_hours_estimate: Optional[float] = None  # the paper's figure, shown beside the plan's estimate
    samples_per_gpu_second: Optional[float] = None  # throughput used by the plan's GPU-hour estimate


@dataclass
class ModelConfig:
    name: str = MISSING
    checkpoint: Optional[str] = None  # Hub id or local path; None builds the tiny model offline
    tiny: Optional[TinySpec] = None
    min_pixels: int = 3136
    max_pixels: int = 1003520  # Qwen2-VL default 12845056 is too large for SFT; 1280*28*28
    max_length: int = 4096
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    recipe: RecipeConfig = field(default_factory=RecipeConfig)


@dataclass
class ClusterConfig:
    """Where jobs run (conf/cluster/): resources for the submitit launcher and for the plan."""

    name: str = MISSING
    kind: str = "local"  # local | slurm
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 16
    timeout_min: int = 60
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    setup: List[str] = field(default_factory=list)  # shell lines run before each job (module load, venv, ...)
    max_num_timeout: int = 3  # requeues on timeout / preemption
    array_parallelism: int = 64
    data_shards: int = 1  # data stages split into this many shards (a job array on SLURM)
    data_shard: Optional[int] = None  # this job's shard (else SLURM_ARRAY_TASK_ID), e.g. -m cluster.data_shard=range(0,64)
    gpu_type: Optional[str] = None  # e.g. "H100 64GB": the plan's throughput table and the scorer's GPU layout
    gpu_memory_gb: Optional[float] = None  # memory of one GPU (GiB)


@dataclass
class ThresholdConfig:
    min_score: Optional[float] = None  # keep score >= this (1-5 LVLM quality score)
    min_ppl: Optional[float] = None  # keep perplexity >= this (lower flags trivial answers)
    max_ppl: Optional[float] = None  # keep perplexity <= this (higher flags noisy/wrong answers)


@dataclass
class ScorerConfig:
    backend: str = "transformers"  # transformers | vllm
    tag_model: Optional[str] = None  # None: the run's model (the tiny model in the demo)
    ppl_model: Optional[str] = None
    batch_size: int = 8
    max_new_tokens: int = 96
    trust_remote_code: bool = False
    # vLLM (backend=vllm): None = derived by aloevision.gpus.gpu_layout from the model and the cluster's GPUs
    tensor_parallel_size: Optional[int] = None
    gpu_memory_utilization: Optional[float] = None  # vLLM's per-instance share of each GPU's memory
    max_model_len: int = 8192  # prompt + answer tokens per request (longer samples: a counted scorer_error)
    ppl_batch_tokens: int = 4096  # perplexity forwards are chunked to this many tokens (bounds activation memory)


@dataclass
class FilterConfig:
    name: str = MISSING
    enabled: bool = True
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    default: ThresholdConfig = field(default_factory=ThresholdConfig)
    per_source: Dict[str, ThresholdConfig] = field(default_factory=dict)


@dataclass
class LeakageConfig:
    name: str = MISSING
    enabled: bool = True
    radius: int = 0  # Hamming radius on 64-bit pHash; 0 = the paper's exact match
    eval_sets: List[str] = field(default_factory=list)  # keys of eval.benchmarks whose images are hashed
    fast_hash: bool = True  # bit-identical fast hasher; False uses imagehash.phash itself


@dataclass
class BenchmarkConfig:
    name: str = MISSING
    kind: str = MISSING  # mcq | yesno | open | text_mcq | probmed
    harness: str = "builtin"  # builtin (vlmevalkit / lmms_eval: aliases of it) | lm_eval
    loader: str = MISSING  # key in aloevision.evalsets.LOADERS
    path: str = MISSING
    split: str = "test"
    options: Dict[str, Any] = field(default_factory=dict)
    max_samples: Optional[int] = None


@dataclass
class HeartConfig:
    """HEART-style robustness benchmark (paper Table 4), built from classification/detection eval sources."""

    enabled: bool = False
    sources: Dict[str, str] = field(default_factory=dict)  # name -> base-item JSONL; "demo" builds the demo sources
    ar_source: str = "fracatlas"  # never evaluate on the AR training source
    iou_threshold: float = 0.5
    iou_inclusive: bool = True
    iou_match: str = "first"  # first box of the answer | any box of the answer


@dataclass
class EvalConfig:
    name: str = MISSING
    benchmarks: Dict[str, BenchmarkConfig] = field(default_factory=dict)
    max_new_tokens: int = 32
    batch_size: int = 8
    # image pixel bounds at evaluation (None: the model's training bounds); conf/eval/paper.yaml: VLMEvalKit's Qwen2-VL
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    matching: str = "exact"  # exact (VLMEvalKit can_infer / ProbMed's scorer) | lenient; both are logged per item
    probmed_metric: str = "official"  # official (ProbMed's scorer, adversarial pairs) | pair | question
    hf_datasets_dir: Optional[str] = None  # local copies of lm-eval's Hub datasets: <dir>/<owner>/<name>
    judges: List[str] = field(default_factory=list)  # model ids / paths; "self" = the evaluated model
    judge_backend: str = "transformers"
    model: Optional[str] = None  # run folder, checkpoint or Hub id to evaluate when this run trains none
    labels_file: Optional[str] = None  # human 0/0.5/1 labels for open answers: agreement with the judges
    # Control: every evaluation image replaced by a uniform grey one of the same size (answers from pixels -> chance).
    blank_images: bool = False
    # JSON list of records with `eval_items` [{benchmark, id}] known to be leaked into training (the demo's
    # PLANTED.json): their mean score is reported as eval/leaked_items (Table 8's leaked-items column).
    leaked_items: Optional[str] = None
    heart: HeartConfig = field(default_factory=HeartConfig)


@dataclass
class ArRecipeConfig:
    classification_variants: List[str] = field(default_factory=lambda: ["base", "captions", "prompt", "sycophancy"])
    detection_variants: List[str] = field(default_factory=lambda: ["captions", "prompt", "sycophancy", "legends"])
    detection_unit: str = "instance"  # one detection sample per fracture instance, attacks rotating


@dataclass
class AttackSettings:
    min_side: int = 224
    font_frac: float = 0.05
    min_font_px: int = 12
    max_wrong_iou: float = 0.1
    max_pixels: Optional[int] = None  # None: the model's max_pixels
    banner_position: str = "auto"


@dataclass
class AdversarialConfig:
    """The AR training set (second SFT stage) built from FracAtlas with all four attacks (paper §5.1)."""

    enabled: bool = False  # stage=all builds it and trains on it (the AR experiment)
    source: Optional[SourceConfig] = None  # the FracAtlas source; None: conf/source/fracatlas.yaml via the experiment
    seed: int = 0
    ar: ArRecipeConfig = field(default_factory=ArRecipeConfig)
    attack: AttackSettings = field(default_factory=AttackSettings)


@dataclass
class TrainConfig:
    """Run-level training switches; the hyper-parameters come from model.recipe."""

    enabled: bool = True
    init_from: Optional[str] = None  # run folder or checkpoint path to start from (second stage)
    max_steps: Optional[int] = None  # override (demo / tests); None: from epochs
    world_size: Optional[int] = None  # None: from the environment (1 locally)
    learning_rate: Optional[float] = None  # override of model.recipe.learning_rate
    micro_batch_size: Optional[int] = None
    gradient_accumulation_steps: Optional[int] = None
    logging_steps: int = 1
    save_steps: int = 500
    save_total_limit: int = 2
    save_interval_min: Optional[float] = None  # also checkpoint when this long has passed since the last one
    num_workers: int = 0  # dataloader worker processes per rank (conf/cluster/* sets them per node)
    pin_memory: bool = True  # pinned host memory for batches (GPU runs only)
    resume: bool = True  # resume from the latest checkpoint in the run folder


@dataclass
class WandbConfig:
    project: str = "aloe-vision"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (online with credentials, else offline) | online | offline | disabled
    tags: List[str] = field(default_factory=list)
    dir: Optional[str] = None  # default: the run folder


@dataclass
class PathsConfig:
    root: str = MISSING
    data_dir: str = MISSING  # real datasets (cluster)
    demo_dir: str = MISSING  # generated demo data
    cache_dir: str = MISSING  # artifact cache shared by every job of a sweep
    output_dir: str = MISSING  # this job's run folder


@dataclass
class ReportConfig:
    group: Optional[str] = None  # the sweep / experiment whose runs are tabulated
    runs_dir: Optional[str] = None  # where run records are searched (default: outputs/)
    source: str = "auto"  # auto | disk | wandb
    wandb_report: bool = False


@dataclass
class MixConfig:
    # Deprecated here: the portable export is what gets published (`export.push_to_hub`); still honoured by export.
    push_to_hub: Optional[str] = None


@dataclass
class ExportConfig:
    """`stage=export`: the mixture as portable parquet with the images embedded (docs/data.md)."""
    max_shard_bytes: int = 1_000_000_000  # a shard is closed before it passes this many bytes of rows + images
    push_to_hub: Optional[str] = None  # a Hub dataset repo id; uploaded only when credentials exist


@dataclass
class PlanConfig:
    stats: Optional[str] = None  # CSV/JSON of per-source token statistics; None: measured by this run's data
    # Throughput overrides, samples/s per GPU by stage (tag, perplexity, train, eval, judges): e.g. a measured rate
    throughput: Dict[str, float] = field(default_factory=dict)
    measured: List[str] = field(default_factory=list)  # run folders / files with measured throughput (train_progress.json, score_throughput.json)
    tokens_per_sample: Optional[float] = None  # prompt tokens per sample for the scorers when the stats lack total_tokens


@dataclass
class Config:
    stage: str = "all"
    seed: int = 0
    # The experiment / sweep this run belongs to: the W&B group and the outputs/ folder. (`experiment` is the group of
    # presets, `+experiment=<name>`; each preset sets this to its own name.)
    group: str = "default"
    # What a single-stage job does with upstream results it does not find in the artifact store: `build` them here
    # (the default), or `require` them (cluster jobs: fail at once naming the command that builds them).
    upstream: str = "build"
    mixture: MixtureConfig = MISSING
    model: ModelConfig = MISSING
    cluster: ClusterConfig = MISSING
    filter: FilterConfig = MISSING
    leakage: LeakageConfig = MISSING
    eval: EvalConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)


def nodes_for(gpus, gpus_per_node) -> int:
    """`${aloe.nodes:gpus,gpus_per_node}`: nodes a recipe's GPU count needs (cluster.nodes follows model.recipe.gpus)."""
    g, per = int(gpus), int(gpus_per_node)
    return 1 if per <= 0 else max(1, -(-g // per))


TRAINING_STAGES = ("all", "train")  # jobs that start the distributed training (every node, one task per GPU)


def for_stage(stage, training_value, other_value):
    """`${aloe.for_stage:${stage},a,b}`: `a` for a job that trains (stage all/train), `b` for every other stage.
    The GPU cluster configs use it so that data, eval and report jobs (job-array shards included) take one task on
    one node instead of the training job's nodes x GPUs."""
    return training_value if str(stage) in TRAINING_STAGES else other_value


def output_dir() -> str:
    """`${aloe.output_dir:}`: the job's run folder (Hydra's runtime.output_dir); before a job runs (`--cfg job
    --resolve`) the folder a run would get."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    if not OmegaConf.is_missing(hc.runtime, "output_dir") and hc.runtime.output_dir:
        return str(hc.runtime.output_dir)
    return str(hc.run.dir)


def _register_resolvers() -> None:
    """The `${aloe.*:}` resolvers. Also run when this module is imported: a submitit job on a SLURM node resolves its
    run folder (`${aloe.run_tag:}`, `${group}`) from a config it unpickled, which imports this module (the schema's
    dataclasses) but never runs launch.py's `register_configs()`."""
    import os

    from omegaconf import OmegaConf

    def _tracking(name: str):
        def call(*args):
            from aloevision import tracking

            return getattr(tracking, name)(*args)

        return call

    for name, fn in (("aloe.nodes", nodes_for), ("aloe.for_stage", for_stage),
                     # run and sweep folders named by the choices that differ (`_mixture-final`), the default group
                     ("aloe.run_tag", _tracking("folder_tag")), ("aloe.group", _tracking("default_group")),
                     ("aloe.output_dir", output_dir),
                     # The launch directory. (${hydra:runtime.cwd} is not set yet when Hydra resolves a multirun's
                     # sweep dir.)
                     ("aloe.cwd", os.getcwd)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def register_configs() -> None:
    _register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, node in (
        ("mixture", MixtureConfig),
        ("model", ModelConfig),
        ("cluster", ClusterConfig),
        ("filter", FilterConfig),
        ("leakage", LeakageConfig),
        ("eval", EvalConfig),
        ("source", SourceConfig),
    ):
        cs.store(group=group, name=f"base_{group}", node=node)


def target_shares_problem(targets: dict) -> str | None:
    """What is wrong with a mixture's category targets (unknown category, shares not summing to 1), or None."""
    if not targets:
        return None
    bad = [k for k in targets if k not in CATEGORIES]
    if bad:
        return f"mixture.targets has unknown categories {bad}; use {', '.join(CATEGORIES)}"
    total = sum(targets.values())
    if abs(total - 1.0) > 1e-6:
        return (f"mixture.targets must sum to 1 (they sum to {total:.4f}): "
                + ", ".join(f"{k}={v}" for k, v in targets.items()))
    return None


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and says how to fix it."""


def unknown_keys(node, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys in schema-checked sections that the schema does not have, with the schema's keys at that level.
    Hydra's `+key=value` adds a key even to a structured (struct) node, so `+train.max_step=5` would otherwise be
    accepted and ignored."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    found: list[tuple[str, list[str]]] = []
    if isinstance(node, DictConfig):
        typ = OmegaConf.get_type(node)
        fields = [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ) else None
        for key in node.keys():
            path = f"{prefix}{key}"
            if fields is not None and key not in fields:
                found.append((path, fields))
                continue
            if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                found += unknown_keys(child, f"{path}.")
    return found


def validate(cfg) -> None:
    """Cross-field checks that structured configs cannot express. Raises ConfigError."""
    bad = unknown_keys(cfg)
    if bad:
        import difflib

        msgs = []
        for path, fields in bad:
            near = difflib.get_close_matches(path.rsplit(".", 1)[-1], fields, n=1)
            msgs.append(f"'{path}' is not a config key" + (f" (did you mean '{path.rsplit('.', 1)[0]}.{near[0]}'?)"
                                                          if near and "." in path else
                                                          f" (did you mean '{near[0]}'?)" if near else ""))
        raise ConfigError("; ".join(msgs) + ". `+key=` adds a key only to free-form sections (mixture.targets, "
                          "mixture.sources, source options ...); settings in the schema are set without `+`")
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage!r} is not a stage; choose one of {', '.join(STAGES)}")
    if cfg.upstream not in ("build", "require"):
        raise ConfigError(f"upstream={cfg.upstream!r}: use 'build' (build missing upstream artifacts in this job) or "
                          "'require' (fail naming the command that builds them)")
    for key, src in cfg.mixture.sources.items():
        if src.domain not in ("medical", "general"):
            raise ConfigError(f"mixture.sources.{key}.domain={src.domain!r}: use 'medical' or 'general'")
        if src.modality not in ("multimodal", "text"):
            raise ConfigError(f"mixture.sources.{key}.modality={src.modality!r}: use 'multimodal' or 'text'")
    if cfg.adversarial.enabled and cfg.train.enabled and cfg.stage in ("all", "train") and not cfg.train.init_from:
        raise ConfigError(
            "adversarial.enabled trains the second (AR) stage from a first-stage model: set "
            "train.init_from=<stage-1 run folder or checkpoint>"
        )
    problem = target_shares_problem(dict(cfg.mixture.targets))
    if problem:
        raise ConfigError(problem)


_register_resolvers()  # see its docstring: jobs that unpickle a config get the resolvers too
