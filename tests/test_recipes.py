"""Recipes (ecg_hub.recipe): every YAML under recipes/ loads and validates, and invalid recipes or
overrides fail with an error naming the key."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import yaml

from ecg_hub.recipe import (
    Component,
    RecipeError,
    apply_overrides,
    dump_recipe,
    instantiate,
    load_recipe,
    read_yaml,
    recipe_to_dict,
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


def scheduler_factory_node() -> dict:
    return {"_component_": "ecg_hub.training.optim.build_lr_scheduler", "_partial_": True}


def test_instantiate_builds_nested_components_and_partials():
    node = {
        "_component_": "torch.nn.Sequential",
        "_partial_": False,
    }
    assert type(instantiate(node)).__name__ == "Sequential"
    scheduler_factory = instantiate({**scheduler_factory_node(), "name": "constant"})
    assert isinstance(scheduler_factory, functools.partial)
    # An OmegaConf node is built from its resolved values.
    from omegaconf import OmegaConf

    tree = OmegaConf.create({"kind": "constant", "node": {**scheduler_factory_node(), "name": "${kind}"}})
    assert instantiate(tree.node).keywords == {"name": "constant"}
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


def test_an_override_replaces_a_component_instead_of_merging_into_it():
    """OmegaConf's dotlist (and Hydra) would merge the new mapping into the old one, so the new
    component would inherit ``num_records`` and ``seed`` of the synthetic dataset it replaces."""
    recipe = load_recipe(TINY, ["dataset={_component_: datasets.load_from_disk, dataset_path: /data/ecgs}"])
    assert recipe.dataset == {"_component_": "datasets.load_from_disk", "dataset_path": "/data/ecgs"}
    finetune = load_recipe("finetune/ptbxl", ["model.pretrained=runs/other/model"])
    assert finetune.preprocessor["pretrained"] == "runs/other/model"  # ${model.pretrained}, after overrides


def test_interpolation_is_omegaconfs_relative_escaped_and_typed(tmp_path):
    data = read_yaml(TINY)
    data["tracking"]["project_name"] = "${.log_with.0}-${..seed}"  # a sibling, and one level up
    data["data"]["batch_size"] = "${model.config.num_attention_heads}"  # a whole reference keeps the int
    data["output_dir"] = r"runs/\${not_a_reference}"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    assert recipe.tracking.project_name == "tensorboard-0"
    assert recipe.data.batch_size == 4 and isinstance(recipe.data.batch_size, int)
    assert recipe.output_dir == "runs/${not_a_reference}"
    # The dump (recipe.yaml next to a model) reads back to the same recipe: the literal stays literal.
    (tmp_path / "dumped.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    assert recipe_to_dict(load_recipe(tmp_path / "dumped.yaml")) == recipe_to_dict(recipe)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "tracking.project_name=${oc.env:HOME}",
            r"'tracking\.project_name': \$\{oc\.env:HOME\} calls the resolver 'oc\.env'",
        ),
        # nested and quoted resolver calls are found in OmegaConf's parse tree
        ("tracking.project_name=${training.${oc.env:HOME}}", "resolver 'oc.env'"),
        ("tracking.project_name=x${oc.select:'${oc.env:HOME}'}", "resolver 'oc.select'"),
        ("tracking.project_name=${oc.decode:'${seed}'}", "resolver 'oc.decode'"),
    ],
)
def test_an_untrusted_recipe_may_not_call_resolvers(override, message):
    with pytest.raises(RecipeError, match=rf"pretrain_tiny\.yaml: .*{message}.*--trust-recipe"):
        load_recipe(TINY, [override])


def test_a_trusted_recipe_may_read_the_environment(monkeypatch):
    monkeypatch.setenv("ECG_HUB_TEST_PROJECT", "from-the-environment")
    recipe = load_recipe(TINY, ["tracking.project_name=${oc.env:ECG_HUB_TEST_PROJECT}"], trust=True)
    assert recipe.tracking.project_name == "from-the-environment"


def test_yaml_and_interpolation_errors_name_the_file_and_key(tmp_path):
    text = TINY.read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("seed: 0\n", "seed: 0\nseed: 1\n", 1), encoding="utf-8")
    with pytest.raises(RecipeError, match=r"(?s)bad\.yaml: not valid YAML.*duplicate key seed"):
        load_recipe(bad)  # PyYAML alone would keep the last value silently
    for value, message in [
        ("x${oops", r"'tracking\.project_name': not a valid interpolation"),
        ("${training.max_stepz}", r"'tracking\.project_name': Interpolation key 'training\.max_stepz'"),
        ("${tracking.project_name}", r"'tracking\.project_name': Recursive interpolation"),
        ("???", r"'tracking\.project_name': is missing \(its value is \?\?\?\)"),
    ]:
        bad.write_text(text.replace("project_name: ecg_jepa_tiny", f"project_name: '{value}'", 1), "utf-8")
        with pytest.raises(RecipeError, match=rf"bad\.yaml: {message}"):
            load_recipe(bad)
    bad.write_text("42\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"bad\.yaml: a recipe must be a YAML mapping, got int"):
        load_recipe(bad)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed.x=1", "'seed' is not a mapping"),  # OmegaConf would replace the int by a mapping
        ("optimizer.lr.x=1", "'optimizer.lr' is not a mapping"),
        # OmegaConf would write through the interpolation into model.pretrained
        ("preprocessor.pretrained.x=1", "'preprocessor.pretrained' is an interpolation"),
        ("optimizer.betas[0]=0.5", "malformed key"),  # one key syntax: dotted names
        ("~optimizer.no_such_key", "key 'optimizer.no_such_key' is not in the"),
        ("tracking.project_name=${oops", "not a valid interpolation"),
    ],
)
def test_override_paths_are_checked_before_omegaconf_writes_them(override, message):
    recipe = "finetune/ptbxl" if override.startswith("preprocessor.") else TINY
    with pytest.raises(RecipeError, match=f"override {re.escape(repr(override))}: .*{re.escape(message)}"):
        load_recipe(recipe, [override])
