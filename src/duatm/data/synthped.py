"""SynthPed: a procedurally rendered pedestrian data set in the Market-1501 layout.

Why it exists: duatm must train, evaluate and demo without downloading anything, and a useful
stand-in has to contain what DuATM is built for (paper Fig. 1): people who look alike globally
and differ only in a local detail. SynthPed renders stick-figure pedestrians with

* an identity: hair colour and length, upper / lower clothing colour, sleeve and trouser length,
  shoe colour, build; a bag (none, or a shoulder / hand bag on the left or right, with its own
  colour) and a small mark (logo) on the torso with its own shape, colour and position;
* **hard-negative groups**: identities come in groups of 2..``max_group_size`` that share every
  global attribute (all colours, hair, sleeves, trousers, build) and differ only in the bag and the
  mark (each member of a group has its mark in a different cell of a 3x3 grid on the torso);
* **camera nuisance**: per camera a background (gradient, texture, floor), an illumination
  (gain, gamma), a white balance, a person scale, sensor noise and blur;
* **image nuisance**: per image a shift, a slight scale change, walking pose (stride, arm swing,
  lean), a brightness jitter and, in a fraction of images, an occluder (pole, low box, side block).

Layout and naming follow Market-1501 so ``duatm.data.datasets.Market1501(out)`` reads it:
``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names
``PPPP_cCsS_FFFFFF_NN.jpg`` (pid 0001.., camera c1..cC, sequence s1, frame, ``00``).
Identities ``1..num_ids // 2`` are training identities, the rest test identities (groups never
straddle the split). Every identity appears in every camera, ``images_per_id_per_camera`` times.
For a test identity the first ``queries_per_camera`` images of each camera go to ``query/``, the
rest to ``bounding_box_test/``, so every query has true matches from the other cameras.
``bounding_box_test/`` also holds ``num_distractors`` pid-0000 images (badly cropped strangers;
the Market protocol keeps them as gallery distractors) and ``num_junk`` pid ``-1`` images
(background without a person; the protocol drops them).

The tree is deterministic: every image is drawn from a numpy Generator seeded by
(seed, kind, pid, camera, index), JPEGs are written at a fixed quality without metadata, so the
same arguments give byte-identical files (with the same Pillow / libjpeg). ``synthped.json`` in
``out`` records the arguments, the counts, the groups and each identity's local details.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

from duatm.data.synth_render import (
    FIRST_FREE_STREAM,
    MARK_GRID,
    BodyFrame,
    Camera,
    Identity,
    describe_identity,
    develop,
    draw_occluder,
    draw_person,
    identity_groups,
    make_cameras,
    make_identities,
    random_stranger,
)
from duatm.data.synth_tree import MANIFEST_NAME, SceneT, check_target, run_sharded, write_tree
from duatm.data.synthped_video import write_video_synthped
from duatm.errors import one_line_message

__all__ = [
    "MANIFEST_NAME",
    "MAX_CAMERAS",
    "MAX_IDS",
    "add_synth_arguments",
    "run_synth",
    "write_synthped",
]

_FORMAT = "synthped"  # the manifest's "format": which writer made the tree
# The Market-1501 loader accepts cameras c1..c6 and identities up to 1501; stay inside both.
MAX_CAMERAS = 6
MAX_IDS = 1501
SYNTHPED_VERSION = 1  # bump when the rendering changes, so an old tree is not taken as current
JPEG_QUALITY = 90
SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")

# Seed-stream tags of the images, after the renderer's own (identities, cameras).
PERSON_STREAM, DISTRACTOR_STREAM, JUNK_STREAM = range(FIRST_FREE_STREAM, FIRST_FREE_STREAM + 3)


class HasPid(Protocol):
    """Anything with a 1-based identity number (each family's identity record)."""

    @property
    def pid(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ImageJob:
    """One file to render: where it goes and the numbers that seed it."""

    folder: str
    name: str
    stream: int
    pid: int
    camera: int  # 1-based
    index: int


@dataclass(frozen=True, slots=True)
class _Scene:
    """What every image of one write shares (picklable, so worker processes get it whole)."""

    seed: int
    height: int
    width: int
    nuisance: bool
    occlusion_prob: float
    identities: tuple[Identity, ...]
    cameras: tuple[Camera, ...]


def _subject(job: ImageJob, scene: _Scene) -> Identity | None:
    """Who is in the image: the identity, a stranger (distractor) or nobody (junk)."""
    if job.stream == PERSON_STREAM:
        return scene.identities[job.pid - 1]
    if job.stream == DISTRACTOR_STREAM:
        return random_stranger(
            np.random.default_rng([scene.seed, job.stream, 0, job.camera, job.index, 1])
        )
    return None


def _render(job: ImageJob, scene: _Scene) -> Image.Image:
    """One image: background window, person (or none for junk), occluder, light, blur, noise."""
    seed, height, width, nuisance = scene.seed, scene.height, scene.width, scene.nuisance
    camera = scene.cameras[job.camera - 1]
    who = _subject(job, scene)
    rng = np.random.default_rng([seed, job.stream, job.pid + 1, job.camera, job.index])
    bg_w, bg_h = camera.background.size
    ox, oy = (int(rng.integers(0, bg_w - width + 1)), int(rng.integers(0, bg_h - height + 1)))
    image = camera.background.crop((ox, oy, ox + width, oy + height))
    draw = ImageDraw.Draw(image)
    if who is not None:
        if nuisance:  # framing and walking pose
            scale = camera.person_scale * rng.uniform(0.93, 1.06)
            dx, dy = rng.uniform(-0.08, 0.08) * width, rng.uniform(-0.03, 0.03) * height
            stride, swing, lean = (
                rng.uniform(0, 0.07),
                rng.uniform(-0.04, 0.04),
                rng.uniform(-0.03, 0.03),
            )
        else:
            scale, dx, dy, stride, swing, lean = camera.person_scale, 0.0, 0.0, 0.0, 0.0, 0.0
        if job.stream == DISTRACTOR_STREAM:  # a bad detection: off-centre and too large or small
            scale *= rng.choice([rng.uniform(0.45, 0.7), rng.uniform(1.3, 1.8)])
            dx, dy = rng.uniform(-0.35, 0.35) * width, rng.uniform(-0.4, 0.3) * height
        person_h = scale * height
        frame = BodyFrame(width / 2 + dx, (height - person_h) / 2 + dy, person_h, lean)
        draw_person(draw, who, frame, stride, swing)
    if nuisance and (who is None or rng.random() < scene.occlusion_prob):
        draw_occluder(draw, rng, height, width)
    if not nuisance:
        return image
    return develop(image, camera, rng.uniform(0.92, 1.08), rng)


def market_name(pid: int, camera: int, frame: int) -> str:
    pid_text = "-1" if pid == -1 else f"{pid:04d}"
    return f"{pid_text}_c{camera}s1_{frame:06d}_00.jpg"


def plan_market_layout(
    identities: Sequence[HasPid],
    num_train_ids: int,
    num_cameras: int,
    images_per_id_per_camera: int,
    queries_per_camera: int,
    num_distractors: int,
    num_junk: int,
) -> list[ImageJob]:
    """Which file goes where: train ids to train, test ids split per camera into query/gallery,
    then pid-0 distractors and pid -1 junk in the gallery (shared by the image families)."""
    jobs = []
    for who in identities:
        for cam in range(1, num_cameras + 1):
            base = (who.pid * 7919 + cam * 104729) % 90000  # a plausible, stable frame number
            for k in range(images_per_id_per_camera):
                if who.pid <= num_train_ids:
                    folder = "bounding_box_train"
                else:
                    folder = "query" if k < queries_per_camera else "bounding_box_test"
                name = market_name(who.pid, cam, base + 6 * k)
                jobs.append(ImageJob(folder, name, PERSON_STREAM, who.pid, cam, k))
    for stream, count, pid in (
        (DISTRACTOR_STREAM, num_distractors, 0),
        (JUNK_STREAM, num_junk, -1),
    ):
        for j in range(count):
            cam = j % num_cameras + 1
            jobs.append(
                ImageJob("bounding_box_test", market_name(pid, cam, j), stream, pid, cam, j)
            )
    return jobs


def validate_market_arguments(writer: str, args: dict) -> None:
    """Check the arguments every Market-layout writer shares (names them and the writer)."""

    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"{writer}: {field}={args[field]!r}, expected {expected}")

    need(
        2 <= args["num_cameras"] <= MAX_CAMERAS,
        "num_cameras",
        f"2..{MAX_CAMERAS} (at least 2 so every query has cross-camera matches; at most "
        f"{MAX_CAMERAS}: the Market-1501 naming and loader read one digit c1..c{MAX_CAMERAS})",
    )
    need(
        2 <= args["num_ids"] <= MAX_IDS,
        "num_ids",
        f"2..{MAX_IDS} (one training and one test identity at least; at most the "
        "Market-1501 id range its loader accepts)",
    )
    need(args["seed"] >= 0, "seed", "a non-negative integer")
    need(args["height"] >= 32, "height", "at least 32 pixels")
    need(args["width"] >= 16, "width", "at least 16 pixels")
    need(args["queries_per_camera"] >= 1, "queries_per_camera", "at least 1")
    need(
        args["images_per_id_per_camera"] > args["queries_per_camera"],
        "images_per_id_per_camera",
        f"more than queries_per_camera={args['queries_per_camera']} (the rest is the gallery)",
    )
    need(args["num_distractors"] >= 0, "num_distractors", "a non-negative integer")
    need(args["num_junk"] >= 0, "num_junk", "a non-negative integer")
    need(0.0 <= args["occlusion_prob"] <= 1.0, "occlusion_prob", "a probability in [0, 1]")


def _validate(args: dict) -> None:
    validate_market_arguments("write_synthped", args)

    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"write_synthped: {field}={args[field]!r}, expected {expected}")

    need(args["max_group_size"] >= 1, "max_group_size", "at least 1 (1 means no look-alike groups)")
    need(
        args["max_group_size"] <= MARK_GRID**2,
        "max_group_size",
        f"at most {MARK_GRID**2} (each member of a group needs its own mark cell)",
    )


