"""`ecg-hub demo MODEL`: a browser demo of one model (Gradio), on this machine.

Pick a bundled synthetic example or upload a record (WFDB .hea + .dat as several files,
PhysioNet .mat + .hea, CODE-15 .mat, SPH .h5, or a CSV with one column per lead) and see the
12-lead plot and the model's scores:

- a fine-tuned ...ForSequenceClassification: its classes and scores (the ecg-classification
  pipeline) and an integrated-gradients saliency map for the top class or a chosen one;
- an ECG-text model (ETP): zero-shot scores for the comma-separated labels typed into the page.

    ecg-hub demo runs/finetune/best                      # http://127.0.0.1:7860
    ecg-hub demo runs/etp/model --labels "sinus rhythm,atrial fibrillation" --port 8080

`ecg-hub demo --space DIR MODEL_ID` writes a Hugging Face Space folder instead (app.py,
requirements.txt pinned at the versions installed here, README.md with the Space settings) for
the Hub model MODEL_ID; push it with `hf upload OWNER/NAME DIR . --repo-type space`.

The server listens on 127.0.0.1 (this machine only) unless --host says otherwise; it has no
login, so anyone who can reach --host can upload records. A research demo, not a medical device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _labels(text: str) -> list[str]:
    from ecg_hub.demo import parse_labels

    try:
        return parse_labels(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--labels: {error}") from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--port: expected a TCP port number (1-65535), got {text!r}"
        ) from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port: expected a TCP port number (1-65535), got {port}")
    return port


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start a browser demo of a model (Gradio), or write a Hugging Face Space for it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="checkpoint folder or Hub id (with --space: the Hub id the Space loads)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)",
    )
    parser.add_argument(
        "--port", type=_port, default=None, help="TCP port (default: Gradio's, 7860 or the next free one)"
    )
    parser.add_argument(
        "--share",
        choices=("no", "yes"),
        default="no",
        help="yes: also open a public gradio.live link through Gradio's relay (default no)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="device of the model, e.g. cpu or cuda:1 (default: the first GPU if any, else cpu)",
    )
    parser.add_argument(
        "--labels",
        type=_labels,
        default=None,
        help="zero-shot models: default candidate labels, comma-separated (the page can change them)",
    )
    parser.add_argument(
        "--saliency-steps",
        type=_positive_int,
        default=32,
        help="integration points of each integrated-gradients saliency map (default 32)",
    )
    parser.add_argument(
        "--first-window-only",
        action="store_true",
        help="score only the first model-length window of a record (default: every window, averaged)",
    )
    parser.add_argument(
        "--space",
        type=Path,
        default=None,
        metavar="DIR",
        help="write a Hugging Face Space folder for the Hub model MODEL to DIR instead of starting a server",
    )
    parser.add_argument(
        "--ecg-hub-requirement",
        default=None,
        metavar="SPEC",
        help="with --space: the requirements.txt line of ecg-hub itself (default ecg-hub==this version)",
    )
    parser.add_argument("--overwrite", action="store_true", help="with --space: replace an existing DIR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.space is not None:
        from ecg_hub.demo import write_space

        try:
            folder = write_space(
                args.space, args.model, ecg_hub_requirement=args.ecg_hub_requirement, overwrite=args.overwrite
            )
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote the Space for {args.model} to {folder} (app.py, requirements.txt, README.md)")
        return 0
    if args.ecg_hub_requirement is not None or args.overwrite:
        print("error: --ecg-hub-requirement and --overwrite only apply with --space DIR", file=sys.stderr)
        return 2

    from ecg_hub.demo import build_demo

    try:
        demo = build_demo(
            args.model,
            device=args.device,
            labels=args.labels,
            saliency_steps=args.saliency_steps,
            whole_record=not args.first_window_only,
        )
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host}: anyone who can reach it can use the demo (there is no login)"
        )
    if args.share == "yes":
        print(
            "warning: --share yes makes the demo public on a gradio.live address (through Gradio's servers)"
        )
    demo.launch(server_name=args.host, server_port=args.port, share=args.share == "yes")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ecg_hub.commands.demo ...``."""
    from ecg_hub.commands.embed import standalone_main

    return standalone_main("demo", argv)


if __name__ == "__main__":
    sys.exit(main())
