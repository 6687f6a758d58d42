"""Convert an official ECG-JEPA checkpoint (github.com/sehunfromdaegu/ECG_JEPA) to a transformers folder.

The released files (``multiblock_epoch100.pth``, ``random_epoch100.pth``) are ``torch.save`` pickles of
``{"encoder": <context-encoder state_dict>, "epoch": 99}``. They are read with
``torch.load(..., weights_only=True)`` (tensors and plain containers only, no code runs) and written as
``model.safetensors`` + ``config.json`` + ``preprocessor_config.json`` (the ``ecg_jepa`` feature-extractor
preset), loadable with ``EcgJepaModel.from_pretrained`` / ``AutoModel.from_pretrained`` after
``import ecg_hub``.

Usage::

    python -m ecg_hub.modeling.convert_ecg_jepa_original_to_hf multiblock_epoch100.pth ./ecg-jepa-multiblock
    ecg-hub convert ecg-jepa multiblock_epoch100.pth ./ecg-jepa-multiblock

Key mapping (official -> ecg-hub; ``i`` is the block index):

=========================================  ===============================================
``W_P.{weight,bias}``                      ``patch_embeddings.projection.{weight,bias}``
``encoder_blocks.blocks.i.norm1.*``        ``layers.i.layernorm_before.*``
``encoder_blocks.blocks.i.attn.qkv.*``     ``layers.i.attention.{q,k,v}_proj.*`` (rows split q, k, v)
``encoder_blocks.blocks.i.attn.proj.*``    ``layers.i.attention.o_proj.*``
``encoder_blocks.blocks.i.norm2.*``        ``layers.i.layernorm_after.*``
``encoder_blocks.blocks.i.mlp.fc{1,2}.*``  ``layers.i.mlp.fc{1,2}.*``
``norm.*``                                 ``layernorm.*``
``pos_embed``                              rebuilt from the config (checked equal, not stored)
=========================================  ===============================================

Only torch, transformers and sibling modules are imported (this file sits in the remote-code folder).
"""

import argparse
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping

import torch

from .configuration_ecg_jepa import EcgJepaConfig
from .feature_extraction_ecg import EcgFeatureExtractor
from .leads import INDEPENDENT_LEADS
from .modeling_ecg_jepa import EcgJepaModel, sincos_position_table

# The released encoder's head count; it cannot be read off the weights (head_dim * heads = width).
RELEASED_NUM_ATTENTION_HEADS = 16

