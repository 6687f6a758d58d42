"""Linear probe: cached-feature fast path vs the ``Trainer`` with a frozen backbone.

Both train the same ``Linear`` head on a frozen ECG-JEPA encoder, for the same number of epochs,
with a validation pass after every epoch (the protocol's early-stopping check):

- **fast path** (``ecg_hub.evaluation.linear_probe``): the backbone runs once over train and
  validation (features cached), then the head trains on the (N, D) matrix;
- **Trainer**: ``EcgJepaForSequenceClassification.freeze_base_model()`` + ``EcgTrainer``; every
  epoch runs the frozen backbone forward over train (random crops) and validation again.

The protocol trains 7 heads per label set (1 % and 10 % x 3 seeds, 100 % x 1); the last column
extrapolates both paths to that: the fast path extracts once, the Trainer pays per head.

    python benchmarks/bench_linear_probe.py                 # 300 synthetic records, 5 epochs
    python benchmarks/bench_linear_probe.py --records 600 --epochs 10 --hidden-size 192 --depth 4
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from ecg_hub.modeling import EcgFeatureExtractor
    from transformers import TrainingArguments

    import ecg_hub  # noqa: F401
    from ecg_hub.data.collators import EcgCollator
    from ecg_hub.data.labels import multi_hot
    from ecg_hub.data.splits import load_splits
    from ecg_hub.data.synthetic import prepare_synthetic
    from ecg_hub.evaluation.linear_probe import LinearProbeConfig, extract_features, train_linear_probe
    from ecg_hub.evaluation.metrics import make_compute_metrics, make_preprocess_logits
    from ecg_hub.loading import load_classification_model
    from ecg_hub.training.finetune import EcgTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench-probe-")
    prepare_synthetic(f"{work}/data", num_records=args.records, seed=0, sampling_rate=100, duration_s=10.0, progress=False)
    splits = load_splits(f"{work}/data")
    train, val = splits["train"], splits["validation"]
    names = ["SR", "SB", "ST", "AF"]
    fe = EcgFeatureExtractor.from_preset("ecg_jepa")  # 8 leads, 250 Hz, 2500 samples (400 tokens)
    config = {
        "model_type": "ecg_jepa", "hidden_size": args.hidden_size, "num_hidden_layers": args.depth,
        "num_attention_heads": max(1, args.hidden_size // 64), "intermediate_size": 4 * args.hidden_size,
    }
    torch.manual_seed(0)
    model = load_classification_model(config=config, class_names=names)

    # Fast path.
    start = time.perf_counter()
    x_train = extract_features(model, train, fe, batch_size=args.batch_size)
    x_val = extract_features(model, val, fe, batch_size=args.batch_size)
    extract_s = time.perf_counter() - start
    start = time.perf_counter()
    train_linear_probe(
        x_train, multi_hot(train, "rhythm"), x_val, multi_hot(val, "rhythm"),
        config=LinearProbeConfig(max_epochs=args.epochs, patience=args.epochs + 1),
    )
    head_s = time.perf_counter() - start

    # Trainer with a frozen backbone.
    model.freeze_base_model()
    collate = {"label_column": "rhythm", "num_classes": len(names)}
    training_args = TrainingArguments(
        output_dir=f"{work}/trainer", num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=1e-3, weight_decay=1e-4, lr_scheduler_type="cosine",
        eval_strategy="epoch", save_strategy="no", report_to="none", remove_unused_columns=False,
        disable_tqdm=True, dataloader_pin_memory=False, logging_strategy="no",
    )
    view = lambda d: d.with_format("numpy", columns=["signal"], output_all_columns=True)
    trainer = EcgTrainer(
        model=model, args=training_args, train_dataset=view(train), eval_dataset=view(val),
        data_collator=EcgCollator(fe, training=True, seed=0, **collate),
        eval_data_collator=EcgCollator(fe, training=False, **collate),
        compute_metrics=make_compute_metrics(names),
        preprocess_logits_for_metrics=make_preprocess_logits("multi_label_classification"),
    )
    start = time.perf_counter()
    trainer.train()
    trainer_s = time.perf_counter() - start

    heads = 7
    fast_total = extract_s + heads * head_s
    trainer_total = heads * trainer_s
    rows = [
        ("fast path (cached features)", f"{extract_s:.1f}", f"{head_s:.2f}", f"{extract_s + head_s:.1f}", f"{fast_total:.0f}"),
        ("Trainer, frozen backbone", "-", f"{trainer_s:.1f}", f"{trainer_s:.1f}", f"{trainer_total:.0f}"),
    ]
    header = ("path", "feature extraction (s)", f"head, {args.epochs} epochs (s)", "one probe (s)", f"{heads} probes (s)")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    print(
        f"linear probe on {len(train)} train / {len(val)} val synthetic records, ECG-JEPA width {args.hidden_size} "
        f"depth {args.depth}, 400 tokens, batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"speed-up for one probe: {trainer_s / (extract_s + head_s):.1f}x; for {heads} probes: {trainer_total / fast_total:.1f}x")
    np.testing.assert_equal(x_train.shape[0], len(train))


if __name__ == "__main__":
    main()
