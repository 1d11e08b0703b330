"""Every bad input through the real entry point ``duatm.cli.main``: exit code 2, exactly one line
on stderr that names the file or the field, no traceback, and files that existed keep their
bytes.

Each case builds its own bad input in a tmp folder from a tiny SynthPed and one tiny trained
checkpoint (made once for the module through the command line itself).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

import duatm.atomic
from duatm.cli import main
from duatm.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint, save_checkpoint
from duatm.engine.run_folder import RunFolderLock


@pytest.fixture(scope="module")
def trained(train_argv: Callable[..., list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.pt of a one-epoch run on the tiny SynthPed."""
    out = tmp_path_factory.mktemp("cli-errors-run") / "run"
    assert main(train_argv(out, "schedule.epochs=1")) == 0
    return out / LAST_CHECKPOINT


@dataclass
class Env:
    """What a case may use: its own tmp folder, the shared data and checkpoint (copy them
    before changing them), and monkeypatch for failures the OS cannot be asked for."""

    tmp: Path
    data_root: Path
    checkpoint: Path
    monkeypatch: pytest.MonkeyPatch
    train_argv: Callable[..., list[str]]
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def train(self, *extra: str, out: str = "run", options: tuple[str, ...] = ()) -> list[str]:
        return self.train_argv(self.tmp / out, "schedule.epochs=1", *extra, options=options)

    def evaluate(self, checkpoint: Path | None = None, *extra: str) -> list[str]:
        return [
            "evaluate",
            "--checkpoint",
            str(checkpoint or self.checkpoint),
            "--no-progress",
            *extra,
        ]

    def checkpoint_copy(self, name: str = "copy.pt", **changes: object) -> Path:
        """A copy of the trained checkpoint with some entries replaced (None: removed)."""
        state = load_checkpoint(self.checkpoint)
        for key, value in changes.items():
            if value is None:
                del state[key]
            else:
                state[key] = value
        path = self.tmp / name
        save_checkpoint(path, state)
        return path

    def image_folder(self, cameras: tuple[int, ...] = (1, 2)) -> Path:
        """An imagefolder tree (2 train ids, 2 test ids) with images from ``cameras``."""
        root = self.tmp / "own"
        for split, ids in (("train", "abc"), ("query", "de"), ("gallery", "de")):
            for ident in ids:
                for k, cam in enumerate(cameras * 2):
                    colour = (40 * k, ord(ident), 60 * cam)
                    path = root / split / ident / f"c{cam}_{split}{k}.jpg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (16, 32), colour).save(path)
        return root


