"""ecg-hub explain MODEL --record PATH [--label MI] [--plot saliency.png]

Which leads and moments of one ECG drove a classifier's score (the ecg_hub.explain module):

    ecg-hub explain runs/ptbxl_mi/model --record data/00001_hr --label MI --plot saliency.png
    ecg-hub explain runs/ecg_jepa_encoder --record HR00001.hea --method attention_rollout

PATH is a WFDB record (the .hea path or its stem; .dat or PhysioNet/CinC .mat signals) or a
CODE-15 style .mat file. The record is read as ecg-hub data reads it (flat, clipped or absent
leads become missing leads), preprocessed by the model's feature extractor, and explained with
integrated gradients (default; the class probability attributed to every sample, from a flat 0 mV
baseline) or attention rollout (ECG-JEPA and ECG2TOK, classifiers or encoders; not class-specific).
The command prints the target class, its probability and the share of |attribution| per lead, and
with --plot draws the attributions as a heat band over the 12-lead plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="saliency of one ECG for a classifier: lead shares, score and a heat-band plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", metavar="MODEL", help="checkpoint folder or Hub id (a fine-tuned classifier, or an encoder for rollout)"
    )
    parser.add_argument(
        "--record", required=True, type=Path, metavar="PATH", help="WFDB record (.hea path or stem) or CODE-15 style .mat file"
    )
    parser.add_argument(
        "--label", default=None, help="class to explain, a name of the model's config.id2label (default: top class)"
    )
    parser.add_argument(
        "--method",
        choices=("integrated_gradients", "attention_rollout"),
        default="integrated_gradients",
        help="integrated_gradients (default, any classifier) or attention_rollout (ECG-JEPA, ECG2TOK)",
    )
    parser.add_argument(
        "--steps", type=int, default=32, help="integrated gradients: integration points from the baseline (default 32)"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=512,
        help="integrated gradients: retry with 4x the points, up to this many, while the attributions miss "
        "the score change from the baseline by more than 10 percent (default 512)",
    )
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG", help="write the 12-lead plot with the saliency band here (PNG)")
    parser.add_argument("--top", type=int, default=5, help="number of leads to list by share (default 5)")
    parser.add_argument("--revision", default=None, help="Hub revision of MODEL (branch, tag or commit)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    from ecg_hub.data.records import read_record
    from ecg_hub.explain import METHOD_TITLES, explain, load_explainable

    name = "ecg-hub explain"
    if args.steps < 1:
        print(f"{name}: --steps must be a positive integer, got {args.steps}", file=sys.stderr)
        return 2
    if args.max_steps < 1:
        print(f"{name}: --max-steps must be a positive integer, got {args.max_steps}", file=sys.stderr)
        return 2
    if args.top < 1:
        print(f"{name}: --top must be a positive integer, got {args.top}", file=sys.stderr)
        return 2
    record_path = Path(args.record)
    candidates = (record_path, Path(f"{record_path}.hea"), record_path.with_suffix(".hea"))
    if not any(candidate.is_file() for candidate in candidates):
        print(
            f"{name}: --record {record_path} does not exist; expected a WFDB record (.hea path or its stem) "
            "or a CODE-15 style .mat file",
            file=sys.stderr,
        )
        return 2
    try:
        record = read_record(record_path)
        model, feature_extractor = load_explainable(args.model, method=args.method, revision=args.revision)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            explanation = explain(
                model,
                feature_extractor,
                record.signal,
                sampling_rate=record.sampling_rate,
                leads=record.leads,
                target=args.label,
                method=args.method,
                steps=args.steps,
                max_steps=args.max_steps,
                masked_leads=record.masked_leads or None,
            )
    except (ValueError, OSError) as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    for warning in caught:
        if issubclass(warning.category, UserWarning) and str(warning.message).startswith("explain:"):
            print(f"{name}: warning: {str(warning.message).removeprefix('explain: ')}", file=sys.stderr)

    method = METHOD_TITLES[explanation.method]
    if explanation.target_label is not None:
        print(
            f"record {record.record_id}: {explanation.target_label} (class {explanation.target_index}), "
            f"probability {explanation.score:.3f}"
        )
    else:
        print(f"record {record.record_id}: encoder without class scores; rollout of its pooled features")
    if explanation.method == "integrated_gradients":
        print(
            f"{method}: {explanation.steps} steps from a flat 0 mV baseline (probability "
            f"{explanation.baseline_score:.3f}); convergence delta {explanation.convergence_delta:+.4f}"
        )
    else:
        print(f"{method}: head-averaged attention with the residual path, from the first block to the last")
    if record.masked_leads:
        print(f"masked leads (missing to the model): {', '.join(record.masked_leads)}")
    print("share of |attribution| by lead:")
    for lead, share in explanation.top_leads(args.top):
        print(f"  {lead:<4} {100 * share:5.1f} %")
    if args.plot is not None:
        try:
            path = explanation.plot(args.plot, record_id=record.record_id)
        except ValueError as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 2
        print(f"plot written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ecg_hub.commands.explain ...``."""
    from ecg_hub.commands.embed import standalone_main

    return standalone_main("explain", argv)


if __name__ == "__main__":
    sys.exit(main())
