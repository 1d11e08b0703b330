"""Video SynthPed: procedurally rendered pedestrian tracklets in the MARS layout.

Why it exists: the video half of duatm must train, evaluate and demo without a download, on
data that holds what video DuATM is for (paper Fig. 1 (d)): sequences of one person that do
not line up frame by frame and that are corrupted for a few frames. It reuses the image
SynthPed's people (look-alike groups that differ only in a bag and a mark) and cameras
(``synth_render.py``), and adds time:

* **temporal misalignment**: every tracklet walks with its own cadence (frames per step cycle)
  and starts at its own walking phase, so frame i of one tracklet and frame i of another show
  different poses; the framing drifts slowly (the tracker's box zooms and slides);
* **interference frames**: in a fraction of tracklets another person (a stranger) or an
  occluder passes in front of the subject for 2..5 consecutive frames;
* **variable lengths**: every tracklet has its own number of frames, drawn from
  ``min_frames..max_frames``, including tracklets shorter than a 16-frame training clip;
* a static occluder over a whole tracklet in a fraction of them, as in the image SynthPed.

Layout (what ``duatm.data.datasets.MARS(out)`` reads)::

    bbox_train/PPPP/PPPPCcTttttFfff.jpg    identity, camera, tracklet, frame (1-based)
    bbox_test/PPPP/...                     test identities, 0000 distractors, 00-1 junk
    info/train_name.txt, test_name.txt     every frame name, sorted
    info/tracks_train_info.mat             track_train_info: int32 N x 4 [start, end, pid, cam]
    info/tracks_test_info.mat              track_test_info: the same for the test tracklets
    info/query_IDX.mat                     query_IDX: int32 1 x Q, 1-based rows of the test tracks

Identities ``1..num_ids // 2`` are training identities, the rest test identities; every identity
appears in every camera, ``tracklets_per_camera`` times. The first tracklet of each test
identity in each camera is a query, the others are gallery tracklets, so every query has true
matches from the other cameras. ``bbox_test/`` also holds ``num_distractors`` pid-0000
tracklets (badly framed strangers, kept as distractors) and ``num_junk`` pid -1 tracklets
(background only; the parser leaves them out).

The tree is deterministic: every tracklet is drawn from numpy Generators seeded by (seed,
kind, pid, camera, tracklet), so the same arguments give byte-identical files whatever the
number of workers. ``synthped.json`` records the arguments, the counts, the groups, each
identity's local details and each tracklet's length, cadence, phase, occluder and interference
frames (where the attention should look away).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    pick,
    random_stranger,
)
from duatm.data.synth_tree import MANIFEST_NAME, check_target, run_sharded, write_tree

__all__ = ["MAX_CAMERAS", "MAX_FRAMES", "MAX_IDS", "write_video_synthped"]

_FORMAT = "synthped-video"  # the manifest's "format": which writer made the tree
VIDEO_SYNTHPED_VERSION = (
    1  # bump when the rendering changes, so an old tree is not taken as current
)
# The MARS naming: one camera digit (the parser accepts 1..6), 4-digit ids and tracklet numbers,
# 3-digit frame numbers.
MAX_CAMERAS = 6
MAX_IDS = 9999
MAX_FRAMES = 999
JPEG_QUALITY = 90
JUNK_FOLDER = "00-1"
#: Clip length of the paper's training recipe; the manifest counts tracklets shorter than it.
PAPER_CLIP_LEN = 16

# Seed-stream tags of the tracklets, after the renderer's own (identities, cameras).
_PERSON_STREAM, _DISTRACTOR_STREAM, _JUNK_STREAM = range(FIRST_FREE_STREAM, FIRST_FREE_STREAM + 3)
# A MATLAB v5 file starts with 116 bytes of descriptive text.
_MAT_HEADER_TEXT = 116
_PASSER_COLORS = ((90, 90, 95), (160, 160, 150), (120, 60, 40), (40, 70, 40), (200, 190, 170))


@dataclass(frozen=True, slots=True)
class _Interference:
    """Something passing in front of the subject during frames ``start..start + length - 1``
    (0-based): a stranger walking across, or a block sliding across."""

    kind: str  # "person" | "occluder"
    start: int
    length: int
    direction: int  # +1: left to right, -1: right to left
    scale: float  # the passer's height relative to the subject's / the block's width fraction
    seed: int  # draws the stranger or the block colour


@dataclass(frozen=True, slots=True)
class _Tracklet:
    """One tracklet to render: where its frames go, and every number that shapes its motion."""

    home: str  # "bbox_train" or "bbox_test"
    split: str  # "train", "query", "gallery"
    stream: int
    pid: int  # -1 junk, 0 distractor
    camera: int  # 1-based
    number: int  # 1-based per (pid, camera)
    length: int
    period: float  # frames per walking cycle
    phase: float  # walking phase of the first frame, radians
    stride: float  # leg spread amplitude (person-height units)
    swing: float  # arm swing amplitude
    lean: float
    scale: float  # person height / image height at the middle frame
    zoom: float  # relative change of the scale from the first to the last frame
    x0: float  # horizontal offset of the first frame (image-width units)
    drift: float  # horizontal offset change over the tracklet (image-width units)
    y0: float  # vertical offset (image-height units)
    brightness: float
    background: tuple[int, int]  # top-left of the first frame's background window
    pan: float  # background window shift per frame, pixels
    occluder_seed: int | None  # a static occluder over every frame, drawn from this seed
    interference: _Interference | None

    @property
    def folder(self) -> str:
        return JUNK_FOLDER if self.pid == -1 else f"{self.pid:04d}"

    @property
    def key(self) -> str:
        """``PPPPCcTtttt``: what the names of its frames share."""
        return f"{self.folder}C{self.camera}T{self.number:04d}"

    def frame_name(self, frame: int) -> str:
        """The MARS name of 0-based frame ``frame``."""
        return f"{self.key}F{frame + 1:03d}.jpg"


@dataclass(frozen=True, slots=True)
class _VideoScene:
    """What every tracklet of one write shares (picklable, so worker processes get it whole)."""

    seed: int
    height: int
    width: int
    nuisance: bool
    identities: tuple[Identity, ...]
    cameras: tuple[Camera, ...]


def _draw_tracklet(
    args: dict,
    bg_size: tuple[int, int],
    split: str,
    stream: int,
    pid: int,
    camera: int,
    number: int,
) -> _Tracklet:
    """Every random number that shapes one tracklet, drawn from its own seed stream."""
    rng = np.random.default_rng([args["seed"], stream, pid + 1, camera, number])
    height, width, nuisance = args["height"], args["width"], args["nuisance"]
    length = int(rng.integers(args["min_frames"], args["max_frames"] + 1))
    period = float(rng.uniform(8.0, 14.0))
    phase = float(rng.uniform(0.0, 2 * math.pi))
    stride, swing = float(rng.uniform(0.04, 0.075)), float(rng.uniform(0.02, 0.045))
    lean = float(rng.uniform(-0.03, 0.03))
    scale = float(rng.uniform(0.93, 1.06))
    zoom, drift = float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))
    x0, y0 = float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.03, 0.03))
    brightness = float(rng.uniform(0.92, 1.08))
    bg_w, bg_h = bg_size
    background = (int(rng.integers(0, bg_w - width + 1)), int(rng.integers(0, bg_h - height + 1)))
    pan = float(rng.uniform(-0.006, 0.006) * width)
    # Junk is background with something in front of it, as in the image SynthPed.
    occluded = rng.random() < args["occlusion_prob"] or stream == _JUNK_STREAM
    occluder_seed = int(rng.integers(2**31))
    interference = None
    if rng.random() < args["interference_prob"]:
        start = int(rng.integers(length))
        interference = _Interference(
            kind="person" if rng.random() < 0.5 else "occluder",
            start=start,
            length=min(int(rng.integers(2, 6)), length - start),
            direction=1 if rng.random() < 0.5 else -1,
            scale=float(rng.uniform(0.95, 1.15)),
            seed=int(rng.integers(2**31)),
        )
    if stream == _DISTRACTOR_STREAM:  # a bad detection: off-centre and too large or small
        scale *= float(rng.choice([rng.uniform(0.5, 0.7), rng.uniform(1.3, 1.6)]))
        x0, y0 = float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.25))
    if not nuisance:  # neutral framing, nothing in front; people still walk
        scale, zoom, drift, x0, y0, lean, brightness, pan = 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0
        occluded, interference = False, None
    return _Tracklet(
        home="bbox_train" if split == "train" else "bbox_test",
        split=split,
        stream=stream,
        pid=pid,
        camera=camera,
        number=number,
        length=length,
        period=period,
        phase=phase,
        stride=stride,
        swing=swing,
        lean=lean,
        scale=scale,
        zoom=zoom,
        x0=x0,
        drift=drift,
        y0=y0,
        brightness=brightness,
        background=background,
        pan=pan,
        occluder_seed=occluder_seed if occluded else None,
        interference=interference,
    )


def _plan(args: dict, cameras: Sequence[Camera]) -> list[_Tracklet]:
    """Every tracklet in the kit's order (sorted by name): junk, distractors, then identities."""
    num_ids, num_cameras = args["num_ids"], args["num_cameras"]
    num_train_ids = num_ids // 2
    bg_size = cameras[0].background.size
    tracklets: list[_Tracklet] = []
    for stream, pid, count in (
        (_JUNK_STREAM, -1, args["num_junk"]),
        (_DISTRACTOR_STREAM, 0, args["num_distractors"]),
    ):
        for camera in range(1, num_cameras + 1):
            for number in range(1, len(range(camera - 1, count, num_cameras)) + 1):
                tracklets.append(
                    _draw_tracklet(args, bg_size, "gallery", stream, pid, camera, number)
                )
    for pid in range(1, num_ids + 1):
        train = pid <= num_train_ids
        for camera in range(1, num_cameras + 1):
            for number in range(1, args["tracklets_per_camera"] + 1):
                split = "train" if train else ("query" if number == 1 else "gallery")
                tracklets.append(
                    _draw_tracklet(args, bg_size, split, _PERSON_STREAM, pid, camera, number)
                )
    return tracklets


