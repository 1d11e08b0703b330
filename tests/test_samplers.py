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


def test_last_batch_is_filled_with_other_identities_so_none_is_skipped() -> None:
    # 12 identities, P = 5: two groups of 5, then 2 left over and completed by 3 others.
    sampler = IdentityBatchSampler(PIDS, num_identities=5, num_instances=2)
    assert len(sampler) == 3
    for epoch in range(4):
        batches = epoch_batches(sampler, epoch)
        assert [len(b) for b in batches] == [10, 10, 10]
        ids = [[PIDS[i] for i in b] for b in batches]
        assert all(len(set(b)) == 5 for b in ids)  # P distinct identities in every batch
        assert set().union(*ids[:2]) | set(ids[2]) == set(COUNTS)
        counts = Counter(pid for b in ids for pid in set(b))
        assert sorted(counts.values()) == [1] * 9 + [2] * 3  # 3 fillers appear twice


def test_short_last_batch_keeps_only_the_remainder_identities() -> None:
    sampler = IdentityBatchSampler(PIDS, num_identities=5, num_instances=2, last_batch="short")
    batches = epoch_batches(sampler, 1)
    assert [len(b) for b in batches] == [10, 10, 4]
    assert Counter(PIDS[i] for b in batches for i in b) == dict.fromkeys(COUNTS, 2)


def test_longer_epochs_continue_into_new_passes_instead_of_repeating() -> None:
    one_pass = IdentityBatchSampler(PIDS, 4, 2, seed=3)
    long = IdentityBatchSampler(PIDS, 4, 2, seed=3, batches_per_epoch=7)
    assert len(long) == 7
    batches = epoch_batches(long, 2)
    assert len(batches) == 7
    assert batches[:3] == epoch_batches(one_pass, 2)  # the first pass is the one-pass epoch
    passes = [batches[0:3], batches[3:6]]
    for pass_ in passes:  # each complete pass visits every identity once
        assert Counter(PIDS[i] for b in pass_ for i in b) == dict.fromkeys(COUNTS, 2)
    assert passes[0] != passes[1]
    assert epoch_batches(long, 2) == batches and epoch_batches(long, 3) != batches


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


@pytest.mark.parametrize(("world_size", "p"), [(2, 2), (3, 2), (2, 5), (3, 3), (2, 3)])
def test_ranks_get_equal_disjoint_shares(world_size: int, p: int) -> None:
    # 12 identities: W x P = 4 and 6 divide them; 10 and 9 do not (the last group is filled).
    for epoch, batches_per_epoch in ((4, None), (5, 7)):  # one pass; 7 steps over two passes
        shares = [
            epoch_batches(
                IdentityBatchSampler(PIDS, p, 4, 3, rank, world_size, "fill", batches_per_epoch),
                epoch,
            )
            for rank in range(world_size)
        ]
        reference = IdentityBatchSampler(PIDS, p, 4, 3, 0, world_size, "fill", batches_per_epoch)
        reference.set_epoch(epoch)
        everything = reference.global_batches()
        assert {len(s) for s in shares} == {len(reference)}
        assert sorted(b for s in shares for b in s) == sorted(everything)  # a split, no copies
        groups = -(-len(COUNTS) // (p * world_size))
        steps = list(zip(*shares, strict=True))
        for step, rank_batches in enumerate(steps):
            # One optimiser step: P x V x W images of P x W distinct identities, none on two ranks.
            assert all(len(b) == p * 4 for b in rank_batches)
            step_pids = [{PIDS[i] for i in b} for b in rank_batches]
            assert all(len(pids) == p for pids in step_pids)
            assert len(set().union(*step_pids)) == p * world_size
            if step % groups == groups - 1:  # a pass ends with this step: all identities seen
                pass_steps = range(step - groups + 1, step + 1)
                seen = {PIDS[i] for s in pass_steps for b in steps[s] for i in b}
                assert seen == set(COUNTS)


def test_one_rank_batches_are_the_one_process_batches_when_the_groups_divide_evenly() -> None:
    # 12 identities, P = 3: W = 2 cuts groups of 6, so nothing is filled and the two ranks'
    # batches, interleaved step by step, are exactly the one-process epoch.
    single = epoch_batches(IdentityBatchSampler(PIDS, 3, 4, 3), 2)
    shares = [epoch_batches(IdentityBatchSampler(PIDS, 3, 4, 3, r, 2), 2) for r in range(2)]
    assert [b for step in zip(*shares, strict=True) for b in step] == single


def test_too_few_identities_for_all_ranks_are_refused() -> None:
    with pytest.raises(
        ValueError, match="12 identities cannot fill one batch of 5 identities on each of 3 ranks"
    ):
        IdentityBatchSampler(PIDS, 5, 4, rank=0, world_size=3)
    with pytest.raises(ValueError, match="last_batch='short' needs world_size 1"):
        IdentityBatchSampler(PIDS, 2, 4, rank=0, world_size=2, last_batch="short")


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
        ({"num_identities": 13}, "12 identities cannot fill one batch of 13 identities"),
        ({"last_batch": "drop"}, "last_batch must be 'fill' or 'short'"),
        ({"batches_per_epoch": 0}, "batches_per_epoch must be >= 1"),
        ({"num_instances": 0}, "must be >= 1"),
        ({"rank": 2, "world_size": 2}, "need 0 <= rank < world_size"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, int], message: str) -> None:
    args = {"num_identities": 3, "num_instances": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        IdentityBatchSampler(PIDS, **args)
