"""PatchPed, the second synthetic family: layout, determinism, and what tells look-alikes apart."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from duatm.cli import main
from duatm.data.datasets import Market1501
from duatm.data.patchped import (
    BADGE_ANCHORS,
    PatchCamera,
    _identities,
    _PatchScene,
    _render,
    write_patchped,
)
from duatm.data.synthped import PERSON_STREAM, ImageJob


def test_patchped_is_read_as_market1501_and_is_deterministic(tmp_path: Path) -> None:
    first = write_patchped(tmp_path / "a", num_ids=8, num_cameras=3, height=64, width=32)
    dataset = Market1501(first, verbose=False)
    assert dataset.num_train_pids == 4
    assert {r.camid for r in dataset.query} == {0, 1, 2}
    assert len(dataset.query) == 4 * 3  # one query per test identity and camera
    assert any(r.pid == 0 for r in dataset.gallery)  # distractors stay in the gallery
    second = write_patchped(tmp_path / "b", num_ids=8, num_cameras=3, height=64, width=32)
    files = sorted(p.relative_to(first) for p in first.rglob("*.jpg"))
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.jpg"))
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    # Written again with the same arguments: kept; with others: refused unless asked.
    assert write_patchped(first, num_ids=8, num_cameras=3, height=64, width=32) == first
    with pytest.raises(FileExistsError, match="other arguments"):
        write_patchped(first, num_ids=8, num_cameras=3, height=64, width=32, seed=1)


def test_look_alikes_differ_only_in_where_the_badge_sits() -> None:
    identities = _identities(0, 40, 4)
    groups: dict[int, list] = {}
    for who in identities:
        groups.setdefault(who.group, []).append(who)
    assert any(len(members) > 1 for members in groups.values())
    for members in groups.values():
        looks = {
            repr([v for k, v in dataclasses.asdict(w).items() if k not in ("pid", "badge_anchor")])
            for w in members
        }
        assert len(looks) == 1  # every other attribute is shared
        assert len({w.badge_anchor for w in members}) == len(members)
    # Train (1..20) and test (21..40) identities never share a group.
    assert not {w.group for w in identities[:20]} & {w.group for w in identities[20:]}


def test_the_badge_is_what_differs_in_the_pixels() -> None:
    identities = _identities(0, 40, 4)
    a, b = next(g for g in _pairs(identities))
    camera = PatchCamera(np.ones(3), 1.0, 0, np.full((3, 3), 128.0), 0, 0.0, 0.8)
    scene = _PatchScene(0, 128, 64, 0.0, tuple(identities), (camera,))
    # The same seeds for both images, so pose, framing and background are the same.
    image_a = _render(scene, ImageJob("q", "a", PERSON_STREAM, a.pid, 1, 0))
    twin = dataclasses.replace(a, badge_anchor=b.badge_anchor)
    scene_b = dataclasses.replace(
        scene, identities=tuple(twin if w is a else w for w in identities)
    )
    image_b = _render(scene_b, ImageJob("q", "a", PERSON_STREAM, a.pid, 1, 0))
    changed = np.abs(image_a.astype(int) - image_b.astype(int)).max(-1) > 0
    assert 0 < changed.mean() < 0.03  # a small local difference, nothing global
    assert len(BADGE_ANCHORS) >= 4


def _pairs(identities: list) -> list:
    groups: dict[int, list] = {}
    for who in identities:
        groups.setdefault(who.group, []).append(who)
    return [members[:2] for members in groups.values() if len(members) > 1]


def test_synth_command_writes_patchped(tmp_path: Path) -> None:
    out = tmp_path / "pp"
    argv = ["synth", "--family", "patchped", "--out", str(out), "--ids", "6", "--cameras", "2"]
    assert main([*argv, "--height", "64", "--width", "32", "--workers", "1"]) == 0
    assert json.loads((out / "synthped.json").read_text())["format"] == "patchped"
    assert main([*argv, "--no-nuisance"]) == 2