def _subject(tracklet: _Tracklet, scene: _VideoScene) -> Identity | None:
    """Who the tracklet follows: an identity, a stranger (distractor) or nobody (junk)."""
    if tracklet.stream == _PERSON_STREAM:
        return scene.identities[tracklet.pid - 1]
    if tracklet.stream == _DISTRACTOR_STREAM:
        rng = np.random.default_rng(
            [scene.seed, tracklet.stream, tracklet.camera, tracklet.number, 1]
        )
        return random_stranger(rng)
    return None


def _render_frames(tracklet: _Tracklet, scene: _VideoScene) -> list[Image.Image]:
    """Every frame of one tracklet: the subject walking, what passes in front, the camera."""
    height, width = scene.height, scene.width
    camera = scene.cameras[tracklet.camera - 1]
    who = _subject(tracklet, scene)
    passer = None
    event = tracklet.interference
    if event is not None and event.kind == "person":
        passer = random_stranger(np.random.default_rng(event.seed))
    # Per-frame randomness (box jitter, sensor noise) from its own stream.
    rng = np.random.default_rng(
        [scene.seed, tracklet.stream, tracklet.pid + 1, tracklet.camera, tracklet.number, 1]
    )
    bg_w = camera.background.size[0]
    frames = []
    n = tracklet.length
    for k in range(n):
        along = k / (n - 1) - 0.5 if n > 1 else 0.0  # -0.5 at the first frame, 0.5 at the last
        ox = int(np.clip(round(tracklet.background[0] + tracklet.pan * k), 0, bg_w - width))
        oy = tracklet.background[1]
        image = camera.background.crop((ox, oy, ox + width, oy + height))
        draw = ImageDraw.Draw(image)
        jitter = rng.normal(0.0, 0.008, size=2) if scene.nuisance else np.zeros(2)
        theta = tracklet.phase + 2 * math.pi * k / tracklet.period
        person_h = camera.person_scale * tracklet.scale * (1 + tracklet.zoom * along) * height
        if who is not None:
            dx = (tracklet.x0 + tracklet.drift * along + jitter[0]) * width
            bob = -0.012 * abs(math.sin(theta))
            dy = (tracklet.y0 + bob + jitter[1]) * height
            frame = BodyFrame(width / 2 + dx, (height - person_h) / 2 + dy, person_h, tracklet.lean)
            stride = tracklet.stride * abs(math.sin(theta))
            draw_person(draw, who, frame, stride, tracklet.swing * math.sin(theta))
        if tracklet.occluder_seed is not None:
            # The same generator state every frame: a static occluder.
            draw_occluder(draw, np.random.default_rng(tracklet.occluder_seed), height, width)
        if event is not None and event.start <= k < event.start + event.length:
            _draw_interference(draw, event, k - event.start, passer, person_h, height, width)
        if scene.nuisance:
            image = develop(image, camera, tracklet.brightness, rng)
        frames.append(image)
    return frames


