"""Writing a generated data tree safely: complete or absent, never over the user's files.

Both SynthPed writers (images and video) build their tree in a temporary sibling folder and
rename it into place, so ``out`` is either absent or complete. ``synthped.json`` (the manifest)
records how a tree was made and lists every file written (``files``): a tree made with the
same arguments is kept, one made with other arguments is replaced only when asked, and then
only the listed files go; anything the user added to the tree moves into the new one. A folder
without a manifest is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

MANIFEST_NAME = "synthped.json"

Target = Literal["new", "current", "replace"]
SceneT = TypeVar("SceneT")
JobT = TypeVar("JobT")


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of an existing SynthPed tree at ``out``, or None when there is none."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path}: unreadable SynthPed manifest ({err}); delete the folder"
        ) from err


def check_target(
    out: Path, kind: str, version: int, arguments: Mapping[str, Any], *, overwrite: bool
) -> Target:
    """What writing a ``kind`` tree (manifest ``format``) with ``arguments`` to ``out`` means.

    ``"current"``: the same tree is already there (keep it); ``"replace"``: another SynthPed is
    there and ``overwrite`` allows replacing it; ``"new"``: ``out`` is absent or empty. Anything
    else raises :class:`FileExistsError` saying why.
    """
    existing = read_manifest(out) if out.is_dir() else None
    if existing is not None:
        if (
            existing.get("format") == kind
            and existing.get("version") == version
            and existing.get("arguments") == dict(arguments)
        ):
            return "current"
        if not overwrite:
            raise FileExistsError(
                f"{out / MANIFEST_NAME}: a SynthPed with other arguments is there; "
                "pass overwrite=True (--overwrite) to replace it"
            )
        return "replace"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not a SynthPed folder; choose another --out")
    return "new"


def write_tree(
    out: Path, fill: Callable[[Path], dict[str, Any]], *, replace: bool
) -> dict[str, Any]:
    """Run ``fill(staging)`` (it writes the files and returns the manifest) in a temporary
    sibling of ``out``, write the manifest there (with the list of files), then rename the
    whole tree to ``out``. With ``replace``, what the old manifest does not list is the user's:
    it is moved into the new tree, and a user's file where the new tree has one is refused
    before anything in ``out`` changes."""
    keep = users_entries(out) if replace else []
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; ``out`` should be like any folder
    try:
        manifest = fill(staging)
        # What --overwrite may delete later: nothing else in the folder is SynthPed's.
        manifest["files"] = _files_under(staging)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
        clashes = [rel for rel in keep if os.path.lexists(staging / rel)]
        if clashes:
            raise FileExistsError(
                f"{out / clashes[0]}: not written by SynthPed, and the new SynthPed has a file "
                "of that name; move it away first"
            )
        _move_into_place(staging, out, replace=replace, keep=keep)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def users_entries(out: Path) -> list[str]:
    """Paths (relative, ``/``-separated) in the SynthPed tree ``out`` that its manifest does not
    list: the user's files and folders, each folder whole when SynthPed wrote nothing in it.

    Raises FileExistsError when the manifest lists no files (a tree written by an older duatm):
    then SynthPed's files cannot be told from the user's.
    """
    manifest = read_manifest(out) or {}
    files = manifest.get("files")
    if not isinstance(files, list):
        raise FileExistsError(
            f"{out / MANIFEST_NAME}: does not list the files SynthPed wrote (an older duatm "
            "wrote it), so --overwrite cannot tell them from yours; delete the folder yourself"
        )
    written = {*files, MANIFEST_NAME}
    folders = {str(parent) for rel in files for parent in Path(rel).parents if str(parent) != "."}
    users: list[str] = []

    def walk(folder: str) -> None:
        for name in sorted(os.listdir(out / folder)):
            rel = f"{folder}/{name}" if folder else name
            path = out / rel
            if rel in written:
                continue
            if rel in folders and path.is_dir() and not path.is_symlink():
                walk(rel)
            else:
                users.append(rel)

    walk("")
    return users


def _files_under(root: Path) -> list[str]:
    """Every file under ``root`` (relative, ``/``-separated, sorted), the manifest left out."""
    files = (path.relative_to(root).as_posix() for path in root.rglob("*") if not path.is_dir())
    return sorted(rel for rel in files if rel != MANIFEST_NAME)


def _move_into_place(staging: Path, out: Path, replace: bool, keep: Sequence[str] = ()) -> None:
    """Rename the finished tree to ``out``. An old SynthPed is moved aside first; the entries
    ``keep`` (the user's) move from it into the new tree; then the rest of it is deleted."""
    if not replace:
        os.replace(staging, out)  # also fine when ``out`` is an empty folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(staging, out)
    try:
        for rel in keep:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(old / out.name / rel, out / rel)
    except OSError as err:
        raise OSError(
            err.errno,
            f"{err.strerror}; your files not moved back yet are in {old / out.name}",
            err.filename,
        ) from err
    shutil.rmtree(old)


def run_sharded(
    render: Callable[[SceneT, Sequence[JobT], Path], None],
    scene: SceneT,
    jobs: Sequence[JobT],
    root: Path,
    workers: int,
) -> None:
    """``render(scene, jobs, root)`` over ``workers`` processes (each takes every workers-th
    job); what a job writes depends only on the job, so the tree does not depend on
    ``workers``."""
    if workers == 1:
        render(scene, jobs, root)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        shards = [jobs[i::workers] for i in range(workers)]
        list(pool.map(render, [scene] * workers, shards, [root] * workers))
