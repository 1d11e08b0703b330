"""IdentityBatchSampler: P x V composition, determinism, coverage and the split across ranks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from duatm.data.samplers import IdentityBatchSampler

# pid -> number of samples; pids 40 and 41 have fewer than V = 4 samples.
COUNTS = {10: 6, 11: 4, 12: 5, 13: 9, 14: 4, 15: 7, 16: 4, 17: 8, 18: 5, 40: 1, 41: 3, 19: 4}


def make_pids() -> list[int]:
    """Interleaved so a sample's index says nothing about its identity."""
    pools = {pid: n for pid, n in COUNTS.items()}
    pids = []
    while pools:
        for pid in list(pools):
            pids.append(pid)
            pools[pid] -= 1
            if not pools[pid]:
                del pools[pid]
    return pids


PIDS = make_pids()


def epoch_batches(sampler: IdentityBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batches_hold_p_distinct_identities_with_v_samples_each() -> None:
    sampler = IdentityBatchSampler(PIDS, num_identities=3, num_instances=4, seed=5)
    batches = epoch_batches(sampler, 0)
    assert len(batches) == len(sampler) == len(COUNTS) // 3
    for batch in batches:
        assert len(batch) == 12 == sampler.batch_size
        per_pid = Counter(PIDS[i] for i in batch)
        assert len(per_pid) == 3
        assert set(per_pid.values()) == {4}
        for pid in per_pid:
            own = [i for i in batch if PIDS[i] == pid]
            if COUNTS[pid] >= 4:
                assert len(set(own)) == 4  # without replacement


def test_few_sample_identities_give_all_samples_plus_repeats() -> None:
    sampler = IdentityBatchSampler(PIDS, num_identities=4, num_instances=4)
    for epoch in range(3):
        flat = [i for b in epoch_batches(sampler, epoch) for i in b]
        for pid in (40, 41):
            own = [i for i in flat if PIDS[i] == pid]
            assert len(own) == 4
            assert set(own) == {i for i, p in enumerate(PIDS) if p == pid}


def test_every_identity_once_per_epoch() -> None:
    sampler = IdentityBatchSampler(PIDS, num_identities=4, num_instances=2)
    for epoch in range(3):
        seen = Counter(PIDS[i] for b in epoch_batches(sampler, epoch) for i in b)
        assert seen == dict.fromkeys(COUNTS, 2)


def test_drop_last_false_keeps_the_remainder_identities() -> None:
    sampler = IdentityBatchSampler(PIDS, num_identities=5, num_instances=2, drop_last=False)
    batches = epoch_batches(sampler, 1)
    assert [len(b) for b in batches] == [10, 10, 4]
    assert {PIDS[i] for b in batches for i in b} == set(COUNTS)
    dropping = IdentityBatchSampler(PIDS, num_identities=5, num_instances=2)
    assert epoch_batches(dropping, 1) == batches[:2]


def test_same_seed_and_epoch_repeat_other_epochs_and_seeds_differ() -> None:
    a = IdentityBatchSampler(PIDS, 3, 4, seed=7)
    b = IdentityBatchSampler(PIDS, 3, 4, seed=7)
    assert epoch_batches(a, 2) == epoch_batches(b, 2)
    assert epoch_batches(a, 2) == epoch_batches(a, 2)  # iterating again repeats the epoch
    assert epoch_batches(a, 2) != epoch_batches(a, 3)
    assert epoch_batches(a, 2) != epoch_batches(IdentityBatchSampler(PIDS, 3, 4, seed=8), 2)


def test_identity_order_is_shuffled_across_epochs() -> None:
    sampler = IdentityBatchSampler(PIDS, 3, 1)
    orders = {tuple(PIDS[b[0]] for b in epoch_batches(sampler, e)) for e in range(5)}
    assert len(orders) == 5


@pytest.mark.parametrize(("world_size", "drop_last"), [(2, True), (3, True), (2, False)])
def test_ranks_get_equal_disjoint_shares(world_size: int, drop_last: bool) -> None:
    # 12 identities, P = 2 -> 6 batches; P = 5 without drop_last -> 3 batches (odd).
    p = 2 if drop_last else 5
    shares = [
        epoch_batches(IdentityBatchSampler(PIDS, p, 4, 3, rank, world_size, drop_last), 4)
        for rank in range(world_size)
    ]
    single = epoch_batches(IdentityBatchSampler(PIDS, p, 4, 3, drop_last=drop_last), 4)
    lengths = {len(s) for s in shares}
    assert len(lengths) == 1
    assert lengths == {len(IdentityBatchSampler(PIDS, p, 4, 3, 1, world_size, drop_last))}
    if drop_last:
        assert lengths == {len(single) // world_size}
        rank_pids = [{PIDS[i] for b in s for i in b} for s in shares]
        assert sum(len(r) for r in rank_pids) == len(set().union(*rank_pids))  # disjoint
        assert sorted(b for s in shares for b in s) == sorted(single)
    else:
        # 3 batches over 2 ranks: the first batch is repeated to make the shares equal.
        assert shares == [[single[0], single[2]], [single[1], single[0]]]


def test_state_dict_round_trip_restores_the_epoch() -> None:
    sampler = IdentityBatchSampler(PIDS, 3, 4, seed=11)
    sampler.set_epoch(6)
    state = sampler.state_dict()
    assert state == {"seed": 11, "epoch": 6}
    assert all(type(v) is int for v in state.values())
    fresh = IdentityBatchSampler(PIDS, 3, 4)
    fresh.load_state_dict(state)
    assert list(fresh) == list(sampler)
    with pytest.raises(KeyError, match="lacks \\['epoch'\\]"):
        fresh.load_state_dict({"seed": 1})


def test_works_as_dataloader_batch_sampler() -> None:
    data = TensorDataset(torch.tensor(PIDS))
    sampler = IdentityBatchSampler(PIDS, 3, 4, seed=1)
    loaded = [batch[0].tolist() for batch in DataLoader(data, batch_sampler=sampler)]
    assert loaded == [[PIDS[i] for i in b] for b in sampler]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_identities": 13}, "12 identities cannot fill one batch of 13"),
        (
            {"num_identities": 5, "world_size": 3},
            "cannot fill one batch of 5 identities on each of 3",
        ),
        ({"num_instances": 0}, "must be >= 1"),
        ({"rank": 2, "world_size": 2}, "need 0 <= rank < world_size"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, int], message: str) -> None:
    args = {"num_identities": 3, "num_instances": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        IdentityBatchSampler(PIDS, **args)