def _draw_interference(
    draw: ImageDraw.ImageDraw,
    event: _Interference,
    step: int,
    passer: Identity | None,
    person_h: float,
    height: int,
    width: int,
) -> None:
    """One frame of a passing stranger or block: it crosses the image during the event."""
    progress = (step + 0.5) / event.length  # 0..1 across the event's frames
    x = width / 2 + event.direction * (progress - 0.5) * 0.9 * width
    if passer is not None:
        h = person_h * event.scale
        theta = math.pi * 4 * progress
        frame = BodyFrame(x, (height - h) / 2 + 0.04 * height, h, 0.0)
        draw_person(draw, passer, frame, 0.06 * abs(math.sin(theta)), 0.04 * math.sin(theta))
        return
    half = 0.12 * event.scale * width
    color = pick(np.random.default_rng(event.seed), _PASSER_COLORS, 25)
    draw.rectangle((x - half, 0, x + half, height), fill=color)


def _write_tracklets(scene: _VideoScene, tracklets: Sequence[_Tracklet], root: Path) -> None:
    """Render and save ``tracklets`` under ``root``; runs in the main process or in a worker."""
    for tracklet in tracklets:
        folder = root / tracklet.home / tracklet.folder
        folder.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(_render_frames(tracklet, scene)):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
            (folder / tracklet.frame_name(k)).write_bytes(buffer.getvalue())


