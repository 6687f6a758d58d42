"""`ecg-hub convert <family> SRC OUT`: turn an official release checkpoint into a save_pretrained
folder (safetensors weights, config, feature extractor) that AutoModel.from_pretrained loads after
`import ecg_hub`. Each family's converter lives next to its model code in ecg_hub.modeling."""

from __future__ import annotations

import argparse
import sys


def _convert_ecg_jepa(args: argparse.Namespace) -> int:
    from ..modeling.convert_ecg_jepa_original_to_hf import run

    return run(args)


def _convert_melp(args: argparse.Namespace) -> int:
    from ..modeling.convert_melp_original_to_hf import run

    return run(args)


def register(subparsers) -> None:
    """Add ``convert`` and its per-family subcommands to the ``ecg-hub`` parser."""
    from ..modeling.convert_ecg_jepa_original_to_hf import add_arguments as add_ecg_jepa_arguments
    from ..modeling.convert_melp_original_to_hf import add_arguments as add_melp_arguments

    parser = subparsers.add_parser(
        "convert",
        help="convert an official checkpoint to a Hugging Face folder",
        description=__doc__,
    )
    families = parser.add_subparsers(dest="family", metavar="FAMILY")
    ecg_jepa = families.add_parser(
        "ecg-jepa",
        help="official ECG-JEPA {'encoder': state_dict, 'epoch': ...} .pth -> EcgJepaModel folder",
        description="Convert multiblock_epoch100.pth / random_epoch100.pth (github.com/sehunfromdaegu/ECG_JEPA). "
        "The file is read with torch.load(weights_only=True); anything else is refused.",
    )
    add_ecg_jepa_arguments(ecg_jepa)
    ecg_jepa.set_defaults(func=_guarded(_convert_ecg_jepa))
    melp = families.add_parser(
        "melp",
        help="official MELP ECG encoder (fuyingw/MELP_Encoder, MELPModel .ckpt) -> MelpEcgModel folder",
        description="Convert the ECG tower of github.com/HKU-MedAI/MELP: the fuyingw/MELP_Encoder folder or its "
        "model.safetensors, a MELPModel Lightning .ckpt (text tower, projections and decoder are skipped) or an "
        "ECGFMModel state dict. Torch files are read with torch.load(weights_only=True); nothing is executed.",
    )
    add_melp_arguments(melp)
    melp.set_defaults(func=_guarded(_convert_melp))
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _guarded(command):
    """Report a ValueError (bad input file, existing output, ...) as one line and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ValueError as error:
            print(f"ecg-hub convert {args.family}: error: {error}", file=sys.stderr)
            return 1

    return run
