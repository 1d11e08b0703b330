"""Checkpoints that are written atomically and read back safely (`torch.load(weights_only=True)`).

Why: a crash mid-save must never destroy the last good checkpoint, and loading a file must never
run code from it. So a state is checked before it is written (only tensors, numbers, strings and
containers of them), which guarantees the weights-only loader will accept it on resume.

A checkpoint is a dict chosen by the trainer, e.g. {"model": ..., "optimizer": ..., "epoch": 7,
"config": config_to_dict(cfg), "rng": capture_rng_state(), "sampler": sampler.state_dict()}.
A run folder holds `last.pt` (written every epoch, resumed from) and `best.pt`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import pickle
import pickletools
import random
import signal
import threading
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from duatm.atomic import atomic_open

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
# Bumped when the checkpoint layout changes, so old files get a clear error, not a KeyError.
CHECKPOINT_FORMAT = 1

_LOG = logging.getLogger(__name__)
# Leaf types the weights-only unpickler rebuilds (torch._weights_only_unpickler allow-list).
_PLAIN_LEAVES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.Tensor,
    nn.Parameter,
    torch.Size,
    torch.dtype,
    torch.device,
)
_PLAIN_SEQUENCES = (list, tuple, set)
_PLAIN_MAPPINGS = (dict, OrderedDict, Counter)
# torch.save writes a zip archive (the format since PyTorch 1.6); anything else is not ours.
_ZIP_MAGIC = b"PK\x03\x04"
# How many names of each kind a mismatch message lists before giving only the count.
_SHOW = 5


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, unsafe to load, or made for another model."""


def check_plain(obj: Any, path: str = "state") -> None:
    """Raise TypeError naming the first value that `torch.load(weights_only=True)` would refuse.

    Types are matched exactly: a numpy.float64 is a float subclass, yet it pickles as a numpy
    object that the weights-only loader rejects.
    """
    kind = type(obj)
    if kind in _PLAIN_LEAVES:
        return
    if kind in _PLAIN_SEQUENCES:
        for index, item in enumerate(obj):
            check_plain(item, f"{path}[{index}]")
        return
    if kind in _PLAIN_MAPPINGS:
        for key, value in obj.items():
            check_plain(key, f"key {key!r} of {path}")
            check_plain(value, f"{path}[{key!r}]")
        return
    raise TypeError(
        f"{path} is {kind.__module__}.{kind.__qualname__}; a checkpoint may hold only tensors, "
        "numbers, strings, bools, None and lists/tuples/dicts of them (convert it with "
        "int()/float()/.tolist() or torch.as_tensor())"
    )


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write `state` to `path` atomically: the old file survives any failure during the save."""
    if not isinstance(state, Mapping):
        raise TypeError(f"a checkpoint state must be a dict, got {type(state).__name__}")
    state = dict(state)
    check_plain(state)
    with _ctrl_c_held(), atomic_open(path, "wb") as handle:
        torch.save(state, handle)


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it.

    Why: a KeyboardInterrupt inside ``torch.save`` surfaces as a RuntimeError from its zip
    writer (a traceback and exit 1 instead of the resume hint), and it would throw away the
    checkpoint of an epoch that is already trained. Held, the save completes and the run stops
    right after it. A second Ctrl-C is not held. Only the main thread owns signal handlers;
    elsewhere, or when the handler was not installed from Python, nothing changes.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", *, mmap: bool = False, kind: str = "checkpoint"
) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` without executing code from the file.

    ``mmap=True`` maps the tensors from the file instead of reading them (pages load when a
    tensor is used: how a large gallery index is searched without reading all of it); ``kind``
    names what the file should be in error messages (``"checkpoint"``, ``"index"``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} not found: {path}")
    with path.open("rb") as handle:
        magic = handle.read(len(_ZIP_MAGIC))
    if magic != _ZIP_MAGIC:
        detail = "the file is empty" if not magic else "not a torch zip archive"
        raise CheckpointError(f"{path} is truncated or not a duatm {kind} ({detail})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        # torch's own text advises loading with weights_only=False: never pass that on.
        raise _refused(path, kind) from None
    except (EOFError, IndexError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise _corrupt(path, err, kind) from err
    except OSError as err:
        if err.errno != errno.EINVAL:  # the zip reader's answer to a cut-off archive
            raise
        raise _corrupt(path, err, kind) from err
    except RuntimeError as err:
        if "PytorchStreamReader" in str(err):
            raise _corrupt(path, err, kind) from err
        raise CheckpointError(f"{path}: could not load the {kind}: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is not a duatm {kind}: it holds a {type(state).__name__}, not a dict"
        )
    return state


def _refused(path: Path, kind: str) -> CheckpointError:
    """The error for a file the weights-only unpickler refused, naming what it refused."""
    try:
        blocked = blocked_globals(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return CheckpointError(
            f"{path} is truncated or not a duatm {kind} (its pickled data cannot be read)"
        )
    what = f"blocked: {', '.join(blocked[:_SHOW])}" if blocked else "pickle instructions"
    return CheckpointError(
        f"{path} holds code or objects that duatm will not load ({what}); a duatm {kind} "
        "holds only tensors, numbers, strings and containers of them, so this file was not "
        "written by duatm or was altered"
    )


def blocked_globals(path: str | Path) -> list[str]:
    """Names of the Python objects (``module.name``) that a checkpoint's pickle refers to and
    that the weights-only loader does not rebuild, in order of appearance.

    Read with :mod:`pickletools`, which only parses: nothing in the file is executed.
    """
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        data = archive.read(name)
    allowed = _allowed_globals()
    names = []
    for global_name in _pickle_globals(data):
        if global_name not in allowed and global_name not in names:
            names.append(global_name)
    return names


# Protocol-2 pickles name some modules as Python 2 did; the unpickler maps them, so do we.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` a pickle imports (GLOBAL, or STACK_GLOBAL after two strings)."""
    found, strings, memo = [], [], {}
    last: object = None
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            found.append(f"{_PY2_MODULES.get(module, module)}.{name}")
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            last = arg
            strings.append(arg)
        elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(arg)
            if isinstance(last, str):
                strings.append(last)
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = last
        elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = last
        else:
            last = None
    return found