def _write_info(root: Path, tracklets: Sequence[_Tracklet]) -> None:
    """The MARS evaluation kit's info/ files for ``tracklets`` (in name order)."""
    info = root / "info"
    info.mkdir()
    for home, list_name, mat_name, variable in (
        ("bbox_train", "train_name.txt", "tracks_train_info.mat", "track_train_info"),
        ("bbox_test", "test_name.txt", "tracks_test_info.mat", "track_test_info"),
    ):
        names: list[str] = []
        rows: list[list[int]] = []
        queries: list[int] = []
        for tracklet in (t for t in tracklets if t.home == home):
            start = len(names) + 1
            names += [tracklet.frame_name(k) for k in range(tracklet.length)]
            rows.append([start, len(names), tracklet.pid, tracklet.camera])
            if tracklet.split == "query":
                queries.append(len(rows))
        (info / list_name).write_text("".join(f"{name}\n" for name in names))
        _write_mat(info / mat_name, variable, np.asarray(rows, dtype=np.int32).reshape(-1, 4))
        if home == "bbox_test":
            _write_mat(info / "query_IDX.mat", "query_IDX", np.asarray([queries], dtype=np.int32))


def _write_mat(path: Path, variable: str, value: np.ndarray) -> None:
    """A MATLAB v5 file holding one variable, as the kit's; its header text, which scipy
    stamps with the current time, is fixed so the tree stays byte-identical."""
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, {variable: value})
    data = bytearray(buffer.getvalue())
    data[:_MAT_HEADER_TEXT] = b"MATLAB 5.0 MAT-file, written by duatm video SynthPed".ljust(
        _MAT_HEADER_TEXT
    )
    path.write_bytes(bytes(data))


