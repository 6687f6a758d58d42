"""Convert an official MELP ECG encoder (github.com/HKU-MedAI/MELP) to a transformers ``MelpEcgModel`` folder.

Accepted sources (the layout is recognised from the keys):

* the released ``fuyingw/MELP_Encoder`` weights: ``model.safetensors`` (bf16) of the remote-code
  ``MELPEncoderModel``, whose only child is ``ecg_encoder = ECGFMModel(...)``; a file, or the
  downloaded folder (``model.safetensors`` or a sharded ``model.safetensors.index.json``; its
  ``config.json`` supplies the head counts, which the weights do not hold);
* an official **Lightning checkpoint** of ``MELPModel`` (``.ckpt``: ``{"state_dict": ..., ...}``): the
  same ``ecg_encoder.*`` keys, plus the text tower (``lm_model.*``), ``proj_t.*``, ``sent_proj.*``,
  ``text_decoder.*`` and ``logit_scale``, which are not part of the ECG tower and are skipped;
* an ``ECGFMModel`` state dict (the ECG-FM init checkpoint's layout: the trunk under ``ecg_encoder.*``,
  the poolers at the top), as a Lightning ``.ckpt`` or safetensors file.

Torch files are read with ``torch.load(..., weights_only=True)``: tensors and plain containers only.
Lightning checkpoints also pickle hyper-parameters and callback states (``AttributeDict``,
``nn.LayerNorm`` as a default argument, paths, enums); each such global is replaced by an inert
stand-in (nothing is imported, no code runs), which is enough to reach ``state_dict``.

Key mapping (official ``MELPEncoderModel`` / ``MELPModel`` key -> ``MelpEcgModel`` key)::

    ecg_encoder.ecg_encoder.feature_extractor.conv_layers.N.0.weight   feature_extractor.conv_layers.N.0.weight
    ecg_encoder.ecg_encoder.feature_extractor.conv_layers.0.2.*        feature_extractor.conv_layers.0.2.*
    ecg_encoder.ecg_encoder.{layer_norm, post_extract_proj}.*          {layer_norm, post_extract_proj}.*
    ecg_encoder.ecg_encoder.conv_pos.pos_conv.0.bias                   conv_pos.pos_conv.0.bias
    ecg_encoder.ecg_encoder.conv_pos.pos_conv.0.weight_g / weight_v    conv_pos.pos_conv.0.parametrizations.weight.original0 / original1
      (or ...parametrizations.weight.original0 / original1, the newer torch naming, kept as is)
    ecg_encoder.ecg_encoder.encoder.*                                  encoder.*
    ecg_encoder.{attn_pool_contrast, ln_contrast, attn_pool_caption, ln_caption}.*, ecg_encoder.proj_contrast
                                                                       the same names without ``ecg_encoder.``

Skipped (not used by MELP's ECG embedding path, ``ECGFMModel._encode_ecg``): the wav2vec2 pretraining
heads ``ecg_encoder.ecg_encoder.{mask_emb, quantizer.*, project_q.*, final_proj.*}`` (and
``input_quantizer``, ``project_inp``, ``target_glu`` when configured), ECG-FM's ``ecg_encoder.logit_scale``
and ``ecg_encoder.bn.*`` buffers. Any other key, or a missing one, is an error that names it.

The architecture is read from the tensor shapes (leads, conv channels and kernels, width, depth, FFN
width, positional kernel and groups, the number and width of the beat and token queries: ``n_q`` is the
first dimension of ``attn_pool_contrast.query``, never a default). The head counts and the conv strides
are not in the shapes: they come from the release folder's ``config.json`` when there is one, else
from the options, else the release's values (12 encoder heads, 8 pooler heads, stride 2).

Usage::

    python -m ecg_hub.modeling.convert_melp_original_to_hf MELP_Encoder/ ./melp-ecg
    ecg-hub convert melp MELP_Encoder/model.safetensors ./melp-ecg
    ecg-hub convert melp melp_pretrain.ckpt ./melp-ecg

Only torch, transformers, safetensors, numpy and sibling modules are imported (this file sits in the
remote-code folder).
"""

import argparse
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping

import torch
from safetensors import safe_open

from .configuration_melp import MelpEcgConfig
from .feature_extraction_ecg import EcgFeatureExtractor
from .leads import MIMIC_LEADS
from .modeling_melp import MelpEcgModel

