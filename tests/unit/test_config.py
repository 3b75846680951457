"""Every config file composes against the structured schema; Hydra's CLI behaves as Hydra users expect."""


import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose

GROUPS = ["mixture", "model", "cluster", "filter", "leakage", "eval"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option, tmp_path):
    cfg = compose([f"{group}={option}"], root=tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg[group].name == option


@pytest.mark.parametrize("source", _options("source"))
def test_every_source_file_composes(source, tmp_path):
    cfg = compose([f"+source@mixture.sources.extra={source}"], root=tmp_path)
    src = cfg.mixture.sources.extra
    assert src.domain in ("medical", "general") and src.modality in ("multimodal", "text") and src.adapter


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose([f"+experiment={experiment}"], root=tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.group == experiment


def test_paper_recipes_carry_table6(tmp_path):
    r7 = compose(["model=qwen2vl_7b"], root=tmp_path).model.recipe
    r72 = compose(["model=qwen2vl_72b"], root=tmp_path).model.recipe
    assert (r7.micro_batch_size, r7.gradient_accumulation_steps, r7.gpus, r7.global_batch_size) == (16, 2, 32, 1024)
    assert (r72.micro_batch_size, r72.gradient_accumulation_steps, r72.gpus, r72.global_batch_size) == (4, 5, 100, 2000)
    assert (r7.learning_rate, r72.learning_rate) == (3.75e-5, 1.25e-5)
    assert r72.optimizer == "adamw_bnb_8bit" and r7.optimizer == "adamw_torch"
    for r in (r7, r72):
        assert (r.bf16, r.gradient_checkpointing, r.zero_stage, r.epochs, r.warmup_ratio, r.lr_scheduler_type) == (
            True, True, 3, 1, 0.03, "cosine")


def test_typo_in_a_key_fails_naming_it(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="learning_rat"):
        compose(["model.recipe.learning_rat=1e-4"], root=tmp_path)
    with pytest.raises(Exception, match="micro_batch_size"):
        compose(["model.recipe.micro_batch_size=many"], root=tmp_path)


def test_shares_must_sum_to_one(tmp_path):
    from aloevision.config import ConfigError, validate

    cfg = compose(["+mixture.targets.medical_text=0.7", "+mixture.targets.general_text=0.2"], root=tmp_path)
    with pytest.raises(ConfigError, match="sum to 1"):
        validate(cfg)


def test_cli_help_cfg_and_typo(run_launch):
    out = run_launch("--help", cache=False).stdout
    # The app's help: every stage, every option of every group (not schema entries), every preset, commands.
    from aloevision.config import STAGES

    for stage in STAGES:
        assert f"\n  {stage} " in out, stage
    for group in GROUPS + ["source"]:
        for option in _options(group):
            assert option in out, f"{group}={option} missing from --help"
    for preset in _options("experiment"):
        assert f"\n  {preset} " in out, preset
    assert "base_mixture" not in out and "+experiment=" in out and "stage=report report.group=" in out
    job = run_launch("--cfg", "job", "model=qwen2vl_7b", cache=False).stdout
    assert "Qwen/Qwen2-VL-7B-Instruct" in job and "global_batch_size: 1024" in job
    resolved = run_launch("--cfg", "job", "--resolve", "mixture=final", "stage=plan", cache=False).stdout
    assert "output_dir: " in resolved and "_mixture-final_plan" in resolved and "${" not in resolved
    bad = run_launch("model.recipe.learing_rate=1", check=False, cache=False)
    assert bad.returncode != 0 and "learing_rate" in bad.stderr
    bad_group = run_launch("model=qwen2vl_8b", check=False, cache=False)
    assert bad_group.returncode != 0 and "qwen2vl_7b" in bad_group.stderr  # Hydra lists the available options


def test_plus_key_on_a_schema_section_fails_naming_it(tmp_path):
    """`+train.max_step=5` (what Hydra suggests after a typo) adds a key Hydra's struct check lets through: validation
    rejects it naming the key and the nearest real one; free-form sections still take new keys."""
    from aloevision.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"'train.max_step' is not a config key \(did you mean 'train.max_steps'"):
        validate(compose(["+train.max_step=5"], root=tmp_path))
    with pytest.raises(ConfigError, match="model.recipe.learning_rat"):
        validate(compose(["+model.recipe.learning_rat=1"], root=tmp_path))
    validate(compose(["+mixture.sources.magpie.options.extra=1"], root=tmp_path))  # options: free-form


def test_run_folder_names_from_the_choices(run_launch, tmp_path):
    """A run with other choices is not filed under the demo, and its folder says what differs."""
    run_launch("stage=plan", "mixture=final", "model=qwen2vl_7b",
               "plan.stats=src/aloevision/data/paper_table1.csv".replace("src/", str(REPO / "src") + "/"),
               "wandb.mode=disabled", cache=False)
    (run,) = list(tmp_path.glob("outputs/runs/*/*"))
    assert run.parent.name == "custom" and run.name.endswith("_mixture-final+model-qwen2vl_7b_plan")
    bad = run_launch("stage=plan", "+train.max_step=5", "wandb.mode=disabled", check=False, cache=False)
    assert bad.returncode != 0 and "train.max_step" in bad.stderr and "train.max_steps" in bad.stderr