def _allowed_globals() -> set[str]:
    """``module.name`` of what the weights-only loader rebuilds: torch's allow-list (a private
    function, so with a fallback) and what the user allowed with ``add_safe_globals``."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):
        allowed = {
            "collections.OrderedDict",
            "collections.Counter",
            "torch._utils._rebuild_tensor_v2",
        }
    for item in torch.serialization.get_safe_globals():
        obj = item[0] if isinstance(item, tuple) else item
        allowed.add(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', obj)}")
    return allowed


def _corrupt(path: Path, err: BaseException, kind: str) -> CheckpointError:
    detail = str(err).splitlines()[0] if str(err) else "unexpected end of file"
    return CheckpointError(
        f"{path} is truncated or not a duatm {kind} ({type(err).__name__}: {detail})"
    )


#: What a checkpoint written by a run must hold for its model to be rebuilt (evaluate, load).
RUN_STATE_KEYS = ("config", "num_classes", "model")


def check_run_state(
    state: Mapping[str, Any], source: str, keys: tuple[str, ...] = RUN_STATE_KEYS
) -> None:
    """Refuse a file that lacks what a run's checkpoint holds, or a checkpoint of another format
    version (:data:`CHECKPOINT_FORMAT`), with the reason instead of a KeyError later."""
    missing = [key for key in keys if key not in state and key != "format"]
    if missing:
        raise CheckpointError(
            f"{source} is not a duatm training checkpoint: it has no {', '.join(missing)}"
        )
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{source}: checkpoint format {state.get('format')!r}, this duatm reads format "
            f"{CHECKPOINT_FORMAT}"
        )


def check_finite_weights(state_dict: Mapping[str, Any], source: str) -> None:
    """Refuse weights with NaN or infinite values: every distance computed with them would be
    NaN, and no ranking can be made of those."""
    bad = [
        key
        for key, value in state_dict.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise CheckpointError(
            f"{source} holds non-finite (NaN or infinite) weights in {_listing('tensor', bad)}; "
            "the run that wrote it diverged: evaluate an earlier checkpoint"
        )


def load_model_state(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load weights strictly; on any mismatch say which keys and shapes differ, and where from."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} (checkpoint {_shape(state_dict[key])}, model {_shape(value)})"
        for key, value in expected.items()
        if key in state_dict and _shape(state_dict[key]) != _shape(value)
    ]
    if missing or unexpected or mismatched:
        parts = [
            _listing("missing key", missing),
            _listing("unexpected key", unexpected),
            _listing("shape mismatch", mismatched, plural="shape mismatches"),
        ]
        hint = "likely another architecture or config (model.backbone, model.dim, model.mode, ...)"
        if unexpected and all(key.startswith("module.") for key in unexpected):
            hint = "the keys carry a 'module.' prefix: the weights were saved from a DDP wrapper"
        raise CheckpointError(
            f"the weights in {source} do not fit this {type(model).__name__}: {hint}. "
            + "; ".join(part for part in parts if part)
        )
    model.load_state_dict(state_dict, strict=True)


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _listing(what: str, items: list[str], plural: str | None = None) -> str:
    if not items:
        return ""
    name = what if len(items) == 1 else plural or f"{what}s"
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)} {name}: {', '.join(items[:_SHOW])}{more}"


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a run draws from, as weights-only-safe values."""
    version, mt_state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt_state), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back generator states from `capture_rng_state` (after a save and load)."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda", [])
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_states and len(cuda_states) != available:
        _LOG.warning(
            "the checkpoint has RNG states for %d CUDA device(s), this machine has %d; "
            "restoring the first %d",
            len(cuda_states),
            available,
            min(len(cuda_states), available),
        )
    for device, cuda_state in enumerate(cuda_states[:available]):
        torch.cuda.set_rng_state(cuda_state.cpu(), device)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume a run from (`last.pt`), or None when the run has not saved one."""
    candidate = Path(run_dir) / LAST_CHECKPOINT
    return candidate if candidate.is_file() else None