#: The release's values of what the weights cannot tell (``model_size="small"``, ``attn_pooler_heads``).
RELEASED_NUM_ATTENTION_HEADS = 12
RELEASED_POOLER_NUM_ATTENTION_HEADS = 8
RELEASED_CONV_STRIDE = 2
#: ``ECGFMModel``'s ``model_size`` -> encoder heads (``ecgfm_model.py``).
MODEL_SIZE_HEADS = {"small": 12, "base": 12, "large": 16}

#: The two key layouts: ``MELPEncoderModel`` safetensors and ``MELPModel`` Lightning state dicts hold the
#: ECG tower under ``ecg_encoder.`` (trunk ``ecg_encoder.ecg_encoder.*``); ``ECGFMModel``'s own state dict
#: has the trunk under ``ecg_encoder.*`` and the poolers at the top.
LAYOUT_MELP = "melp"
LAYOUT_ECGFM = "ecgfm"

_TRUNK_PROBE = "ecg_encoder.feature_extractor.conv_layers.0.0.weight"  # in ECGFMModel key form
#: MELPModel parts outside the ECG tower (skipped by this ECG-tower converter).
_NON_ECG_PREFIXES = ("lm_model.", "proj_t.", "sent_proj.", "text_decoder.")
_NON_ECG_KEYS = ("logit_scale",)
#: ECGFMModel keys outside MELP's embedding path (wav2vec2 pretraining heads, ECG-FM's own loss parts).
_UNUSED_TOWER_PREFIXES = (
    "ecg_encoder.quantizer.",
    "ecg_encoder.input_quantizer.",
    "ecg_encoder.project_q.",
    "ecg_encoder.project_inp.",
    "ecg_encoder.target_glu.",
    "ecg_encoder.final_proj.",
    "bn.",
)
_UNUSED_TOWER_KEYS = ("ecg_encoder.mask_emb", "logit_scale")
_POOLER_PREFIXES = ("attn_pool_contrast.", "ln_contrast.", "attn_pool_caption.", "ln_caption.")
_POS_CONV = "ecg_encoder.conv_pos.pos_conv.0."
_WEIGHT_NORM_RENAMES = {  # old torch.nn.utils.weight_norm naming -> torch.nn.utils.parametrizations naming
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}


# ----------------------------------------------------------------------------------------------
# Reading checkpoints
# ----------------------------------------------------------------------------------------------


class _InertStandIn:
    """Stand-in for a pickled global that ``weights_only`` does not allow: constructing, calling or
    restoring it does nothing (no module is imported, no code runs)."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return None

    def __setstate__(self, state):
        pass


def _stand_in(qualified_name: str) -> tuple[type, str]:
    namespace: dict = {"__module__": "ecg_hub.convert_melp.stand_in"}
    if qualified_name.lower().endswith("dict"):  # Lightning's AttributeDict etc.: keep the items as a dict
        namespace["__new__"] = lambda cls, *args, **kwargs: {}
    return type(qualified_name.rpartition(".")[2] or "StandIn", (_InertStandIn,), namespace), qualified_name


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_torch_file(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # globals outside the allow-list (Lightning hyper-parameters, callbacks): retry with stand-ins
    except (RuntimeError, EOFError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{path!r} could not be read as a torch checkpoint ({_first_line(error)})"
        ) from error
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        with torch.serialization.safe_globals([_stand_in(name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{path!r} could not be read with torch.load(weights_only=True) ({_first_line(error)}); "
            "arbitrary pickles are never loaded. Save its state_dict as safetensors and convert that."
        ) from error


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, framework="pt") as handle:
            names = handle.keys()
            return {key: handle.get_tensor(key) for key in names}
    except Exception as error:  # safetensors raises its own SafetensorError for corrupt files
        raise ValueError(f"{path!r} could not be read as safetensors ({_first_line(error)})") from error


def _read_release_config(folder: str) -> dict | None:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path!r} is not valid JSON ({_first_line(error)})") from error
    return config if isinstance(config, dict) else None


def load_official_state_dict(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The state dict of ``path`` (safetensors file, release folder, or torch / Lightning checkpoint)
    and the release ``config.json`` next to it (``None`` if there is none).

    Raises:
        ValueError: if the source is missing, unreadable, or holds no state dict of tensors.
    """
    release_config = None
    if os.path.isdir(path):
        release_config = _read_release_config(path)
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.isfile(single):
            return _load_safetensors(single), release_config
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle).get("weight_map", {}).values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_load_safetensors(os.path.join(path, shard)))
            return state, release_config
        raise ValueError(f"folder {path!r} has no model.safetensors (nor model.safetensors.index.json)")
    if not os.path.isfile(path):
        raise ValueError(f"MELP checkpoint {path!r} does not exist")
    release_config = _read_release_config(os.path.dirname(os.path.abspath(path)))
    if path.endswith(".safetensors"):
        return _load_safetensors(path), release_config
    checkpoint = _load_torch_file(path)
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]  # Lightning
    if (
        not isinstance(checkpoint, Mapping)
        or not checkpoint
        or not all(isinstance(value, torch.Tensor) for value in checkpoint.values())
    ):
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path!r} holds no MELP state dict: expected a Lightning checkpoint {{'state_dict': ...}} or a "
            f"state dict of tensors, found {found}"
        )
    return dict(checkpoint), release_config


