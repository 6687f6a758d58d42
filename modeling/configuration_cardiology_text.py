"""The project's cardiology text model: a BERT further pretrained by masked language modelling on
cardiology text, published as a plain ``transformers`` masked LM (no remote code) and used as the
text tower of the ECG-text families (ETP, MELP).

MELP's first stage is such a model (``fuyingw/heart_bert``: MedCPT-Query-Encoder continued by MLM
on cardiology text from PubMed, Wikipedia and MIMIC-IV-ECG training reports); the paper gives no
hyper-parameters, so ``recipes/text/cardiology_mlm_base.yaml`` uses BERT's defaults as a public
reproduction does (:data:`MLM_DEFAULTS`). The architecture is whatever the starting model is
(``BertForMaskedLM`` for MedCPT), so this family declares no model types of its own: it exists for
the catalogue, the model card and the publisher.
"""

from .registry import CheckpointEntry, ModelFamily

#: The paper's starting point for the cardiology text model (a PubMedBERT-vocabulary BERT-base).
CARDIOLOGY_TEXT_BASE_MODEL = "ncbi/MedCPT-Query-Encoder"

#: Where the project publishes its cardiology text model.
CARDIOLOGY_TEXT_REPO_ID = "ecg-hub/cardiology-bert"

#: MLM hyper-parameters of the base recipe (BERT defaults; MELP's paper gives none). Lengths in
#: tokens, batch in sequences per device.
MLM_DEFAULTS = {
    "mlm_probability": 0.15,
    "learning_rate": 5e-5,
    "num_epochs": 1,
    "max_length": 512,
    "batch_size_per_device": 32,
    "warmup_ratio": 0.06,
    "weight_decay": 0.01,
    "lr_schedule": "linear",
    "mixed_precision": "bf16",
}

FAMILY = ModelFamily(
    name="cardiology_text",
    title="Cardiology BERT",
    paper=(
        "Wang, Xu, Yu, From Token to Rhythm: A Multi-Scale Approach for ECG-Language Pretraining (MELP, ICML 2025), "
        "stage 1: a cardiology language model by continued masked-language-model pretraining"
    ),
    model_types={},
    kind="text",
    model_card="cardiology_text.md",
    pipelines=("fill-mask", "feature-extraction"),
    checkpoints=(
        CheckpointEntry(
            CARDIOLOGY_TEXT_REPO_ID,
            "BertForMaskedLM",
            None,
            f"cardiology BERT: {CARDIOLOGY_TEXT_BASE_MODEL} continued by masked-LM pretraining on cardiology text "
            "(recipe text/cardiology_mlm_base); the text tower of ETP and MELP",
        ),
    ),
)

__all__ = ["CARDIOLOGY_TEXT_BASE_MODEL", "CARDIOLOGY_TEXT_REPO_ID", "FAMILY", "MLM_DEFAULTS"]
