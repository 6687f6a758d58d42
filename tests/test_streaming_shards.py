"""Data larger than memory: a sharded, streamed synthetic dataset read by two data-parallel ranks
(each through `datasets.distributed.split_dataset_by_node`, as the pretraining loop does) sees
every record exactly once per epoch, in a new order every epoch."""

import datasets
import numpy as np

from ecg_hub.training.dataloading import build_train_dataloader


def _ids(rows):
    return {"record_id": [row["record_id"] for row in rows]}


def _epoch(loaders, epoch):
    return [[rid for batch in loader.epoch_batches(epoch, 0) for rid in batch["record_id"]] for loader in loaders]


def test_two_ranks_stream_every_record_once_per_epoch():
    num_records = 96
    dataset = datasets.Dataset.from_dict(
        {"record_id": [f"rec-{i:03d}" for i in range(num_records)], "signal": np.zeros((num_records, 2, 8), np.float32)}
    ).to_iterable_dataset(num_shards=8)  # 8 shards on disk-backed Arrow: 4 per rank
    loaders = [
        build_train_dataloader(dataset, _ids, 4, num_replicas=2, rank=rank, seed=0, shuffle=True, shuffle_buffer_size=16)
        for rank in (0, 1)
    ]
    orders = []
    for epoch in (0, 1):
        per_rank = _epoch(loaders, epoch)
        assert set(per_rank[0]).isdisjoint(per_rank[1])  # each record on one rank only
        seen = per_rank[0] + per_rank[1]
        assert sorted(seen) == sorted(f"rec-{i:03d}" for i in range(num_records))  # all, exactly once
        assert len(per_rank[0]) == len(per_rank[1]) == num_records // 2
        orders.append(per_rank[0])
    assert orders[0] != orders[1]  # re-shuffled every epoch (shard order and buffer)