# ----------------------------------------------------------------------------------------------
# Layouts and weight norm
# ----------------------------------------------------------------------------------------------


def split_ecg_tower(official: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """``(layout, tower, skipped)``: the ECG tower's state dict in ``ECGFMModel`` key form (trunk under
    ``ecg_encoder.``, poolers at the top) and the non-ECG keys of a ``MELPModel`` checkpoint that were
    skipped.

    Raises:
        ValueError: if no ECG trunk is found, or a key belongs to neither the tower nor MELP's other parts.
    """
    if f"ecg_encoder.{_TRUNK_PROBE}" in official:
        tower, skipped = {}, []
        for key, tensor in official.items():
            if key.startswith("ecg_encoder."):
                tower[key[len("ecg_encoder.") :]] = tensor
            elif key in _NON_ECG_KEYS or key.startswith(_NON_ECG_PREFIXES):
                skipped.append(key)
            else:
                raise ValueError(f"unexpected key {key!r} in the MELP checkpoint (not part of MELPModel)")
        return LAYOUT_MELP, tower, sorted(skipped)
    if _TRUNK_PROBE in official:
        return LAYOUT_ECGFM, dict(official), []
    sample = sorted(official)[:5]
    raise ValueError(
        f"not a MELP ECG encoder checkpoint: neither 'ecg_encoder.{_TRUNK_PROBE}' (MELP_Encoder / MELPModel) "
        f"nor {_TRUNK_PROBE!r} (ECGFMModel) is among its keys (first keys: {sample})"
    )


def normalize_weight_norm(
    tower: Mapping[str, torch.Tensor], key_prefix: str = ""
) -> tuple[dict[str, torch.Tensor], str]:
    """Put the positional conv's weight norm under the parametrization naming (``original0`` = g,
    ``original1`` = v) and return ``(tower, naming)`` with naming ``"parametrizations"``,
    ``"weight_g/weight_v"`` or ``"plain weight"`` (no weight norm stored: g is recomputed, v = weight)."""
    out = dict(tower)
    namings = {
        "weight_g/weight_v": [f"{_POS_CONV}{name}" for name in _WEIGHT_NORM_RENAMES],
        "parametrizations": [f"{_POS_CONV}{name}" for name in _WEIGHT_NORM_RENAMES.values()],
        "plain weight": [f"{_POS_CONV}weight"],
    }
    present = [naming for naming, keys in namings.items() if any(key in out for key in keys)]
    if len(present) > 1:
        raise ValueError(
            f"the positional conv's weight is stored twice ({' and '.join(present)}); keep one naming"
        )
    if not present:
        return out, "none"
    naming = present[0]
    for key in namings[naming]:
        if key not in out:
            raise ValueError(
                f"key {key_prefix + key!r} is missing from the MELP ECG encoder checkpoint (weight norm as {naming})"
            )
    if naming == "weight_g/weight_v":
        for name, renamed in _WEIGHT_NORM_RENAMES.items():
            out[f"{_POS_CONV}{renamed}"] = out.pop(f"{_POS_CONV}{name}")
    elif naming == "plain weight":
        weight = out.pop(f"{_POS_CONV}weight")
        out[f"{_POS_CONV}parametrizations.weight.original0"] = torch.norm_except_dim(weight.float(), 2, 2).to(
            weight.dtype
        )
        out[f"{_POS_CONV}parametrizations.weight.original1"] = weight
    return out, naming


# ----------------------------------------------------------------------------------------------
# Config and weights
# ----------------------------------------------------------------------------------------------


def _require(tower: Mapping[str, torch.Tensor], key: str, key_prefix: str = "") -> torch.Tensor:
    if key not in tower:
        raise ValueError(f"key {key_prefix + key!r} is missing from the MELP ECG encoder checkpoint")
    return tower[key]


def heads_from_release_config(release_config: Mapping | None) -> tuple[int | None, int | None]:
    """``(encoder heads, pooler heads)`` from a ``fuyingw/MELP_Encoder`` ``config.json`` (``model_size``,
    ``attn_pooler_heads``), ``None`` where it does not say."""
    if not release_config:
        return None, None
    size = release_config.get("model_size")
    if size is not None and size not in MODEL_SIZE_HEADS:
        raise ValueError(f"config.json model_size={size!r} is not one of {sorted(MODEL_SIZE_HEADS)}")
    pooler = release_config.get("attn_pooler_heads")
    return MODEL_SIZE_HEADS.get(size), int(pooler) if pooler is not None else None


def config_from_tower_state_dict(
    tower: Mapping[str, torch.Tensor],
    num_attention_heads: int | None = None,
    pooler_num_attention_heads: int | None = None,
    lead_names: list[str] | None = None,
    conv_stride: list[int] | None = None,
    key_prefix: str = "",
    **overrides,
) -> MelpEcgConfig:
    """A ``MelpEcgConfig`` for an ECG tower in ``ECGFMModel`` key form (weight norm normalised).

    Every size is read off the tensor shapes; ``n_beat_queries`` is ``attn_pool_contrast.query.shape[0]``.
    The head counts and conv strides default to the release's (12, 8, 2 per block); the leads to the
    MIMIC-IV-ECG order when there are 12. Other fields keep the defaults unless given in ``overrides``.
    ``key_prefix`` is put before the key names in error messages (the source's own key form).
    """
    conv_weights = []
    while f"ecg_encoder.feature_extractor.conv_layers.{len(conv_weights)}.0.weight" in tower:
        conv_weights.append(tower[f"ecg_encoder.feature_extractor.conv_layers.{len(conv_weights)}.0.weight"])
    if not conv_weights:
        _require(tower, _TRUNK_PROBE, key_prefix)
    num_leads = int(conv_weights[0].shape[1])
    hidden_size = int(_require(tower, "ecg_encoder.encoder.layer_norm.weight", key_prefix).shape[0])
    num_layers = 1 + max(
        (int(m.group(1)) for key in tower if (m := re.match(r"ecg_encoder\.encoder\.layers\.(\d+)\.", key))),
        default=-1,
    )
    if num_layers < 1:
        raise ValueError(
            f"key '{key_prefix}ecg_encoder.encoder.layers.0.*' is missing from the MELP ECG encoder checkpoint"
        )
    direction = _require(tower, f"{_POS_CONV}parametrizations.weight.original1", key_prefix)
    beat_query = _require(tower, "attn_pool_contrast.query", key_prefix)
    token_query = _require(tower, "attn_pool_caption.query", key_prefix)
    if lead_names is None:
        if num_leads != len(MIMIC_LEADS):
            raise ValueError(
                f"the checkpoint has {num_leads} input leads; pass lead_names (in the training order)"
            )
        lead_names = list(MIMIC_LEADS)
    if len(lead_names) != num_leads:
        raise ValueError(
            f"lead_names has {len(lead_names)} entries but the checkpoint has {num_leads} input leads"
        )
    strides = list(conv_stride) if conv_stride is not None else [RELEASED_CONV_STRIDE] * len(conv_weights)
    if len(strides) != len(conv_weights):
        raise ValueError(
            f"conv_stride has {len(strides)} entries but the checkpoint has {len(conv_weights)} conv blocks"
        )
    values = dict(
        num_leads=num_leads,
        lead_names=list(lead_names),
        conv_dim=[int(w.shape[0]) for w in conv_weights],
        conv_kernel=[int(w.shape[2]) for w in conv_weights],
        conv_stride=[int(s) for s in strides],
        conv_bias="ecg_encoder.feature_extractor.conv_layers.0.0.bias" in tower,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=int(num_attention_heads or RELEASED_NUM_ATTENTION_HEADS),
        intermediate_size=int(
            _require(tower, "ecg_encoder.encoder.layers.0.fc1.weight", key_prefix).shape[0]
        ),
        num_conv_pos_embeddings=int(direction.shape[2]),
        num_conv_pos_embedding_groups=hidden_size // int(direction.shape[1]),
        n_beat_queries=int(beat_query.shape[0]),
        beat_hidden_size=int(beat_query.shape[1]),
        n_token_queries=int(token_query.shape[0]),
        token_hidden_size=int(token_query.shape[1]),
        pooler_num_attention_heads=int(pooler_num_attention_heads or RELEASED_POOLER_NUM_ATTENTION_HEADS),
        **overrides,
    )
    try:
        return MelpEcgConfig(**values)
    except Exception as error:  # @strict validation raises huggingface_hub's StrictDataclass*Error
        message = " ".join(str(error).split())
        raise ValueError(
            f"the architecture read from the checkpoint is not a valid MelpEcgConfig: {message}"
        ) from error


def convert_tower_state_dict(
    tower: Mapping[str, torch.Tensor], key_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """ECG tower in ``ECGFMModel`` key form (weight norm normalised) -> ``MelpEcgModel`` state dict, in float32.

    Raises:
        ValueError: naming a key that is neither mapped nor one of the known unused pretraining parts.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in tower.items():
        if key in _UNUSED_TOWER_KEYS or key.startswith(_UNUSED_TOWER_PREFIXES):
            continue
        if key.startswith("ecg_encoder."):
            converted[key[len("ecg_encoder.") :]] = tensor
        elif key == "proj_contrast" or key.startswith(_POOLER_PREFIXES):
            converted[key] = tensor
        elif key.startswith("head."):
            raise ValueError(
                f"unexpected key {key_prefix + key!r}: a linear 'head' instead of attentional pooling "
                "(use_attentional_pool_contrast=False) is not MELP's ECG encoder"
            )
        else:
            raise ValueError(f"unexpected key {key_prefix + key!r} in the MELP ECG encoder checkpoint")
    return {key: tensor.detach().to(torch.float32).contiguous() for key, tensor in converted.items()}


def check_against_model(
    state_dict: Mapping[str, torch.Tensor], model: MelpEcgModel, prefix: str = "ecg_encoder."
) -> None:
    """Raise a ValueError naming every missing, unexpected or mis-shaped key (official names)."""

    def official(key: str) -> str:
        return f"{prefix}{'' if key == 'proj_contrast' or key.startswith(_POOLER_PREFIXES) else 'ecg_encoder.'}{key}"

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = []
    if missing:
        problems.append("missing key(s) " + ", ".join(repr(official(k)) for k in missing))
    if unexpected:
        problems.append("unexpected key(s) " + ", ".join(repr(official(k)) for k in unexpected))
    for key in sorted(set(expected) & set(state_dict)):
        if tuple(expected[key].shape) != tuple(state_dict[key].shape):
            problems.append(
                f"key {official(key)!r} has shape {tuple(state_dict[key].shape)}, the architecture read from "
                f"the other tensors needs {tuple(expected[key].shape)}"
            )
    if problems:
        raise ValueError("the MELP ECG encoder checkpoint does not fit MelpEcgModel: " + "; ".join(problems))


def convert_official_state_dict(
    official: Mapping[str, torch.Tensor],
    num_attention_heads: int | None = None,
    pooler_num_attention_heads: int | None = None,
    lead_names: list[str] | None = None,
    conv_stride: list[int] | None = None,
    **overrides,
) -> tuple[MelpEcgModel, dict]:
    """Any accepted official state dict -> a loaded ``MelpEcgModel`` (eval mode) and a report
    ``{"layout", "weight_norm", "skipped_non_ecg", "skipped_unused"}``."""
    layout, tower, skipped = split_ecg_tower(official)
    key_prefix = "ecg_encoder." if layout == LAYOUT_MELP else ""
    tower, naming = normalize_weight_norm(tower, key_prefix)
    config = config_from_tower_state_dict(
        tower,
        num_attention_heads,
        pooler_num_attention_heads,
        lead_names,
        conv_stride,
        key_prefix,
        **overrides,
    )
    state_dict = convert_tower_state_dict(tower, key_prefix)
    model = MelpEcgModel(config)
    check_against_model(state_dict, model, key_prefix)
    model.load_state_dict(state_dict, strict=True)
    unused = sorted(k for k in tower if k in _UNUSED_TOWER_KEYS or k.startswith(_UNUSED_TOWER_PREFIXES))
    report = {"layout": layout, "weight_norm": naming, "skipped_non_ecg": skipped, "skipped_unused": unused}
    return model.eval(), report


def convert_checkpoint(
    source: str,
    output_dir: str,
    num_attention_heads: int | None = None,
    pooler_num_attention_heads: int | None = None,
    lead_names: list[str] | None = None,
    conv_stride: list[int] | None = None,
    overwrite: bool = False,
) -> tuple[str, dict]:
    """Convert ``source`` into the ``save_pretrained`` folder ``output_dir`` (``MelpEcgModel`` weights
    and config, and the ``melp`` feature-extractor preset). Returns ``(output_dir, report)``.

    The folder is written under a temporary name next to ``output_dir`` and renamed at the end, so a
    failed conversion leaves nothing behind.
    """
    if (
        os.path.exists(output_dir)
        and (not os.path.isdir(output_dir) or os.listdir(output_dir))
        and not overwrite
    ):
        raise ValueError(
            f"output directory {output_dir!r} exists and is not empty (use --overwrite to replace it)"
        )
    official, release_config = load_official_state_dict(source)
    release_heads, release_pooler_heads = heads_from_release_config(release_config)
    model, report = convert_official_state_dict(
        official,
        num_attention_heads or release_heads,
        pooler_num_attention_heads or release_pooler_heads,
        lead_names,
        conv_stride,
    )
    if release_config and release_config.get("n_queries_contrast") not in (None, model.config.n_beat_queries):
        report["note"] = (
            f"config.json says n_queries_contrast={release_config['n_queries_contrast']}, the weights have "
            f"{model.config.n_beat_queries} beat queries (the weights are used)"
        )
    config = model.config
    feature_extractor = EcgFeatureExtractor.from_preset(
        "melp", leads=config.lead_names, sampling_rate=config.sampling_rate, num_samples=config.num_samples
    )
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".melp_convert_", dir=parent)
    try:
        model.save_pretrained(staging)
        feature_extractor.save_pretrained(staging)
        if os.path.exists(output_dir):
            if os.path.isdir(output_dir):
                shutil.rmtree(output_dir)
            else:
                os.remove(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir, report


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments shared by this script and ``ecg-hub convert melp``."""
    parser.add_argument(
        "source",
        help="fuyingw/MELP_Encoder folder or model.safetensors, a MELPModel Lightning .ckpt, or an ECGFMModel state dict",
    )
    parser.add_argument(
        "output_dir", help="folder to write (config.json, model.safetensors, preprocessor_config.json)"
    )
    parser.add_argument(
        "--num-attention-heads",
        type=int,
        default=None,
        help="encoder attention heads (not in the weights; default: the release config.json, else "
        f"{RELEASED_NUM_ATTENTION_HEADS})",
    )
    parser.add_argument(
        "--pooler-num-attention-heads",
        type=int,
        default=None,
        help="attention heads of both poolers (not in the weights; default: the release config.json, else "
        f"{RELEASED_POOLER_NUM_ATTENTION_HEADS})",
    )
    parser.add_argument(
        "--conv-stride",
        type=int,
        nargs="+",
        default=None,
        help=f"stride of each conv block (not in the weights; default {RELEASED_CONV_STRIDE} each)",
    )
    parser.add_argument(
        "--lead-names",
        nargs="+",
        default=None,
        help="lead order of the checkpoint (default MIMIC: I II III aVR aVF aVL V1-V6)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    return parser


def run(args: argparse.Namespace) -> int:
    output, report = convert_checkpoint(
        args.source,
        args.output_dir,
        num_attention_heads=args.num_attention_heads,
        pooler_num_attention_heads=args.pooler_num_attention_heads,
        lead_names=args.lead_names,
        conv_stride=args.conv_stride,
        overwrite=args.overwrite,
    )
    config = MelpEcgConfig.from_pretrained(output)
    skipped = len(report["skipped_non_ecg"])
    print(
        f"wrote {output}: MELP ECG encoder ({report['layout']} layout, weight norm as {report['weight_norm']}), "
        f"{config.num_leads} leads, width {config.hidden_size}, depth {config.num_hidden_layers}, "
        f"{config.num_attention_heads} heads, {config.n_beat_queries} beat queries x {config.beat_hidden_size}, "
        f"{config.n_token_queries} ECG tokens x {config.token_hidden_size}"
        + (f"; skipped {skipped} non-ECG tensors (text tower, projections, decoder)" if skipped else "")
    )
    if "note" in report:
        print(f"note: {report['note']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


__all__ = [
    "check_against_model",
    "config_from_tower_state_dict",
    "convert_checkpoint",
    "convert_official_state_dict",
    "convert_tower_state_dict",
    "heads_from_release_config",
    "load_official_state_dict",
    "normalize_weight_norm",
    "split_ecg_tower",
]

if __name__ == "__main__":
    sys.exit(main())
