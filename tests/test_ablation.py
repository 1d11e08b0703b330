"""`duatm ablate`: which rows are trained, and the paired bootstrap that compares them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_TRAIN
from duatm.cli import main
from duatm.config import ConfigError
from duatm.engine.ablation import (
    ABLATION_JSON,
    LOSS_ROWS,
    MODE_ROWS,
    RunResult,
    format_ablation,
    paired_bootstrap,
    rows_for,
    verdict,
)


def run(seed: int, aps: list[float | None], first: list[int]) -> RunResult:
    query_ap = np.array([np.nan if ap is None else ap for ap in aps])
    valid = ~np.isnan(query_ap)
    return RunResult(
        seed=seed,
        r1=float(np.mean(np.asarray(first)[valid] == 1)),
        mAP=float(np.nanmean(query_ap)),
        query_ap=query_ap,
        query_first_rank=np.asarray(first),
        diagnostics={"inter_entropy": 1.5, "element_cosine": 0.2},
        seconds=60.0,
    )


def test_rows_cover_the_paper_tables_once_each() -> None:
    keys = [row.key for row in rows_for(["modes", "losses"])]
    assert keys[:4] == ["dual", "intra", "inter", "avgpool"]
    assert len(keys) == len(set(keys)) == len(MODE_ROWS) + len(LOSS_ROWS)
    # The loss table alone still trains its "all three terms" rows and their baseline.
    assert {"dual", "avgpool"} <= {row.key for row in rows_for(["losses"])}
    triplet = next(row for row in LOSS_ROWS if row.key == "dual-triplet")
    assert set(triplet.overrides) == {"model.mode=dual", "loss.lambda1=0", "loss.lambda2=0"}
    assert triplet.baseline == "avgpool-triplet"
    with pytest.raises(ValueError, match="unknown ablation table"):
        rows_for(["tables"])


def test_rows_can_be_narrowed_and_keep_their_baselines() -> None:
    assert [row.key for row in rows_for(["modes"], ["dual", "avgpool"])] == ["dual", "avgpool"]
    # A row brings the AvePool row it is compared with.
    assert [row.key for row in rows_for(["modes", "losses"], ["dual-ce"])] == [
        "dual-ce",
        "avgpool-ce",
    ]
    with pytest.raises(ConfigError, match=r"--rows: unknown row duel for tables modes; choose"):
        rows_for(["modes"], ["duel"])


def test_paired_bootstrap_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    ours = [run(s, list(rng.uniform(0.3, 1.0, 40)), list(rng.integers(1, 4, 40))) for s in (0, 1)]
    theirs = [run(s, list(rng.uniform(0.0, 0.7, 40)), list(rng.integers(1, 4, 40))) for s in (1, 0)]
    diff, low, high = paired_bootstrap(ours, theirs, "mAP", samples=4000, seed=3)
    # Seeds are paired by value (theirs is listed in the other order).
    per_query = np.mean([ours[s].query_ap - theirs[1 - s].query_ap for s in (0, 1)], axis=0)
    assert diff == pytest.approx(per_query.mean())
    assert diff == pytest.approx(np.mean([o.mAP for o in ours]) - np.mean([t.mAP for t in theirs]))
    # The interval: percentiles of the mean over queries resampled with replacement.
    draws = np.random.default_rng(3).integers(0, 40, size=(4000, 40))
    expected = np.percentile(per_query[draws].mean(1), [2.5, 97.5])
    assert (low, high) == pytest.approx(tuple(expected))
    assert low < diff < high


def test_paired_bootstrap_of_r1_and_skipped_queries() -> None:
    # Query 2 is skipped in one run (no true match left): it leaves the comparison.
    ours = [run(0, [1.0, 0.5, None], [1, 2, 0])]
    theirs = [run(0, [0.5, 0.5, 0.25], [2, 2, 4])]
    assert paired_bootstrap(ours, theirs, "R1")[0] == pytest.approx(0.5)
    assert paired_bootstrap(ours, theirs, "mAP")[0] == pytest.approx(0.25)
    identical = paired_bootstrap(theirs, theirs, "mAP")
    assert identical == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="no seed was run for both"):
        paired_bootstrap(ours, [run(5, [1.0, 1.0, 1.0], [1, 1, 1])], "mAP")


def test_table_and_verdict_report_means_spread_and_seed_wins() -> None:
    dual = [run(0, [1.0, 0.5], [1, 2]), run(1, [1.0, 1.0], [1, 1])]
    avgpool = [run(0, [0.5, 0.5], [2, 2]), run(1, [1.0, 0.5], [1, 2])]
    table = format_ablation(
        [MODE_ROWS[0], MODE_ROWS[3]], {"dual": dual, "avgpool": avgpool}
    ).splitlines()
    assert table[2].startswith("| DuATM (dual) | 2 | 75.0 ± 35.4 | 87.5 ± 17.7 | +50.0 [")
    assert "| 2 of 2 | 1.50 | 0.20 |" in table[2]
    assert table[3].startswith("| AvePool | 2 | 25.0 ± 35.4 | 62.5 ± 17.7 | (baseline)")
    line = verdict("DuATM", dual, "AvePool", avgpool)
    assert line.startswith("DuATM is ahead of AvePool (means over seeds): mAP +25.0 [95% CI ")
    assert line.endswith("ahead in both on 2 of 2 seeds.")
    assert verdict("AvePool", avgpool, "DuATM", dual).startswith("AvePool is NOT ahead of DuATM")


def test_ablate_command_trains_the_chosen_rows_and_writes_its_table(
    tmp_path: Path, tiny_synthped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ablate"
    argv = ["ablate", "--config", "synthped", "--data-root", str(tiny_synthped), "--out", str(out)]
    argv += ["--rows", "dual", "--tables", "modes", "--seeds", "0", "--no-progress", "--set"]
    assert main([*argv, *TINY_TRAIN, "schedule.epochs=1"]) == 0
    saved = json.loads((out / ABLATION_JSON).read_text())
    assert [row["key"] for row in saved["rows"]] == ["dual", "avgpool"]  # its baseline came along
    for row in saved["rows"]:
        (run,) = row["runs"]
        on_disk = json.loads((out / f"{row['key']}-seed0" / "results.json").read_text())
        assert (run["R1"], run["mAP"]) == (on_disk["R1"], on_disk["mAP"])
    assert saved["table"] in capsys.readouterr().out