# A case: builds its bad input, returns the argv and the texts the one error line must contain.
Case = Callable[[Env], tuple[list[str], list[str]]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    CASES[function.__name__] = function
    return function


# -- configuration ------------------------------------------------------------------------------


@case
def config_file_missing(env: Env) -> tuple[list[str], list[str]]:
    missing = env.tmp / "missing.yaml"
    return ["train", "--config", str(missing)], ["config file not found", str(missing)]


@case
def config_not_yaml(env: Env) -> tuple[list[str], list[str]]:
    bad = env.tmp / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    return ["train", "--config", str(bad)], [str(bad), "not valid YAML"]


@case
def config_unknown_key(env: Env) -> tuple[list[str], list[str]]:
    return env.train("optim.learning_rate=0.1"), ["unknown key", "optim.learning_rate"]


@case
def config_bad_value(env: Env) -> tuple[list[str], list[str]]:
    return env.train("optim.lr=-1"), ["optim.lr must be a number > 0"]


@case
def train_without_config(env: Env) -> tuple[list[str], list[str]]:
    return ["train"], ["--config"]


@case
def image_too_small_for_the_backbone(env: Env) -> tuple[list[str], list[str]]:
    return env.train("data.height=8", "data.width=4"), [
        "data.height=8",
        "data.width=4",
        "too small",
    ]


# -- data ---------------------------------------------------------------------------------------


@case
def data_root_missing(env: Env) -> tuple[list[str], list[str]]:
    missing = env.tmp / "nowhere"
    argv = env.train()
    argv[argv.index("--data-root") + 1] = str(missing)
    return argv, ["market1501 root not found", str(missing)]


@case
def cameras_csv_not_utf8(env: Env) -> tuple[list[str], list[str]]:
    root = env.image_folder()
    (root / "cameras.csv").write_bytes(b"path,camid\nquery/c/caf\xe9.jpg,1\n")
    argv = env.train("data.dataset=imagefolder")
    argv[argv.index("--data-root") + 1] = str(root)
    return argv, [str(root / "cameras.csv"), "not UTF-8", "0xe9"]


@case
def image_not_an_image(env: Env) -> tuple[list[str], list[str]]:
    root = env.image_folder()
    broken = root / "train" / "a" / "c1_broken.jpg"
    broken.write_bytes(b"these are not pixels")
    argv = env.train("data.dataset=imagefolder")
    argv[argv.index("--data-root") + 1] = str(root)
    return argv, [f"cannot read image {broken}"]


@case
def single_camera_data(env: Env) -> tuple[list[str], list[str]]:
    root = env.image_folder(cameras=(1,))
    argv = env.train("data.dataset=imagefolder")
    argv[argv.index("--data-root") + 1] = str(root)
    return argv, ["no query has a true match left", "eval.keep_same_camera=true"]


# -- run folder and file system -----------------------------------------------------------------


@case
def out_under_a_file(env: Env) -> tuple[list[str], list[str]]:
    (env.tmp / "afile").write_text("I am a file")
    return env.train(out="afile/run"), [str(env.tmp / "afile"), "Not a directory"]


@case
def disk_full_while_saving_a_checkpoint(env: Env) -> tuple[list[str], list[str]]:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full to make writes fail with ENOSPC")
    real_fdopen = os.fdopen

    def full_disk(fd: int, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "b" in mode:  # checkpoints: the real torch writer hits a real ENOSPC
            os.close(fd)
            return open("/dev/full", mode)
        return real_fdopen(fd, mode, *args, **kwargs)

    env.monkeypatch.setattr(duatm.atomic.os, "fdopen", full_disk)
    return env.train(), [f"{env.tmp / 'run'}/", ".pt: No space left on device"]


@case
def run_folder_written_by_another_process(env: Env) -> tuple[list[str], list[str]]:
    lock = RunFolderLock(env.tmp / "run")
    lock.acquire()  # a second lock on the file, as another process would hold it
    env.cleanups.append(lock.release)
    return env.train(), [str(env.tmp / "run"), f"another duatm process (pid {os.getpid()})"]


@case
def run_folder_holds_a_run(env: Env) -> tuple[list[str], list[str]]:
    shutil.copytree(env.checkpoint.parent, env.tmp / "run")
    return env.train(), [str(env.tmp / "run"), "is not empty", "--resume", "--overwrite"]


@case
def run_folder_holds_other_files(env: Env) -> tuple[list[str], list[str]]:
    (env.tmp / "run").mkdir()
    (env.tmp / "run" / "thesis.tex").write_text("months of work")
    return env.train(), [str(env.tmp / "run"), "thesis.tex", "--overwrite"]


@case
def resume_from_best_would_replace_last(env: Env) -> tuple[list[str], list[str]]:
    run = env.tmp / "run"
    shutil.copytree(env.checkpoint.parent, run)
    # As a run with a validation split writes it: an earlier epoch's checkpoint.
    shutil.copy(run / "last.pt", run / "best.pt")
    argv = ["train", "--resume", str(run / "best.pt"), "--out", str(run), "--no-progress"]
    return argv, [str(run), "continuing from", "best.pt would replace it", "--overwrite"]


# -- checkpoints --------------------------------------------------------------------------------


@case
def resume_checkpoint_missing(env: Env) -> tuple[list[str], list[str]]:
    missing = env.tmp / "gone.pt"
    return ["train", "--resume", str(missing)], ["checkpoint not found", str(missing)]


@case
def checkpoint_truncated(env: Env) -> tuple[list[str], list[str]]:
    cut = env.tmp / "cut.pt"
    cut.write_bytes(env.checkpoint.read_bytes()[:2000])
    return env.evaluate(cut), [str(cut), "truncated or not a duatm checkpoint"]


@case
def checkpoint_malicious(env: Env) -> tuple[list[str], list[str]]:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {env.tmp / 'pwned'}",))

    evil = env.tmp / "evil.pt"
    torch.save({"format": 1, "config": {}, "x": Payload()}, evil)
    return ["train", "--resume", str(evil)], [str(evil), f"blocked: {os.system.__module__}.system"]


@case
def checkpoint_without_config(env: Env) -> tuple[list[str], list[str]]:
    path = env.checkpoint_copy(config=None)
    return env.evaluate(path), [str(path), "it has no config"]


@case
def checkpoint_without_config_on_resume(env: Env) -> tuple[list[str], list[str]]:
    path = env.checkpoint_copy(config=None)
    return ["train", "--resume", str(path)], [str(path), "it has no config"]


@case
def checkpoint_of_unknown_format(env: Env) -> tuple[list[str], list[str]]:
    path = env.checkpoint_copy(format=99)
    return env.evaluate(path), [str(path), "checkpoint format 99"]


@case
def checkpoint_with_nan_weights(env: Env) -> tuple[list[str], list[str]]:
    weights = load_checkpoint(env.checkpoint)["model"]
    weights["extractor.embed.weight"] = torch.full_like(
        weights["extractor.embed.weight"], float("nan")
    )
    path = env.checkpoint_copy(model=weights)
    return env.evaluate(path), [str(path), "non-finite", "extractor.embed.weight"]


@case
def checkpoint_of_another_architecture(env: Env) -> tuple[list[str], list[str]]:
    return env.evaluate(None, "--set", "model.dim=8"), ["do not fit this DuATM", "model.dim"]


# -- results path -------------------------------------------------------------------------------


@case
def results_path_is_a_folder(env: Env) -> tuple[list[str], list[str]]:
    return env.evaluate(None, "--results", str(env.tmp)), [str(env.tmp), "is a folder"]


@case
def results_path_is_the_checkpoint(env: Env) -> tuple[list[str], list[str]]:
    path = env.checkpoint_copy()
    return env.evaluate(path, "--results", str(path)), [str(path), "itself"]


@case
def results_path_is_another_checkpoint(env: Env) -> tuple[list[str], list[str]]:
    other = env.checkpoint_copy("other.pt")
    return env.evaluate(None, "--results", str(other)), [str(other), "not a duatm results file"]


@case
def results_path_is_a_dataset_file(env: Env) -> tuple[list[str], list[str]]:
    data = env.tmp / "data"
    shutil.copytree(env.data_root, data)
    manifest = data / "synthped.json"
    argv = env.evaluate(None, "--data-root", str(data), "--results", str(manifest))
    return argv, [str(manifest), "not a duatm results file"]


@case
def results_folder_read_only(env: Env) -> tuple[list[str], list[str]]:
    folder = env.tmp / "readonly"
    folder.mkdir()
    real_access = os.access
    # A read-only mount answers os.access with False even for root, who ignores file modes.
    env.monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode)
    )
    return env.evaluate(None, "--results", str(folder / "r.json")), [str(folder), "read-only"]


