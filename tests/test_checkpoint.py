"""duatm.engine.checkpoint: atomic saves, safe loads, clear errors, RNG state round trips."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from duatm.engine.checkpoint import (
    LAST_CHECKPOINT,
    CheckpointError,
    capture_rng_state,
    check_plain,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def trained_state() -> dict:
    """A realistic trainer state: weights, SGD momentum buffers, a milestone scheduler, counters."""
    torch.manual_seed(0)
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3], gamma=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),  # holds a collections.Counter
        "epoch": 7,
        "best_r1": 0.5,
        "config": {"model": {"pretrained": None, "dim": 256}, "out_dir": "runs/x"},
        "history": [1, 2.5, "a", True, None, (3, 4)],
    }


def assert_same(a: object, b: object) -> None:
    """Deep equality where tensors compare element-wise and dtypes must match."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_save_load_round_trip_keeps_every_value(tmp_path: Path) -> None:
    state = trained_state()
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, state)
    assert_same(load_checkpoint(path), state)


def test_save_leaves_no_temporary_files_and_replaces_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path) == {"epoch": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_failure_during_save_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    old_bytes = path.read_bytes()

    def save_half_then_fail(obj: object, handle: object) -> None:
        handle.write(b"PK\x03\x04 half a zip archive")  # type: ignore[attr-defined]
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert_same(load_checkpoint(path), {"epoch": 1, "w": torch.ones(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_ctrl_c_during_save_finishes_the_checkpoint_then_interrupts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C inside torch.save used to surface as a RuntimeError from its zip writer (exit 1
    with a traceback) and lose the epoch; now the save completes and KeyboardInterrupt follows."""
    path = tmp_path / "last.pt"
    real_save = torch.save
    finished = []

    def save_with_ctrl_c(obj: object, handle: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # delivered between bytecodes: here, if not held
        real_save(obj, handle)
        finished.append(True)

    monkeypatch.setattr(torch, "save", save_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert finished == [True]
    monkeypatch.undo()
    assert_same(load_checkpoint(path), {"epoch": 2, "w": torch.zeros(3)})
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_missing_checkpoint_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt"):
        load_checkpoint(tmp_path / "nothere.pt")


@pytest.mark.parametrize("damage", ["half", "empty", "text"])
def test_damaged_file_is_reported_as_truncated_or_foreign(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, trained_state())
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "empty": b"", "text": b"epoch: 3\n"}[damage])
    with pytest.raises(CheckpointError, match="truncated or not a duatm checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_checkpoint_cut_anywhere_is_reported_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, trained_state())
    data = path.read_bytes()
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.99):
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(CheckpointError, match="truncated or not a duatm checkpoint"):
            load_checkpoint(path)


def test_numpy_scalar_is_rejected_at_save_naming_the_key_path(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    with pytest.raises(TypeError, match=r"state\['sampler'\]\['seed'\] is numpy\.int64"):
        save_checkpoint(path, {"sampler": {"seed": np.int64(3)}})
    assert not path.exists()


def test_float_subclass_from_numpy_is_rejected_inside_lists() -> None:
    # numpy.float64 passes isinstance(x, float) but weights_only refuses to unpickle it.
    with pytest.raises(TypeError, match=r"state\['history'\]\[1\] is numpy\.float64"):
        check_plain({"history": [0.5, np.float64(0.25)]})


def test_custom_object_and_non_plain_key_are_rejected() -> None:
    class Sampler:
        pass

    with pytest.raises(TypeError, match=r"state\['sampler'\] is .*Sampler"):
        check_plain({"sampler": Sampler()})
    with pytest.raises(TypeError, match=r"key .* of state\['m'\] is numpy\.int64"):
        check_plain({"m": {np.int64(1): 2}})


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        1 + 2j,
        "s",
        b"raw",
        torch.arange(3),
        nn.Parameter(torch.ones(2)),
        torch.Size([2, 3]),
        torch.float16,
        torch.device("cpu"),
        [1, (2, {"a": 3})],
        {1, 2},
        OrderedDict(a=1),
        Counter({250: 1}),
    ],
    ids=lambda v: type(v).__name__,
)
def test_everything_check_plain_accepts_loads_with_weights_only(
    tmp_path: Path, value: object
) -> None:
    check_plain({"v": value})
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"v": value})
    loaded = load_checkpoint(path)["v"]
    if isinstance(value, torch.Tensor):
        assert torch.equal(loaded, value)
    else:
        assert loaded == value and type(loaded) is type(value)


def test_file_with_a_numpy_object_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"epoch": np.float64(1.0)}, path)  # bypasses save_checkpoint's check
    with pytest.raises(CheckpointError, match=r"will not load \(blocked: numpy\.") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_file_holding_a_non_dict_is_not_a_duatm_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match=r"not a duatm checkpoint.*list"):
        load_checkpoint(path)


def test_load_model_state_round_trip(tmp_path: Path) -> None:
    source = small_model()
    torch.nn.init.normal_(source[0].weight)
    target = small_model()
    save_checkpoint(tmp_path / "m.pt", {"model": source.state_dict()})
    load_model_state(target, load_checkpoint(tmp_path / "m.pt")["model"], source="m.pt")
    assert_same(dict(target.state_dict()), dict(source.state_dict()))


def test_load_model_state_names_missing_unexpected_and_mismatched_keys() -> None:
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = dict(model.state_dict())
    del state["2.bias"]
    state["3.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(6, 4)
    with pytest.raises(CheckpointError) as info:
        load_model_state(model, state, source="runs/a/best.pt")
    message = str(info.value)
    assert "runs/a/best.pt" in message and "another architecture" in message
    assert "1 missing key: 2.bias" in message
    assert "1 unexpected key: 3.weight" in message
    assert "1 shape mismatch: 0.weight (checkpoint (6, 4), model (8, 4))" in message
    assert_same(dict(model.state_dict()), before)  # nothing was half-loaded


def test_long_key_lists_are_cut_with_a_count() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(5)])  # 10 tensors
    with pytest.raises(CheckpointError, match=r"10 missing keys: 0\.weight, .*\(5 more\)"):
        load_model_state(model, {}, source="x.pt")


def test_ddp_prefixed_keys_get_a_specific_hint() -> None:
    model = small_model()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"'module\.' prefix"):
        load_model_state(model, state, source="x.pt")


def draw_all() -> tuple:
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.standard_normal(3).tolist(),
        torch.rand(3).tolist(),
    )


def test_rng_state_survives_save_load_restore(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second gaussian in python's state
    np.random.standard_normal()  # and in numpy's legacy state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = draw_all()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert draw_all() != expected  # the generators really moved elsewhere
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draw_all() == expected


def test_rng_state_covers_cuda_exactly_when_available() -> None:
    state = capture_rng_state()
    assert set(state) >= {"python", "numpy", "torch"}
    assert ("cuda" in state) == torch.cuda.is_available()


def test_latest_checkpoint_is_last_pt_when_present(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path / LAST_CHECKPOINT, {"epoch": 0})
    assert latest_checkpoint(tmp_path) == tmp_path / "last.pt"