_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def _convert_block(official_rest: str, tensor: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    """One block parameter: ``official_rest`` is the key after ``blocks.i.``; ``prefix`` is ``layers.i.``."""
    qkv = re.fullmatch(r"attn\.qkv\.(weight|bias)", official_rest)
    if qkv:
        query, key, value = tensor.chunk(3, dim=0)
        kind = qkv.group(1)
        return {
            f"{prefix}attention.q_proj.{kind}": query,
            f"{prefix}attention.k_proj.{kind}": key,
            f"{prefix}attention.v_proj.{kind}": value,
        }
    module, _, kind = official_rest.rpartition(".")
    if module not in _BLOCK_RENAMES:
        raise ValueError(f"unexpected parameter 'blocks.*.{official_rest}' in the ECG-JEPA checkpoint")
    return {f"{prefix}{_BLOCK_RENAMES[module]}.{kind}": tensor}


def _check_position_table(stored: torch.Tensor, config: EcgJepaConfig, num_rows: int, what: str) -> None:
    num_patches = config.num_patches
    rebuilt = sincos_position_table(stored.shape[1], num_rows, num_patches)
    if tuple(stored.shape) != tuple(rebuilt.shape) or not torch.allclose(stored.float(), rebuilt, atol=1e-6):
        raise ValueError(
            f"{what} of shape {tuple(stored.shape)} is not the fixed 2-D sin-cos table for {num_rows} lead(s) x "
            f"{num_patches} patches; checkpoints trained with learnable positions (pos_type='learnable') are "
            "not supported"
        )


def convert_encoder_state_dict(
    official: Mapping[str, torch.Tensor], config: EcgJepaConfig
) -> dict[str, torch.Tensor]:
    """Official ``MaskTransformer`` state dict -> ``EcgJepaModel`` state dict (see the module docstring)."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in official.items():
        if key == "pos_embed":
            _check_position_table(tensor, config, config.num_leads, "pos_embed")
        elif key.startswith("W_P."):
            converted[f"patch_embeddings.projection.{key[4:]}"] = tensor
        elif key.startswith("norm."):
            converted[f"layernorm.{key[5:]}"] = tensor
        elif match := re.fullmatch(r"encoder_blocks\.blocks\.(\d+)\.(.+)", key):
            converted.update(_convert_block(match.group(2), tensor, f"layers.{match.group(1)}."))
        else:
            raise ValueError(f"unexpected key {key!r} in the ECG-JEPA encoder state dict")
    return {key: tensor.detach().to(torch.float32).contiguous() for key, tensor in converted.items()}


def convert_predictor_state_dict(
    official: Mapping[str, torch.Tensor], config: EcgJepaConfig
) -> dict[str, torch.Tensor]:
    """Official ``MaskTransformerPredictor`` state dict -> ``EcgJepaPredictor`` state dict (for full
    training states of the official ``ecg_jepa`` module; the released files hold the encoder only)."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in official.items():
        if key == "pos_embed":
            _check_position_table(tensor, config, 1, "predictor pos_embed")
        elif key == "mask_token":
            converted["mask_token"] = tensor
        elif key.startswith("predictor_embed."):
            converted[f"embed.{key.split('.', 1)[1]}"] = tensor
        elif key.startswith("predictor_norm."):
            converted[f"layernorm.{key.split('.', 1)[1]}"] = tensor
        elif key.startswith("predictor_proj."):
            converted[f"proj.{key.split('.', 1)[1]}"] = tensor
        elif match := re.fullmatch(r"predictor_blocks\.blocks\.(\d+)\.(.+)", key):
            converted.update(_convert_block(match.group(2), tensor, f"layers.{match.group(1)}."))
        else:
            raise ValueError(f"unexpected key {key!r} in the ECG-JEPA predictor state dict")
    return {key: tensor.detach().to(torch.float32).contiguous() for key, tensor in converted.items()}


def convert_pretraining_state_dict(
    official: Mapping[str, torch.Tensor], config: EcgJepaConfig
) -> dict[str, torch.Tensor]:
    """Official ``ecg_jepa`` module state dict (``encoder.*``, ``target_encoder.*``, ``predictor.*``)
    -> ``EcgJepaForPreTraining`` state dict."""
    groups: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "target_encoder": {}, "predictor": {}}
    for key, tensor in official.items():
        group, _, rest = key.partition(".")
        if group not in groups:
            raise ValueError(f"unexpected key {key!r} in the ECG-JEPA pretraining state dict")
        groups[group][rest] = tensor
    converted = {}
    for key, tensor in convert_encoder_state_dict(groups["encoder"], config).items():
        converted[f"ecg_jepa.{key}"] = tensor
    for key, tensor in convert_encoder_state_dict(groups["target_encoder"], config).items():
        converted[f"target_encoder.{key}"] = tensor
    for key, tensor in convert_predictor_state_dict(groups["predictor"], config).items():
        converted[f"predictor.{key}"] = tensor
    return converted


def config_from_encoder_state_dict(
    official: Mapping[str, torch.Tensor],
    num_attention_heads: int | None = None,
    lead_names: list[str] | None = None,
    **overrides,
) -> EcgJepaConfig:
    """An ``EcgJepaConfig`` matching the shapes of an official encoder state dict.

    Width, patch size, depth, MLP width, qkv bias and the number of tokens are read off the weights;
    the number of heads cannot be (it defaults to the release's 16), and the leads default to the
    release's I, II, V1-V6 when the table has 8 leads. Other fields keep the released defaults unless
    given in ``overrides`` (e.g. ``num_samples``).
    """
    for required in ("W_P.weight", "pos_embed", "norm.weight"):
        if required not in official:
            raise ValueError(f"not an ECG-JEPA encoder state dict: key {required!r} is missing")
    hidden_size, patch_size = official["W_P.weight"].shape
    depth = 1 + max(
        int(m.group(1)) for k in official if (m := re.match(r"encoder_blocks\.blocks\.(\d+)\.", k))
    )
    intermediate_size = official["encoder_blocks.blocks.0.mlp.fc1.weight"].shape[0]
    qkv_bias = "encoder_blocks.blocks.0.attn.qkv.bias" in official
    num_samples = overrides.pop("num_samples", 2500)
    num_patches = num_samples // patch_size
    num_tokens = official["pos_embed"].shape[0]
    if num_tokens % num_patches:
        raise ValueError(
            f"pos_embed has {num_tokens} rows, not a multiple of {num_patches} patches "
            f"({num_samples} samples / patch {patch_size}); pass the right num_samples"
        )
    num_leads = num_tokens // num_patches
    if lead_names is None:
        if num_leads != len(INDEPENDENT_LEADS):
            raise ValueError(f"the checkpoint has {num_leads} leads; pass lead_names (in the training order)")
        lead_names = list(INDEPENDENT_LEADS)
    if len(lead_names) != num_leads:
        raise ValueError(f"lead_names has {len(lead_names)} entries but the checkpoint has {num_leads} leads")
    return EcgJepaConfig(
        lead_names=list(lead_names),
        num_samples=num_samples,
        patch_size=int(patch_size),
        hidden_size=int(hidden_size),
        num_hidden_layers=depth,
        num_attention_heads=num_attention_heads or RELEASED_NUM_ATTENTION_HEADS,
        intermediate_size=int(intermediate_size),
        qkv_bias=qkv_bias,
        **overrides,
    )


