"""Recipes (ecg_hub.recipe): every YAML under recipes/ loads and validates, and invalid recipes or
overrides fail with an error naming the key."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml

from ecg_hub.recipe import (
    Component,
    RecipeError,
    apply_overrides,
    instantiate,
    load_recipe,
    read_yaml,
    resolve_recipe_path,
    validate_recipe_file,
)
from ecg_hub.training.pretrain import PretrainRecipe

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
ALL_YAML = sorted(RECIPES_DIR.rglob("*.yaml"))
TINY = RECIPES_DIR / "ecg_jepa" / "pretrain_tiny.yaml"


def test_the_recipes_folder_holds_the_expected_files():
    names = {str(p.relative_to(RECIPES_DIR)) for p in ALL_YAML}
    assert {
        "ecg_jepa/pretrain_base.yaml",
        "ecg_jepa/pretrain_tiny.yaml",
        "ecg_jepa/pretrain_ptbxl_subset.yaml",
        "accelerate/cpu_2proc.yaml",
        "accelerate/single_gpu.yaml",
        "accelerate/multi_gpu_ddp.yaml",
        "accelerate/fsdp.yaml",
    } <= names


@pytest.mark.parametrize("path", ALL_YAML, ids=[str(p.relative_to(RECIPES_DIR)) for p in ALL_YAML])
def test_every_yaml_under_recipes_is_valid(path):
    """Every recipe (any kind: its `recipe:` key names the schema) and every Accelerate config."""
    kind = validate_recipe_file(path)
    if "accelerate" in path.parts:
        assert kind == "accelerate"
    else:
        assert kind == "recipe"


def test_pretrain_recipes_keep_the_papers_hyper_parameters():
    base = load_recipe("ecg_jepa/pretrain_base")
    config = base.model["config"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (
        768,
        12,
        16,
    )
    assert (config["predictor_hidden_size"], config["predictor_num_hidden_layers"]) == (384, 6)
    assert (config["ema_momentum_start"], config["ema_momentum_end"]) == (0.996, 1.0)
    assert base.optimizer["lr"] == 5.5e-5 and base.optimizer["weight_decay"] == 0.05
    assert base.data.batch_size == 64 and base.training.num_epochs == 100
    assert base.lr_scheduler["warmup_ratio"] == 0.05 and base.lr_scheduler["min_lr"] == 1e-6
    small = load_recipe("ecg_jepa/pretrain_ptbxl_subset").model["config"]
    assert small["hidden_size"] <= 192 and small["num_hidden_layers"] <= 4


def test_ecg2tok_recipes_keep_the_designs_values():
    """reference/ECG2TOK.md sections 5-6 (ecg-hub's design; the paper's values are unpublished)."""
    tokenizer = load_recipe("ecg2tok/tokenizer_base")
    config = tokenizer.model["config"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (384, 12, 6)
    assert (config["head_hidden_size"], config["head_bottleneck_size"], config["codebook_size"]) == (2048, 256, 512)
    assert (config["teacher_temperature_start"], config["teacher_temperature_end"]) == (0.04, 0.07)
    assert config["student_temperature"] == 0.1 and config["clustering"] == "sinkhorn"
    assert tokenizer.training.mixed_precision == "bf16" and tokenizer.training.max_grad_norm == 3.0
    stage_b = load_recipe("ecg2tok/pretrain_base")
    config = stage_b.model["config"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (768, 12, 12)
    assert config["codebook_size"] == 512 and config["mask_ratio"] == 0.5 and config["mask_block_range"] == [5, 10]
    assert stage_b.optimizer["betas"] == [0.9, 0.98] and stage_b.optimizer["lr"] == 1.5e-4
    for name in ("tokenizer_ptbxl_subset", "pretrain_ptbxl_subset"):
        assert load_recipe(f"ecg2tok/{name}").data.split == "train"  # folds 1-8 only


def test_overrides_are_yaml_typed_and_interpolated():
    recipe = load_recipe(
        TINY,
        [
            "training.max_steps=7",
            "optimizer.lr=3e-4",  # YAML 1.1 would read this as a string
            "optimizer.betas=[0.8, 0.95]",
            "training.max_grad_norm=null",
            "output_dir=/tmp/somewhere",
            "tracking.project_name=${output_dir}/logs",
            "~collator",  # back to the default collator
        ],
    )
    assert recipe.training.max_steps == 7
    assert recipe.optimizer["lr"] == 3e-4 and isinstance(recipe.optimizer["lr"], float)
    assert recipe.optimizer["betas"] == [0.8, 0.95]
    assert recipe.training.max_grad_norm is None
    assert recipe.tracking.project_name == "/tmp/somewhere/logs"
    assert recipe.collator == {"_component_": "ecg_hub.data.collators.EcgCollator", "training": True}
    assert isinstance(recipe.model, Component)
    assert apply_overrides({"a": {"b": 1}}, ["a.c.d=x"]) == {"a": {"b": 1, "c": {"d": "x"}}}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainng.max_steps=3", "trainng"),  # unknown top-level section
        ("training.max_stepz=3", "training.max_stepz"),  # unknown setting
        ("model.config.hiden_size=8", "model.config.hiden_size"),  # unknown parameter of a config component
        ("optimizer.lrr=0.1", "optimizer.lrr"),  # unknown keyword of torch.optim.AdamW
        # EcgFeatureExtractor.from_preset(name, **overrides) would keep it as an attribute
        ("preprocessor.sampling_rat=100", "preprocessor.sampling_rat"),
        ("data.batch_size=eight", "data.batch_size"),  # wrong type
        ("training.mixed_precision=fp8", "training.mixed_precision"),  # not an allowed value
        ("optimizer.params=[]", "optimizer.params"),  # set by the loop, not by the recipe
        ("model._component_=ecg_hub.modeling.NoSuchModel", "model._component_"),  # does not import
    ],
)
def test_invalid_keys_and_values_are_errors_naming_the_key(override, key):
    with pytest.raises(RecipeError, match=f"'{key}"):
        load_recipe(TINY, [override])


def test_errors_in_files_name_the_file_and_key(tmp_path):
    data = read_yaml(TINY)
    data["training"]["warmup"] = 10
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=r"bad\.yaml.*unknown key 'training\.warmup'"):
        validate_recipe_file(bad)
    del data["training"]["warmup"], data["model"]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="required key 'model' is missing"):
        load_recipe(bad)
    data = read_yaml(TINY)
    data["recipe"] = "no_such_kind"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="unknown recipe kind 'no_such_kind'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="neither an ecg-hub recipe .* nor an Accelerate config"):
        (tmp_path / "other.yaml").write_text("foo: 1\n")
        validate_recipe_file(tmp_path / "other.yaml")
    accelerate_config = read_yaml(RECIPES_DIR / "accelerate" / "fsdp.yaml")
    accelerate_config["fsdp_config"]["fsdp_sharding_strateggy"] = "FULL_SHARD"
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(accelerate_config))
    with pytest.raises(RecipeError, match="fsdp_config.fsdp_sharding_strateggy"):
        validate_recipe_file(tmp_path / "acc.yaml")
    with pytest.raises(RecipeError, match="override 'training.max_steps' must have the form"):
        load_recipe(TINY, ["training.max_steps"])
    with pytest.raises(RecipeError, match="not found"):
        resolve_recipe_path("ecg_jepa/no_such_recipe")


def test_instantiate_builds_nested_components_and_partials():
    node = {
        "_component_": "torch.nn.Sequential",
        "_partial_": False,
    }
    assert type(instantiate(node)).__name__ == "Sequential"
    scheduler_factory = instantiate(
        {"_component_": "ecg_hub.training.optim.build_lr_scheduler", "_partial_": True, "name": "constant"}
    )
    assert isinstance(scheduler_factory, functools.partial)
    recipe = load_recipe(
        TINY, ["model.config.hidden_size=32", "model.config.num_attention_heads=2"], schema=PretrainRecipe
    )
    model = instantiate(recipe.model)
    assert type(model).__name__ == "EcgJepaForPreTraining" and model.config.hidden_size == 32
    feature_extractor = instantiate(recipe.preprocessor)
    assert feature_extractor.sampling_rate == 250 and len(feature_extractor.leads) == 8


def test_cli_prints_the_resolved_recipe_and_rejects_unknown_keys(capsys):
    from ecg_hub.cli import main

    assert (
        main(["pretrain", "ecg_jepa/pretrain_tiny", "--print-recipe", "--resume", "training.max_steps=3"])
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["training"]["max_steps"] == 3
    assert printed["training"]["resume_from_checkpoint"] == "latest"
    with pytest.raises(SystemExit, match="unknown key 'training.max_stepz'"):
        main(["pretrain", "ecg_jepa/pretrain_tiny", "training.max_stepz=3"])