@case
def results_file_read_only(env: Env) -> tuple[list[str], list[str]]:
    results = env.tmp / "r.json"
    results.write_text('{"mAP": 0.5, "cmc": [0.5]}\n')
    results.chmod(0o444)
    real_access = os.access
    env.monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == results else real_access(p, mode)
    )
    return env.evaluate(None, "--results", str(results)), [str(results), "read-only"]


@case
def disk_full_while_writing_results(env: Env) -> tuple[list[str], list[str]]:
    results = env.tmp / "r.json"

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    env.monkeypatch.setattr(duatm.atomic.os, "fsync", full)
    return env.evaluate(None, "--results", str(results)), [str(results), "No space left on device"]


# -- synth and demo -----------------------------------------------------------------------------


@case
def synth_bad_camera_count(env: Env) -> tuple[list[str], list[str]]:
    return ["synth", "--out", str(env.tmp / "s"), "--cameras", "8"], ["num_cameras=8"]


@case
def synth_into_a_foreign_folder(env: Env) -> tuple[list[str], list[str]]:
    (env.tmp / "mine").mkdir()
    (env.tmp / "mine" / "notes.txt").write_text("keep")
    return ["synth", "--out", str(env.tmp / "mine")], [str(env.tmp / "mine"), "not a SynthPed"]


@case
def synth_under_a_file(env: Env) -> tuple[list[str], list[str]]:
    (env.tmp / "afile").write_text("I am a file")
    argv = ["synth", "--out", str(env.tmp / "afile" / "s"), "--ids", "4", "--cameras", "2"]
    return argv, [str(env.tmp / "afile")]


@case
def demo_out_is_a_file(env: Env) -> tuple[list[str], list[str]]:
    (env.tmp / "afile").write_text("I am a file")
    return ["demo", "--out", str(env.tmp / "afile"), "--no-progress"], [str(env.tmp / "afile")]


def snapshot(*roots: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_no_file(
    name: str,
    tmp_path: Path,
    tiny_synthped: Path,
    trained: Path,
    train_argv: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_root = tiny_synthped
    env = Env(tmp_path, data_root, trained, monkeypatch, train_argv)
    argv, expected = CASES[name](env)
    before = snapshot(tmp_path, data_root, trained.parent)
    capsys.readouterr()
    try:
        status = main(argv)  # an exception here is a traceback for the user
    finally:
        for cleanup in env.cleanups:
            cleanup()
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1, err
    command = argv[0]
    assert lines[0].startswith(f"duatm {command}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in out + err
    assert "weights_only=False" not in err
    monkeypatch.undo()
    after = snapshot(tmp_path, data_root, trained.parent)
    assert {p: after.get(p) for p in before} == before  # nothing that existed changed or vanished
    assert not (tmp_path / "pwned").exists()