def load_official_checkpoint(path: str) -> dict:
    """Read an official ``{'encoder': state_dict, 'epoch': ...}`` file safely (``weights_only=True``).

    Raises:
        ValueError: if the file is missing, needs arbitrary pickled code, or has another layout.
    """
    if not os.path.isfile(path):
        raise ValueError(f"ECG-JEPA checkpoint {path!r} does not exist or is not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as error:
        raise ValueError(
            f"{path!r} could not be read as a weights-only torch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Only the official "
            "{'encoder': state_dict, 'epoch': int} files are accepted; arbitrary pickles are never loaded."
        ) from error
    encoder = checkpoint.get("encoder") if isinstance(checkpoint, Mapping) else None
    if not isinstance(encoder, Mapping) or not all(isinstance(v, torch.Tensor) for v in encoder.values()):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path!r} is not an official ECG-JEPA checkpoint: expected a dict with an 'encoder' state dict "
            f"(the layout of multiblock_epoch100.pth / random_epoch100.pth), found {found}"
        )
    return dict(checkpoint)


def convert_checkpoint(
    source: str,
    output_dir: str,
    num_attention_heads: int | None = None,
    lead_names: list[str] | None = None,
    overwrite: bool = False,
) -> str:
    """Convert ``source`` (official ``.pth``) into the ``save_pretrained`` folder ``output_dir``.

    The folder is written under a temporary name next to ``output_dir`` and renamed at the end, so a
    failed conversion leaves nothing behind. Returns ``output_dir``.
    """
    if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ValueError(
            f"output directory {output_dir!r} exists and is not empty (use --overwrite to replace it)"
        )
    checkpoint = load_official_checkpoint(source)
    encoder_state = checkpoint["encoder"]
    config = config_from_encoder_state_dict(encoder_state, num_attention_heads, lead_names)
    state_dict = convert_encoder_state_dict(encoder_state, config)

    model = EcgJepaModel(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    feature_extractor = EcgFeatureExtractor.from_preset(
        "ecg_jepa",
        leads=config.lead_names,
        sampling_rate=config.sampling_rate,
        num_samples=config.num_samples,
    )

    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".ecg_jepa_convert_", dir=parent)
    try:
        model.save_pretrained(staging)
        feature_extractor.save_pretrained(staging)
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments shared by this script and ``ecg-hub convert ecg-jepa``."""
    parser.add_argument("source", help="official checkpoint, e.g. multiblock_epoch100.pth")
    parser.add_argument(
        "output_dir", help="folder to write (config.json, model.safetensors, preprocessor_config.json)"
    )
    parser.add_argument(
        "--num-attention-heads",
        type=int,
        default=None,
        help=f"attention heads of the encoder (not stored in the checkpoint; default {RELEASED_NUM_ATTENTION_HEADS})",
    )
    parser.add_argument(
        "--lead-names",
        nargs="+",
        default=None,
        help="lead order of the checkpoint (default I II V1 V2 V3 V4 V5 V6)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    return parser


def run(args: argparse.Namespace) -> int:
    output = convert_checkpoint(
        args.source, args.output_dir, args.num_attention_heads, args.lead_names, overwrite=args.overwrite
    )
    config = EcgJepaConfig.from_pretrained(output)
    print(
        f"wrote {output}: ECG-JEPA encoder, {config.num_leads} leads ({' '.join(config.lead_names)}), "
        f"{config.num_samples} samples at {config.sampling_rate} Hz, width {config.hidden_size}, "
        f"depth {config.num_hidden_layers}"
    )
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
    "config_from_encoder_state_dict",
    "convert_checkpoint",
    "convert_encoder_state_dict",
    "convert_predictor_state_dict",
    "convert_pretraining_state_dict",
    "load_official_checkpoint",
]

if __name__ == "__main__":
    sys.exit(main())
