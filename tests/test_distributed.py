"""Several processes on the CPU (gloo), as torchrun starts them: training, exact resume, rank 0
alone writing, sharded evaluation equal to one process, and a failing rank ending the job.

Each test starts two processes with the environment torchrun gives its workers (RANK,
WORLD_SIZE, MASTER_ADDR, ...), each running what `duatm train` runs (`run_guarded` around a
process group and a Trainer), with a hook that makes rank 1 fail where a test needs it.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from duatm.cli import main
from duatm.config import DuATMConfig, load_config
from duatm.data.datasets import Market1501
from duatm.data.synthped import write_synthped
from duatm.engine.builders import build_test_loader
from duatm.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint
from duatm.engine.commands import run_guarded
from duatm.engine.diagnostics import MEANVEC_MAP
from duatm.engine.distributed import process_group
from duatm.engine.evaluator import evaluate
from duatm.engine.hooks import Hook
from duatm.engine.metrics_log import METRICS_JSONL, read_metrics
from duatm.engine.trainer import Trainer
from duatm.losses import LossOutput
from duatm.metrics.report import rank_metrics_to_dict

pytestmark = pytest.mark.slow

# Six training identities; P = 3 on each of 2 ranks takes all six in one step.
TINY = [
    "model.backbone=densenet_tiny",
    "model.pretrained=null",
    "model.dim=16",
    "model.drop_last_pool=true",
    "data.height=32",
    "data.width=16",
    "data.num_identities=3",
    "data.num_instances=2",
    "data.num_workers=0",
    "data.pad=2",
    "schedule.epochs=2",
    "schedule.freeze_backbone_epochs=1",  # the DDP wrapper is rebuilt when the backbone thaws
    "schedule.lr_decay_epoch=1",
    "schedule.iters_per_epoch=2",
    "eval.every=0",  # only after the last epoch
    "eval.max_rank=10",
    "log_every=1",
    "device=cpu",
]


def run_rank(
    scenario: str, rank: int, data_root: Path, work: Path, port: int, timeout_s: float
) -> None:
    """One rank of a job, as ``torchrun -m duatm train`` would run it (forked by the test)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    err = (work / f"stderr-rank{rank}.txt").open("w")
    os.dup2(err.fileno(), 2)
    sys.stderr = err
    runs = work / "runs"
    writes: list[str] = []
    if rank != 0:
        sys.addaudithook(functools.partial(_record_writes, runs, writes))
    dataset = Market1501(data_root, verbose=False)

    def config(name: str) -> DuATMConfig:
        return load_config(None, [*TINY, f"data.root={data_root}", f"out_dir={runs / name}"])

    def body() -> int:
        with process_group("cpu", timeout_s):
            if scenario == "train":
                whole = Trainer(config("whole"), dataset=dataset, progress=False)
                whole.fit()
                _save_params(whole, work / f"params-whole-rank{rank}.pt")
                Trainer(config("split"), dataset=dataset, progress=False).fit(stop_after=1)
                split = runs / "split" / LAST_CHECKPOINT
                resumed = Trainer(
                    config("split"), dataset=dataset, resume_from=split, progress=False
                )
                resumed.fit()
                _save_params(resumed, work / f"params-resumed-rank{rank}.pt")
            else:
                trainer = Trainer(config(scenario), dataset=dataset, progress=False)
                trainer.hooks.append(_FailOnRank1(scenario))
                if scenario == "nan":
                    _nan_loss_on_rank_1(trainer)
                trainer.fit()
        return 0

    code = run_guarded("train", body)
    (work / f"writes-rank{rank}.json").write_text(json.dumps(writes))
    err.flush()
    sys.exit(code)


def _record_writes(runs: Path, writes: list[str], event: str, args: tuple) -> None:
    """Audit hook: every file-system change this process makes under ``runs``."""
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        )
    elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.truncate"):
        path, writing = args[0], True
    else:
        return
    if not writing or not isinstance(path, (str, bytes, os.PathLike)):
        return
    if os.path.abspath(os.fsdecode(path)).startswith(str(runs)):
        writes.append(f"{event} {os.fsdecode(path)}")