def _validate(args: dict) -> None:
    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"write_video_synthped: {field}={args[field]!r}, expected {expected}")

    need(
        2 <= args["num_cameras"] <= MAX_CAMERAS,
        "num_cameras",
        f"2..{MAX_CAMERAS} (at least 2 so every query has cross-camera matches; at most "
        f"{MAX_CAMERAS}: MARS names have one camera digit and its parser reads 1..{MAX_CAMERAS})",
    )
    need(
        2 <= args["num_ids"] <= MAX_IDS,
        "num_ids",
        f"2..{MAX_IDS} (one training and one test identity at least; MARS ids have 4 digits)",
    )
    need(args["seed"] >= 0, "seed", "a non-negative integer")
    need(args["height"] >= 32, "height", "at least 32 pixels")
    need(args["width"] >= 16, "width", "at least 16 pixels")
    need(args["tracklets_per_camera"] >= 1, "tracklets_per_camera", "at least 1")
    need(
        1 <= args["min_frames"] <= MAX_FRAMES,
        "min_frames",
        f"1..{MAX_FRAMES} (MARS frame numbers have 3 digits)",
    )
    need(
        args["min_frames"] <= args["max_frames"] <= MAX_FRAMES,
        "max_frames",
        f"min_frames={args['min_frames']}..{MAX_FRAMES}",
    )
    need(args["max_group_size"] >= 1, "max_group_size", "at least 1 (1 means no look-alike groups)")
    need(
        args["max_group_size"] <= MARK_GRID**2,
        "max_group_size",
        f"at most {MARK_GRID**2} (each member of a group needs its own mark cell)",
    )
    need(args["num_distractors"] >= 0, "num_distractors", "a non-negative integer")
    need(args["num_junk"] >= 0, "num_junk", "a non-negative integer")
    need(0.0 <= args["occlusion_prob"] <= 1.0, "occlusion_prob", "a probability in [0, 1]")
    need(0.0 <= args["interference_prob"] <= 1.0, "interference_prob", "a probability in [0, 1]")