def write_synthped(
    out: str | Path,
    num_ids: int = 200,
    num_cameras: int = 6,
    seed: int = 0,
    height: int = 256,
    width: int = 128,
    images_per_id_per_camera: int = 4,
    *,
    queries_per_camera: int = 1,
    max_group_size: int = 4,
    num_distractors: int | None = None,
    num_junk: int | None = None,
    occlusion_prob: float = 0.25,
    nuisance: bool = True,
    workers: int = 1,
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Render SynthPed into ``out`` (Market-1501 layout) and return ``out``.

    The tree is built in a temporary sibling folder and renamed into place, so ``out`` is either
    absent or complete. If ``out`` already holds a SynthPed written with the same arguments it is
    kept as is; a SynthPed with other arguments is replaced only with ``overwrite=True``; any
    other non-empty folder is never touched. ``nuisance=False`` turns off every camera and image
    variation (plain grey background, neutral pose, no occluders, no noise): each identity then
    looks the same in every image, which shows exactly what tells look-alikes apart.
    ``num_distractors`` / ``num_junk`` default to 0.6 / 0.3 per identity (Market-1501 has
    about 1.9 / 2.5 per identity; ours are fewer so they do not swamp a small gallery).
    ``workers`` processes render in parallel; the files do not depend on it.
    """
    out = Path(out)
    num_distractors, num_junk = market_extras(num_ids, num_distractors, num_junk)
    arguments = {
        "num_ids": num_ids,
        "num_cameras": num_cameras,
        "seed": seed,
        "height": height,
        "width": width,
        "images_per_id_per_camera": images_per_id_per_camera,
        "queries_per_camera": queries_per_camera,
        "max_group_size": max_group_size,
        "num_distractors": num_distractors,
        "num_junk": num_junk,
        "occlusion_prob": occlusion_prob,
        "nuisance": nuisance,
    }
    _validate(arguments)
    if workers < 1:
        raise ValueError(f"write_synthped: workers={workers!r}, expected at least 1")
    target = check_target(out, _FORMAT, SYNTHPED_VERSION, arguments, overwrite=overwrite)
    if target == "current":
        if verbose:
            print(f"SynthPed at {out} is already up to date ({MANIFEST_NAME} matches); kept")
        return out

    start = time.perf_counter()
    num_train_ids = num_ids // 2
    identities = make_identities(seed, num_train_ids, num_ids - num_train_ids, max_group_size)
    cameras = make_cameras(seed, num_cameras, height, width, nuisance)
    scene = _Scene(seed, height, width, nuisance, occlusion_prob, tuple(identities), tuple(cameras))
    jobs = plan_market_layout(
        identities,
        num_train_ids,
        num_cameras,
        images_per_id_per_camera,
        queries_per_camera,
        num_distractors,
        num_junk,
    )

    manifest = write_market_tree(
        out,
        _write_images,
        scene,
        jobs,
        _manifest(arguments, identities, jobs),
        workers=workers,
        replace=target == "replace",
    )
    if verbose:
        c = manifest["counts"]
        print(
            f"SynthPed -> {out}: {num_ids} ids ({c['train_ids']} train / {c['test_ids']} test), "
            f"{num_cameras} cameras, {height}x{width}; train {c['train_images']} images, "
            f"query {c['query_images']}, gallery {c['gallery_images']} "
            f"(incl. {num_distractors} distractors pid 0, {num_junk} junk pid -1); "
            f"{len(jobs)} images in {time.perf_counter() - start:.1f} s"
        )
    return out


def _write_images(scene: _Scene, jobs: Sequence[ImageJob], root: Path) -> None:
    """Render and save ``jobs`` under ``root``; runs in the main process or in a worker."""
    for job in jobs:
        save_jpeg(_render(job, scene), root / job.folder / job.name)


def save_jpeg(image: Image.Image, path: Path) -> None:
    """Write ``image`` as a JPEG of the synthetic trees' quality, in one write."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    path.write_bytes(buffer.getvalue())


def market_extras(
    num_ids: int, num_distractors: int | None, num_junk: int | None
) -> tuple[int, int]:
    """The distractor and junk image counts of a Market-layout tree: 0.6 / 0.3 per identity
    unless given (Market-1501 has about 1.9 / 2.5; fewer here so they do not swamp a small
    gallery)."""
    return (
        num_ids * 3 // 5 if num_distractors is None else num_distractors,
        num_ids * 3 // 10 if num_junk is None else num_junk,
    )


def write_market_tree(
    out: Path,
    write_jobs: Callable[[SceneT, Sequence[ImageJob], Path], None],
    scene: SceneT,
    jobs: Sequence[ImageJob],
    manifest: dict,
    *,
    workers: int,
    replace: bool,
) -> dict:
    """Stage the Market-1501 folders, render ``jobs`` into them (``write_jobs(scene, jobs,
    root)`` over ``workers`` processes), and put the tree in place as ``out`` with ``manifest``
    (:func:`duatm.data.synth_tree.write_tree`); returns the manifest."""

    def fill(staging: Path) -> dict:
        for folder in SPLIT_DIRS:
            (staging / folder).mkdir()
        run_sharded(write_jobs, scene, jobs, staging, workers)
        return manifest

    return write_tree(out, fill, replace=replace)


def _manifest(arguments: dict, identities: Sequence[Identity], jobs: Sequence[ImageJob]) -> dict:
    """What ``synthped.json`` records: how the tree was made and what is in it."""
    counts = {folder: sum(job.folder == folder for job in jobs) for folder in SPLIT_DIRS}
    num_train_ids = arguments["num_ids"] // 2
    return {
        "format": _FORMAT,
        "version": SYNTHPED_VERSION,
        "arguments": arguments,
        "counts": {
            "train_ids": num_train_ids,
            "test_ids": arguments["num_ids"] - num_train_ids,
            "train_images": counts["bounding_box_train"],
            "query_images": counts["query"],
            "gallery_images": counts["bounding_box_test"],
            "distractors": arguments["num_distractors"],
            "junk": arguments["num_junk"],
        },
        "groups": identity_groups(identities),
        "identities": [describe_identity(who) for who in identities],
    }


# Command-line options of ``duatm synth`` -> keyword of the writers; None means "the writer's
# default", so each kind keeps its own defaults and an option of the other kind is caught.
_COMMON_OPTIONS = {
    "ids": "num_ids",
    "cameras": "num_cameras",
    "height": "height",
    "width": "width",
    "max_group_size": "max_group_size",
    "distractors": "num_distractors",
    "junk": "num_junk",
    "occlusion_prob": "occlusion_prob",
}
_IMAGE_OPTIONS = {
    "images_per_camera": "images_per_id_per_camera",
    "queries_per_camera": "queries_per_camera",
}
_VIDEO_OPTIONS = {
    "tracklets_per_camera": "tracklets_per_camera",
    "min_frames": "min_frames",
    "max_frames": "max_frames",
    "interference_prob": "interference_prob",
}


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``duatm synth``; also sets ``handler=run_synth`` on the parser."""
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write (Market-1501 layout; MARS layout with --video)",
    )
    parser.add_argument(
        "--video",
        action="store_true",
        help="write video SynthPed: tracklets in the MARS layout (duatm.data.synthped_video)",
    )
    parser.add_argument(
        "--ids", type=int, help="identities, half train / half test (default 200; video 60)"
    )
    parser.add_argument(
        "--cameras", type=int, help=f"cameras, 2..{MAX_CAMERAS} (default 6; video 3)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="draws the cameras as well as the people: another seed is another camera world; "
        "to add new people under the same cameras keep the seed and raise --ids",
    )
    parser.add_argument("--height", type=int, help="image height (default 256; video 128)")
    parser.add_argument("--width", type=int, help="image width (default 128; video 64)")
    parser.add_argument(
        "--max-group-size",
        type=int,
        help="look-alike group size (1 = no hard negatives; default 4)",
    )
    parser.add_argument(
        "--distractors",
        type=int,
        help="pid-0000 gallery distractors (default 0.6 per id; video: tracklets, 0.1 per id)",
    )
    parser.add_argument(
        "--junk", type=int, help="pid -1 junk (default 0.3 images per id; video 0.1 tracklets)"
    )
    parser.add_argument(
        "--occlusion-prob", type=float, help="fraction occluded (default 0.25; video 0.2)"
    )
    parser.add_argument(
        "--family",
        choices=("synthped", "patchped"),
        default="synthped",
        help="image renderer: synthped (stick figures, look-alikes differ in bag and mark) or "
        "patchped (textured bodies, look-alikes differ only in where a badge sits; "
        "duatm.data.patchped)",
    )
    images = parser.add_argument_group("image SynthPed only")
    images.add_argument(
        "--images-per-camera", type=int, help="images per identity and camera (default 4)"
    )
    images.add_argument("--queries-per-camera", type=int, help="of those, queries (default 1)")
    video = parser.add_argument_group("video SynthPed only (--video)")
    video.add_argument(
        "--tracklets-per-camera",
        type=int,
        help="tracklets per identity and camera; the first of a test identity is a query "
        "(default 2)",
    )
    video.add_argument("--min-frames", type=int, help="shortest tracklet (default 6)")
    video.add_argument("--max-frames", type=int, help="longest tracklet (default 40)")
    video.add_argument(
        "--interference-prob",
        type=float,
        help="fraction of tracklets where a person or an occluder passes in front for a few "
        "frames (default 0.5)",
    )
    parser.add_argument(
        "--no-nuisance",
        action="store_true",
        help="no camera/image variation (canonical look of each identity)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="rendering processes (the output does not depend on it)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing SynthPed")
    parser.set_defaults(handler=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from duatm.data.patchped import write_patchped  # it builds on this module

    """``duatm synth``: write SynthPed (images, or tracklets with ``--video``) and print a
    summary; 0 on success, 2 on bad arguments."""
    own, other = (
        (_VIDEO_OPTIONS, _IMAGE_OPTIONS) if args.video else (_IMAGE_OPTIONS, _VIDEO_OPTIONS)
    )
    misplaced = [f"--{name.replace('_', '-')}" for name in other if getattr(args, name) is not None]
    if misplaced:
        kind = "image SynthPed (without --video)" if args.video else "video SynthPed (--video)"
        print(f"duatm synth: error: {', '.join(misplaced)}: only for {kind}", file=sys.stderr)
        return 2
    options = {
        keyword: getattr(args, name)
        for name, keyword in {**_COMMON_OPTIONS, **own}.items()
        if getattr(args, name) is not None
    }
    if args.family == "patchped":
        if args.video or args.no_nuisance:
            print(
                "duatm synth: error: --family patchped has no --video or --no-nuisance",
                file=sys.stderr,
            )
            return 2
        write, options["workers"] = write_patchped, args.workers
    elif args.video:
        write = write_video_synthped
        options.update(nuisance=not args.no_nuisance, workers=args.workers)
    else:
        write = write_synthped
        options.update(nuisance=not args.no_nuisance, workers=args.workers)
    try:
        write(args.out, seed=args.seed, overwrite=args.overwrite, verbose=True, **options)
    except (ValueError, OSError) as err:
        print(f"duatm synth: error: {one_line_message(err)}", file=sys.stderr)
        return 2
    return 0