class _FailOnRank1(Hook):
    """Rank 1 fails in its second step, after the loss and before the gradients meet."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario

    def after_loss(self, trainer: Trainer, terms: Mapping[str, float]) -> None:
        if trainer.dist.rank != 1 or trainer.step != 1:
            return
        if self.scenario == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.scenario == "hung":
            time.sleep(600)
        if self.scenario == "exception":
            raise FileNotFoundError("rank 1 lost its disk")


def _nan_loss_on_rank_1(trainer: Trainer) -> None:
    """Rank 1's loss becomes NaN in its second step (the other ranks' stay finite)."""
    real = trainer.criterion.forward

    def forward(*args: Any) -> LossOutput:
        losses = real(*args)
        if trainer.dist.rank == 1 and trainer.step == 1:
            return losses._replace(total=losses.total * float("nan"))
        return losses

    trainer.criterion.forward = forward  # type: ignore[method-assign]


def _save_params(trainer: Trainer, path: Path) -> None:
    torch.save({k: v.detach().clone() for k, v in trainer.model.named_parameters()}, path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthped")
    return write_synthped(root / "data", num_ids=12, num_cameras=3, height=32, width=16)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(
    scenario: str, data_root: Path, work: Path, *, timeout_s: float, wait_s: float = 120
) -> list[tuple[int, str, float]]:
    """Run ranks 0 and 1 of a job; (exit code, stderr, seconds until exit) of each. A rank still
    running 5 s after rank 0 ended is killed, as torchrun would.

    The processes are forked from a server that has imported torch and duatm once, which saves
    the seconds of imports per process that most of a small job would otherwise be."""
    work.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        [
            "torch",
            "duatm.engine.trainer",
            "duatm.engine.commands",
            "matplotlib.backends.backend_agg",
        ]
    )
    port = free_port()
    start = time.monotonic()
    procs = [
        context.Process(target=run_rank, args=(scenario, rank, data_root, work, port, timeout_s))
        for rank in range(2)
    ]
    for proc in procs:
        proc.start()
    results = []
    try:
        for proc in procs:
            proc.join(timeout=max(1.0, wait_s - (time.monotonic() - start)))
            if proc.exitcode is None:
                proc.kill()
                proc.join()
            assert proc.exitcode is not None
            results.append((proc.exitcode, time.monotonic() - start))
            wait_s = min(wait_s, time.monotonic() - start + 5)  # the others: 5 s more at most
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    return [
        (code, (work / f"stderr-rank{rank}.txt").read_text(), seconds)
        for rank, (code, seconds) in enumerate(results)
    ]


def params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_two_ranks_train_resume_exactly_and_only_rank_0_writes(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (code0, err0, _), (code1, err1, _) = launch("train", data_root, tmp_path, timeout_s=60)
    assert (code0, code1) == (0, 0), err0 + err1
    runs = tmp_path / "runs"

    # Gradients are averaged over the ranks: they hold the same weights, also after the
    # backbone thawed (a new DDP wrapper), and the resumed run ends where the whole one did.
    for name in ("whole", "resumed"):
        mine, theirs = (
            params(tmp_path / f"params-{name}-rank0.pt"),
            params(tmp_path / f"params-{name}-rank1.pt"),
        )
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name
    whole, resumed = (
        params(tmp_path / "params-whole-rank0.pt"),
        params(tmp_path / "params-resumed-rank0.pt"),
    )
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)

    def history(run: Path) -> list[tuple]:
        return [
            (r["kind"], r["step"], r["epoch"], r.get("total"), r.get("mAP"))
            for r in read_metrics(run / METRICS_JSONL)
        ]

    assert history(runs / "split") == history(runs / "whole")
    # 2 steps per epoch (each of 2 x 3 identities x 2 images), 2 epochs.
    saved = load_checkpoint(runs / "whole" / LAST_CHECKPOINT)
    assert (saved["step"], saved["world_size"]) == (4, 2)
    train = [r for r in read_metrics(runs / "whole" / METRICS_JSONL) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]

    # Rank 1 changed nothing in the run folders; rank 0 wrote all of them.
    assert json.loads((tmp_path / "writes-rank1.json").read_text()) == []
    assert {"config.yaml", "last.pt", "results.json"} <= {
        p.name for p in (runs / "whole").iterdir()
    }

    # The evaluation that two ranks shared equals one process's on the same checkpoint.
    cfg = load_config(None, [*TINY, f"data.root={data_root}", f"out_dir={tmp_path / 'one'}"])
    dataset = Market1501(data_root, verbose=False)
    one = Trainer(
        cfg, dataset=dataset, resume_from=runs / "whole" / LAST_CHECKPOINT, progress=False
    )
    metrics, extra = evaluate(
        one.model,
        build_test_loader(cfg, dataset.query),
        build_test_loader(cfg, dataset.gallery),
        one.device,
        max_rank=10,
        progress=False,
    )
    shared = json.loads((runs / "whole" / "results.json").read_text())
    for key, value in rank_metrics_to_dict(metrics).items():
        assert shared[key] == pytest.approx(value, abs=1e-6), key
    # So does the mAP of the same features mean-pooled, ranked block by block on each rank.
    assert shared["diagnostics"][MEANVEC_MAP] == pytest.approx(extra[MEANVEC_MAP], abs=1e-6)

    # The two-rank checkpoint resumes in one process: state kept, batches recut, and said so.
    more = load_config(
        None, [*TINY, f"data.root={data_root}", f"out_dir={runs / 'whole'}", "schedule.epochs=3"]
    )
    capsys.readouterr()
    continued = Trainer(
        more, dataset=dataset, resume_from=runs / "whole" / LAST_CHECKPOINT, progress=False
    )
    assert (continued.epoch, continued.step) == (2, 4)
    assert "trained on 2 process(es), on 1" in capsys.readouterr().out
    continued.fit()
    assert load_checkpoint(runs / "whole" / LAST_CHECKPOINT)["step"] == 4 + 2


@pytest.mark.parametrize("scenario", ["killed", "hung", "exception", "nan"])
def test_a_failing_rank_ends_the_job_with_one_line(
    scenario: str, data_root: Path, tmp_path: Path
) -> None:
    timeout_s = 10.0
    (code0, err0, seconds0), (code1, err1, _) = launch(
        scenario, data_root, tmp_path, timeout_s=timeout_s, wait_s=90
    )
    lines0 = err0.strip().splitlines()
    if scenario == "nan":
        # Every rank sees the non-finite mean at the same step; rank 0 reports which rank.
        assert (code0, code1) == (3, 3), err0 + err1
        assert lines0 == [lines0[0]] and lines0[0].startswith(
            "duatm train: stopped: loss became nan on rank 1 of 2 at epoch 1, iteration 2"
        )
        assert err1.strip() == ""
        return
    assert code0 == 4, err0
    assert lines0 == [lines0[0]] and lines0[0].startswith(
        "duatm train: error (rank 0 of 2): lost contact with the other processes"
    ), err0
    if scenario == "killed":
        assert code1 == -9
    if scenario == "exception":
        assert (code1, err1.strip()) == (
            2,
            "duatm train: error (rank 1 of 2): rank 1 lost its disk",
        )
    # Rank 0 stops within the collective timeout (plus start-up), not after the test's wait.
    assert seconds0 < 60


def test_commands_that_run_as_one_process_refuse_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["synth", "--out", str(tmp_path / "data")]) == 2
    assert capsys.readouterr().err.strip() == (
        "duatm synth: error: runs as one process; start it without torchrun "
        "(torchrun runs: train, evaluate)"
    )
    assert not (tmp_path / "data").exists()
    monkeypatch.setenv("RANK", "two")
    assert main(["train", "--config", "synthped"]) == 2
    assert "RANK='two' must be an integer" in capsys.readouterr().err