def write_video_synthped(
    out: str | Path,
    num_ids: int = 60,
    num_cameras: int = 3,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    tracklets_per_camera: int = 2,
    *,
    min_frames: int = 6,
    max_frames: int = 40,
    max_group_size: int = 4,
    num_distractors: int | None = None,
    num_junk: int | None = None,
    occlusion_prob: float = 0.2,
    interference_prob: float = 0.5,
    nuisance: bool = True,
    workers: int = 1,
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Render video SynthPed into ``out`` (MARS layout) and return ``out``.

    Like :func:`duatm.data.synthped.write_synthped`: built in a temporary sibling and renamed
    into place, kept when ``out`` holds the same tree, replaced only with ``overwrite=True``,
    never written over a folder that is not a SynthPed. ``num_distractors`` / ``num_junk``
    default to 0.1 tracklets per identity each. ``nuisance=False`` turns off the camera
    variation, the framing drift and jitter, occluders and interference (people still walk,
    each tracklet at its own cadence and phase). Frames are ``height`` x ``width`` (MARS's
    recipe resizes its 256 x 128 boxes to 128 x 64). ``workers`` processes render in parallel;
    the files do not depend on it.
    """
    out = Path(out)
    arguments = {
        "num_ids": num_ids,
        "num_cameras": num_cameras,
        "seed": seed,
        "height": height,
        "width": width,
        "tracklets_per_camera": tracklets_per_camera,
        "min_frames": min_frames,
        "max_frames": max_frames,
        "max_group_size": max_group_size,
        "num_distractors": num_ids // 10 if num_distractors is None else num_distractors,
        "num_junk": num_ids // 10 if num_junk is None else num_junk,
        "occlusion_prob": occlusion_prob,
        "interference_prob": interference_prob,
        "nuisance": nuisance,
    }
    _validate(arguments)
    if workers < 1:
        raise ValueError(f"write_video_synthped: workers={workers!r}, expected at least 1")
    target = check_target(out, _FORMAT, VIDEO_SYNTHPED_VERSION, arguments, overwrite=overwrite)
    if target == "current":
        if verbose:
            print(f"SynthPed at {out} is already up to date ({MANIFEST_NAME} matches); kept")
        return out

    start = time.perf_counter()
    num_train_ids = num_ids // 2
    identities = make_identities(seed, num_train_ids, num_ids - num_train_ids, max_group_size)
    cameras = make_cameras(seed, num_cameras, height, width, nuisance)
    scene = _VideoScene(seed, height, width, nuisance, tuple(identities), tuple(cameras))
    tracklets = _plan(arguments, cameras)
    # Longest first, so the shards of the workers finish at about the same time.
    jobs = sorted(tracklets, key=lambda t: -t.length)

    def fill(staging: Path) -> dict:
        for home in ("bbox_train", "bbox_test"):
            (staging / home).mkdir()
        run_sharded(_write_tracklets, scene, jobs, staging, workers)
        _write_info(staging, tracklets)
        return _manifest(arguments, identities, tracklets)

    manifest = write_tree(out, fill, replace=target == "replace")
    if verbose:
        c = manifest["counts"]
        print(
            f"video SynthPed -> {out}: {num_ids} ids ({c['train_ids']} train / "
            f"{c['test_ids']} test), {num_cameras} cameras, {height}x{width}; tracklets: train "
            f"{c['train_tracklets']}, query {c['query_tracklets']}, gallery "
            f"{c['gallery_tracklets']} (incl. {arguments['num_distractors']} distractors pid 0, "
            f"{arguments['num_junk']} junk pid -1); {c['frames']} frames, "
            f"{c['short_tracklets']} tracklets shorter than {PAPER_CLIP_LEN}, "
            f"{c['interference_tracklets']} with interference; "
            f"{time.perf_counter() - start:.1f} s"
        )
    return out


def _manifest(
    arguments: dict, identities: Sequence[Identity], tracklets: Sequence[_Tracklet]
) -> dict:
    """What ``synthped.json`` records: how the tree was made and what is in it."""
    num_train_ids = arguments["num_ids"] // 2
    return {
        "format": _FORMAT,
        "version": VIDEO_SYNTHPED_VERSION,
        "arguments": arguments,
        "counts": {
            "train_ids": num_train_ids,
            "test_ids": arguments["num_ids"] - num_train_ids,
            "train_tracklets": sum(t.split == "train" for t in tracklets),
            "query_tracklets": sum(t.split == "query" for t in tracklets),
            "gallery_tracklets": sum(t.split == "gallery" for t in tracklets),
            "distractors": arguments["num_distractors"],
            "junk": arguments["num_junk"],
            "frames": sum(t.length for t in tracklets),
            "short_tracklets": sum(t.length < PAPER_CLIP_LEN for t in tracklets),
            "interference_tracklets": sum(t.interference is not None for t in tracklets),
        },
        "groups": identity_groups(identities),
        "identities": [describe_identity(who) for who in identities],
        "tracklets": [_describe_tracklet(t) for t in tracklets],
    }


def _describe_tracklet(tracklet: _Tracklet) -> dict:
    """Where a tracklet is and what happens in it; frame numbers as in the file names."""
    event = tracklet.interference
    return {
        "name": tracklet.key,
        "split": tracklet.split,
        "pid": tracklet.pid,
        "camera": tracklet.camera,
        "frames": tracklet.length,
        "period": round(tracklet.period, 3),
        "phase": round(tracklet.phase, 3),
        "occluded": tracklet.occluder_seed is not None,
        "interference": None
        if event is None
        else {"kind": event.kind, "frames": [event.start + 1, event.start + event.length]},
    }
