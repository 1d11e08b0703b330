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
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "MANIFEST_NAME",
    "MAX_CAMERAS",
    "MAX_IDS",
    "add_synth_arguments",
    "run_synth",
    "write_synthped",
]

MANIFEST_NAME = "synthped.json"
# The Market-1501 loader accepts cameras c1..c6 and identities up to 1501; stay inside both.
MAX_CAMERAS = 6
MAX_IDS = 1501
SYNTHPED_VERSION = 1  # bump when the rendering changes, so an old tree is not taken as current
JPEG_QUALITY = 90
SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")

Color = tuple[int, int, int]

# Seed-stream tags, so identities, cameras and each kind of image draw independent numbers.
_IDENTITY_STREAM, _CAMERA_STREAM, _PERSON_STREAM, _DISTRACTOR_STREAM, _JUNK_STREAM = range(5)

_CLOTHES: tuple[Color, ...] = (
    (25, 25, 28), (232, 232, 226), (128, 128, 128), (70, 70, 76), (30, 40, 90), (50, 90, 180),
    (120, 170, 220), (180, 30, 40), (110, 20, 30), (40, 120, 60), (100, 110, 50),
    (190, 170, 120), (110, 70, 40), (215, 200, 170), (230, 200, 40), (230, 120, 30),
    (230, 140, 170), (110, 50, 130), (30, 130, 130), (60, 80, 120),
)  # fmt: skip
_HAIR: tuple[Color, ...] = (
    (20, 18, 18), (60, 40, 25), (110, 75, 40), (200, 170, 100), (150, 150, 150), (140, 60, 30),
)  # fmt: skip
_SKIN: tuple[Color, ...] = (
    (250, 215, 185), (230, 185, 150), (200, 150, 110), (160, 110, 75), (110, 75, 50),
)  # fmt: skip
_SHOES: tuple[Color, ...] = (
    (20, 20, 20), (240, 240, 240), (100, 60, 30), (90, 90, 95), (40, 60, 140), (170, 30, 30),
)  # fmt: skip
_MARK: tuple[Color, ...] = (
    (235, 30, 30), (250, 220, 20), (30, 200, 60), (20, 200, 230), (40, 60, 230),
    (230, 40, 200), (250, 250, 250), (10, 10, 10), (250, 130, 10),
)  # fmt: skip
_MARK_SHAPES = ("square", "disc", "triangle", "diamond", "bar")
_BAG_SIDES = ("none", "left", "right")
_BAG_KINDS = ("shoulder", "hand")
_MARK_GRID = 3  # marks sit in one cell of a 3x3 grid on the torso


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything that makes one person look like themselves; geometry in person-height units."""

    pid: int
    group: int
    skin: Color
    hair: Color
    long_hair: bool
    upper: Color
    lower: Color
    shoes: Color
    short_sleeves: bool
    shorts: bool
    build: float  # width multiplier of the body
    bag_side: str  # "none" | "left" | "right" (as seen in the image)
    bag_kind: str
    bag: Color
    mark_shape: str
    mark_cell: tuple[int, int]  # (row, column) in the torso grid
    mark: Color
    mark_size: float


@dataclass(frozen=True, slots=True)
class Camera:
    """A camera's look: what every image from it shares, so cross-camera matching is hard."""

    background: Image.Image  # larger than an image; each image crops a random window
    noise: np.ndarray  # int16 (H', W', 3) sensor-noise field, cropped like the background
    gains: np.ndarray  # per-channel gain: brightness times white balance
    gamma: float
    person_scale: float  # person height as a fraction of the image height
    blur_radius: float  # box-blur radius in pixels


@dataclass(frozen=True, slots=True)
class _Job:
    """One file to render: where it goes and the numbers that seed it."""

    folder: str
    name: str
    stream: int
    pid: int
    camera: int  # 1-based
    index: int


def _jitter(rng: np.random.Generator, color: Color, amount: int) -> Color:
    values = np.clip(np.asarray(color) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return (int(values[0]), int(values[1]), int(values[2]))


def _pick(rng: np.random.Generator, palette: Sequence[Color], amount: int = 12) -> Color:
    return _jitter(rng, palette[int(rng.integers(len(palette)))], amount)


def _contrasting_mark(rng: np.random.Generator, upper: Color) -> Color:
    """A mark colour far from the shirt colour, so the local detail is actually visible."""
    far = [c for c in _MARK if sum(abs(a - b) for a, b in zip(c, upper, strict=True)) > 250]
    return _pick(rng, far or _MARK, amount=8)


def _group_sizes(rng: np.random.Generator, count: int, max_group_size: int) -> list[int]:
    """Split ``count`` identities into groups of 2..max_group_size, leaving nobody alone unless
    that cannot be helped (``count`` 1, or odd with ``max_group_size`` 2)."""
    sizes: list[int] = []
    left = count
    while left > 0:
        size = min(int(rng.integers(min(2, max_group_size), max_group_size + 1)), left)
        if left - size == 1 and max_group_size > 1:
            size = size + 1 if size < max_group_size else size - 1
        sizes.append(size)
        left -= size
    return sizes


def _global_look(rng: np.random.Generator) -> dict:
    """The attributes a look-alike group shares: colours, hair, sleeves, trousers, build."""
    return {
        "skin": _pick(rng, _SKIN, 8),
        "hair": _pick(rng, _HAIR, 10),
        "long_hair": bool(rng.random() < 0.35),
        "upper": _pick(rng, _CLOTHES),
        "lower": _pick(rng, _CLOTHES),
        "shoes": _pick(rng, _SHOES, 10),
        "short_sleeves": bool(rng.random() < 0.4),
        "shorts": bool(rng.random() < 0.25),
        "build": float(rng.uniform(0.85, 1.15)),
    }


def _local_details(rng: np.random.Generator, upper: Color, cell: int) -> dict:
    """What tells group members apart: the bag and the mark (in torso grid cell ``cell``)."""
    return {
        "bag_side": _BAG_SIDES[int(rng.integers(len(_BAG_SIDES)))],
        "bag_kind": _BAG_KINDS[int(rng.integers(len(_BAG_KINDS)))],
        "bag": _pick(rng, _CLOTHES, 20),
        "mark_shape": _MARK_SHAPES[int(rng.integers(len(_MARK_SHAPES)))],
        "mark_cell": divmod(cell, _MARK_GRID),
        "mark": _contrasting_mark(rng, upper),
        "mark_size": float(rng.uniform(0.035, 0.05)),
    }


def _make_identities(
    seed: int, num_train_ids: int, num_test_ids: int, max_group_size: int
) -> list[Identity]:
    """Identities 1..N in groups; a group shares all global attributes, members differ locally."""
    rng = np.random.default_rng([seed, _IDENTITY_STREAM])
    identities: list[Identity] = []
    group = 0
    for count in (num_train_ids, num_test_ids):
        for size in _group_sizes(rng, count, max_group_size):
            look = _global_look(rng)
            for cell in rng.choice(_MARK_GRID * _MARK_GRID, size=size, replace=False):
                details = _local_details(rng, look["upper"], int(cell))
                identities.append(Identity(pid=len(identities) + 1, group=group, **look, **details))
            group += 1
    return identities


def _random_stranger(rng: np.random.Generator) -> Identity:
    """A person outside the data set, for the pid-0000 distractors."""
    look = _global_look(rng)
    cell = int(rng.integers(_MARK_GRID * _MARK_GRID))
    return Identity(pid=0, group=-1, **look, **_local_details(rng, look["upper"], cell))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A camera's scene: a vertical gradient wall with a texture above a floor, as uint8 HxWx3."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top = (rng.uniform(50, 200) + rng.uniform(-35, 35, size=3)).astype(np.float32)
    bottom = np.clip(top + rng.uniform(-50, 50, size=3), 0, 255).astype(np.float32)
    image = np.broadcast_to(top + (bottom - top) * ys, (height, width, 3)).copy()
    texture = int(rng.integers(3))
    shade = rng.uniform(-45, 45, size=3).astype(np.float32)
    if texture == 0:  # vertical panels / windows
        period = max(4, int(width * rng.uniform(0.12, 0.3)))
        panel = (np.arange(width) % period) < period * rng.uniform(0.2, 0.5)
        image[:, panel] += shade
    elif texture == 1:  # tiles
        period = max(4, int(height * rng.uniform(0.06, 0.15)))
        grid = (np.arange(height)[:, None] % period < 2) | (np.arange(width)[None, :] % period < 2)
        image[grid] += shade
    else:  # soft blotches
        for _ in range(6):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            radius = rng.uniform(0.08, 0.25) * height
            dist = (np.arange(height)[:, None] - cy) ** 2 + (np.arange(width)[None, :] - cx) ** 2
            image += (np.exp(-dist / (2 * radius**2)) * rng.uniform(0.3, 1.0))[..., None] * shade
    floor_row = int(height * rng.uniform(0.72, 0.9))
    image[floor_row:] = _pick(rng, ((150, 150, 150), (110, 95, 80), (80, 80, 85)), 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def _make_cameras(
    seed: int, num_cameras: int, height: int, width: int, nuisance: bool
) -> list[Camera]:
    """Per-camera scene, light, colour cast, scale, noise and blur (neutral when not nuisance)."""
    bg_h, bg_w = math.ceil(height * 1.2), math.ceil(width * 1.5)
    cameras = []
    for cam in range(1, num_cameras + 1):
        rng = np.random.default_rng([seed, _CAMERA_STREAM, cam])
        if not nuisance:
            cameras.append(
                Camera(
                    background=Image.new("RGB", (bg_w, bg_h), (128, 128, 128)),
                    noise=np.zeros((bg_h, bg_w, 3), dtype=np.int16),
                    gains=np.ones(3),
                    gamma=1.0,
                    person_scale=0.88,
                    blur_radius=0.0,
                )
            )
            continue
        white_balance = rng.uniform(0.85, 1.15, size=3)
        sigma = rng.uniform(2.0, 7.0)
        cameras.append(
            Camera(
                background=Image.fromarray(_background(rng, bg_h, bg_w)),
                noise=np.round(rng.normal(0.0, sigma, size=(bg_h, bg_w, 3))).astype(np.int16),
                gains=white_balance / white_balance.mean() * rng.uniform(0.75, 1.2),
                gamma=float(rng.uniform(0.75, 1.35)),
                person_scale=float(rng.uniform(0.78, 0.95)),
                blur_radius=float(rng.uniform(0.0, 0.006) * height),
            )
        )
    return cameras


@dataclass(frozen=True, slots=True)
class _BodyFrame:
    """Maps body coordinates (fractions of the person's height; x from the body axis, y from
    the top of the head) to pixels, so the same drawing works at any image size. ``lean``
    shears the body: the head moves sideways relative to the feet."""

    center_x: float
    top: float
    person_h: float
    lean: float

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (
            self.center_x + (x + self.lean * (0.5 - y)) * self.person_h,
            self.top + y * self.person_h,
        )

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        (a, c), (e, f) = self.pt(x0, y0), self.pt(x1, y1)
        return (min(a, e), min(c, f), max(a, e), max(c, f))

    def thickness(self, w: float) -> int:
        return max(1, round(w * self.person_h))


def _draw_person(
    draw: ImageDraw.ImageDraw, who: Identity, frame: _BodyFrame, stride: float, swing: float
) -> None:
    """Draw a front-facing pedestrian, back to front, in the identity's colours."""
    b = who.build
    pt, box = frame.pt, frame.box
    if who.long_hair:  # hair falling behind the shoulders
        draw.rectangle(box(-0.058, 0.05, 0.058, 0.24), fill=who.hair)
    # legs: trousers (or shorts) down to the knee, then down to the feet, then shoes
    for side in (-1, 1):
        hip = pt(side * 0.045 * b, 0.5)
        knee = pt(side * (0.05 * b + stride * 0.3), 0.7)
        foot_x = side * (0.05 * b + stride * 0.5)
        leg_w = frame.thickness(0.062 * b)
        draw.line([hip, knee], fill=who.lower, width=leg_w)
        draw.line([knee, pt(foot_x, 0.94)], fill=who.skin if who.shorts else who.lower, width=leg_w)
        draw.ellipse(box(foot_x - 0.045 + side * 0.01, 0.92, foot_x + 0.045, 0.98), fill=who.shoes)
    draw.rectangle(box(-0.085 * b, 0.47, 0.085 * b, 0.56), fill=who.lower)  # hips
    # torso: a trapezoid from the shoulders to the waist, with a neckline
    draw.polygon(
        [pt(-0.115 * b, 0.16), pt(0.115 * b, 0.16), pt(0.09 * b, 0.5), pt(-0.09 * b, 0.5)],
        fill=who.upper,
    )
    draw.polygon([pt(-0.03, 0.155), pt(0.03, 0.155), pt(0.0, 0.2)], fill=who.skin)
    _draw_mark(draw, who, frame)
    # arms: sleeve, then forearm (skin for short sleeves), then a hand
    for side in (-1, 1):
        shoulder = pt(side * 0.118 * b, 0.18)
        elbow = pt(side * (0.135 * b + swing * side * 0.5), 0.34)
        hand_x = side * (0.14 * b + swing * side)
        arm_w = frame.thickness(0.05 * b)
        draw.line([shoulder, elbow], fill=who.upper, width=arm_w)
        forearm = who.skin if who.short_sleeves else who.upper
        draw.line([elbow, pt(hand_x, 0.5)], fill=forearm, width=arm_w)
        draw.ellipse(box(hand_x - 0.022, 0.478, hand_x + 0.022, 0.522), fill=who.skin)
    _draw_bag(draw, who, frame, swing)
    # head: neck, hair cap, face
    draw.rectangle(box(-0.02, 0.12, 0.02, 0.17), fill=who.skin)
    draw.ellipse(box(-0.058, 0.0, 0.058, 0.12), fill=who.hair)
    draw.ellipse(box(-0.047, 0.035, 0.047, 0.145), fill=who.skin)


def _draw_mark(draw: ImageDraw.ImageDraw, who: Identity, frame: _BodyFrame) -> None:
    """The identity's logo: its shape, colour and grid cell on the torso are the local detail."""
    row, col = who.mark_cell
    cx = (col - 1) * 0.055 * who.build
    cy = 0.25 + row * 0.08
    s = who.mark_size / 2
    if who.mark_shape == "disc":
        draw.ellipse(frame.box(cx - s, cy - s, cx + s, cy + s), fill=who.mark)
        return
    corners = {
        "square": [(-s, -s), (s, -s), (s, s), (-s, s)],
        "triangle": [(0.0, -s), (s, s), (-s, s)],
        "diamond": [(0.0, -1.2 * s), (1.2 * s, 0.0), (0.0, 1.2 * s), (-1.2 * s, 0.0)],
        "bar": [
            (-1.6 * s, -0.45 * s),
            (1.6 * s, -0.45 * s),
            (1.6 * s, 0.45 * s),
            (-1.6 * s, 0.45 * s),
        ],
    }[who.mark_shape]
    draw.polygon([frame.pt(cx + dx, cy + dy) for dx, dy in corners], fill=who.mark)


def _draw_bag(draw: ImageDraw.ImageDraw, who: Identity, frame: _BodyFrame, swing: float) -> None:
    """A shoulder bag (strap across the chest) or a hand bag, on the identity's side."""
    if who.bag_side == "none":
        return
    side = -1 if who.bag_side == "left" else 1
    b = who.build
    strap = (max(0, who.bag[0] - 50), max(0, who.bag[1] - 50), max(0, who.bag[2] - 50))
    if who.bag_kind == "shoulder":
        ends = [frame.pt(-side * 0.08 * b, 0.165), frame.pt(side * 0.15 * b, 0.42)]
        draw.line(ends, fill=strap, width=frame.thickness(0.018))
        draw.rectangle(frame.box(side * 0.1 * b, 0.4, side * 0.21 * b, 0.54), fill=who.bag)
    else:
        hand_x = side * (0.14 * b + swing * side)
        ends = [frame.pt(hand_x, 0.49), frame.pt(hand_x + side * 0.03, 0.53)]
        draw.line(ends, fill=strap, width=frame.thickness(0.012))
        draw.rectangle(
            frame.box(hand_x - side * 0.01, 0.52, hand_x + side * 0.09, 0.64), fill=who.bag
        )


def _draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    """Something between camera and person: a pole, a low box (bench, car) or a side block."""
    color = _pick(
        rng, ((90, 90, 95), (160, 160, 150), (120, 60, 40), (40, 70, 40), (200, 190, 170)), 25
    )
    kind = int(rng.integers(3))
    if kind == 0:
        x = rng.uniform(0.2, 0.8) * w
        half = rng.uniform(0.03, 0.07) * w
        draw.rectangle((x - half, 0, x + half, h), fill=color)
    elif kind == 1:
        draw.rectangle((0, h * (1 - rng.uniform(0.2, 0.45)), w, h), fill=color)
    else:
        x = rng.uniform(0.25, 0.4) * w
        draw.rectangle((0, 0, x, h) if rng.random() < 0.5 else (w - x, 0, w, h), fill=color)


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


def _subject(job: _Job, scene: _Scene) -> Identity | None:
    """Who is in the image: the identity, a stranger (distractor) or nobody (junk)."""
    if job.stream == _PERSON_STREAM:
        return scene.identities[job.pid - 1]
    if job.stream == _DISTRACTOR_STREAM:
        return _random_stranger(
            np.random.default_rng([scene.seed, job.stream, 0, job.camera, job.index, 1])
        )
    return None


def _render(job: _Job, scene: _Scene) -> Image.Image:
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
        if job.stream == _DISTRACTOR_STREAM:  # a bad detection: off-centre and too large or small
            scale *= rng.choice([rng.uniform(0.45, 0.7), rng.uniform(1.3, 1.8)])
            dx, dy = rng.uniform(-0.35, 0.35) * width, rng.uniform(-0.4, 0.3) * height
        person_h = scale * height
        frame = _BodyFrame(width / 2 + dx, (height - person_h) / 2 + dy, person_h, lean)
        _draw_person(draw, who, frame, stride, swing)
    if nuisance and (who is None or rng.random() < scene.occlusion_prob):
        _draw_occluder(draw, rng, height, width)
    if not nuisance:
        return image
    levels = np.arange(256, dtype=np.float64) / 255.0
    gains = camera.gains * rng.uniform(0.92, 1.08)
    lut = np.clip(np.round(255.0 * levels[None, :] ** camera.gamma * gains[:, None]), 0, 255)
    image = image.point(lut.astype(np.int64).ravel().tolist())
    if camera.blur_radius > 0.3:
        image = image.filter(ImageFilter.BoxBlur(camera.blur_radius))
    nx, ny = int(rng.integers(0, bg_w - width + 1)), int(rng.integers(0, bg_h - height + 1))
    noisy = np.asarray(image, dtype=np.int16) + camera.noise[ny : ny + height, nx : nx + width]
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _market_name(pid: int, camera: int, frame: int) -> str:
    pid_text = "-1" if pid == -1 else f"{pid:04d}"
    return f"{pid_text}_c{camera}s1_{frame:06d}_00.jpg"


def _plan(
    identities: Sequence[Identity],
    num_train_ids: int,
    num_cameras: int,
    images_per_id_per_camera: int,
    queries_per_camera: int,
    num_distractors: int,
    num_junk: int,
) -> list[_Job]:
    """Which file goes where: train ids to train, test ids split per camera into query/gallery."""
    jobs = []
    for who in identities:
        for cam in range(1, num_cameras + 1):
            base = (who.pid * 7919 + cam * 104729) % 90000  # a plausible, stable frame number
            for k in range(images_per_id_per_camera):
                if who.pid <= num_train_ids:
                    folder = "bounding_box_train"
                else:
                    folder = "query" if k < queries_per_camera else "bounding_box_test"
                name = _market_name(who.pid, cam, base + 6 * k)
                jobs.append(_Job(folder, name, _PERSON_STREAM, who.pid, cam, k))
    for stream, count, pid in (
        (_DISTRACTOR_STREAM, num_distractors, 0),
        (_JUNK_STREAM, num_junk, -1),
    ):
        for j in range(count):
            cam = j % num_cameras + 1
            jobs.append(_Job("bounding_box_test", _market_name(pid, cam, j), stream, pid, cam, j))
    return jobs


def _validate(args: dict) -> None:
    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"write_synthped: {field}={args[field]!r}, expected {expected}")

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
    need(args["max_group_size"] >= 1, "max_group_size", "at least 1 (1 means no look-alike groups)")
    need(
        args["max_group_size"] <= _MARK_GRID**2,
        "max_group_size",
        f"at most {_MARK_GRID**2} (each member of a group needs its own mark cell)",
    )
    need(args["num_distractors"] >= 0, "num_distractors", "a non-negative integer")
    need(args["num_junk"] >= 0, "num_junk", "a non-negative integer")
    need(0.0 <= args["occlusion_prob"] <= 1.0, "occlusion_prob", "a probability in [0, 1]")


def _existing_manifest(out: Path) -> dict | None:
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
    if num_distractors is None:
        num_distractors = num_ids * 3 // 5
    if num_junk is None:
        num_junk = num_ids * 3 // 10
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
    existing = _existing_manifest(out) if out.is_dir() else None
    if existing is not None:
        if existing.get("arguments") == arguments and existing.get("version") == SYNTHPED_VERSION:
            if verbose:
                print(f"SynthPed at {out} is already up to date ({MANIFEST_NAME} matches); kept")
            return out
        if not overwrite:
            raise FileExistsError(
                f"{out / MANIFEST_NAME}: a SynthPed with other arguments is there; "
                "pass overwrite=True (--overwrite) to replace it"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not a SynthPed folder; choose another --out")

    start = time.perf_counter()
    num_train_ids = num_ids // 2
    identities = _make_identities(seed, num_train_ids, num_ids - num_train_ids, max_group_size)
    cameras = _make_cameras(seed, num_cameras, height, width, nuisance)
    scene = _Scene(seed, height, width, nuisance, occlusion_prob, tuple(identities), tuple(cameras))
    jobs = _plan(
        identities,
        num_train_ids,
        num_cameras,
        images_per_id_per_camera,
        queries_per_camera,
        num_distractors,
        num_junk,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; ``out`` should be like any folder
    try:
        for folder in SPLIT_DIRS:
            (staging / folder).mkdir()
        if workers == 1:
            _write_images(scene, jobs, staging)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                shards = [jobs[i::workers] for i in range(workers)]
                list(pool.map(_write_images, [scene] * workers, shards, [staging] * workers))
        manifest = _manifest(arguments, identities, jobs)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
        _move_into_place(staging, out, replace=existing is not None)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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


def _write_images(scene: _Scene, jobs: Sequence[_Job], root: Path) -> None:
    """Render and save ``jobs`` under ``root``; runs in the main process or in a worker."""
    for job in jobs:
        buffer = io.BytesIO()
        _render(job, scene).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        (root / job.folder / job.name).write_bytes(buffer.getvalue())


def _manifest(arguments: dict, identities: Sequence[Identity], jobs: Sequence[_Job]) -> dict:
    """What ``synthped.json`` records: how the tree was made and what is in it."""
    counts = {folder: sum(job.folder == folder for job in jobs) for folder in SPLIT_DIRS}
    num_train_ids = arguments["num_ids"] // 2
    return {
        "format": "synthped",
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
        "groups": _groups(identities),
        "identities": [_describe(who) for who in identities],
    }


def _groups(identities: Sequence[Identity]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for who in identities:
        groups.setdefault(who.group, []).append(who.pid)
    return list(groups.values())


def _describe(who: Identity) -> dict:
    """The local details that separate an identity from its group, for analysing errors."""
    return {
        "pid": who.pid,
        "group": who.group,
        "bag": who.bag_side if who.bag_side == "none" else f"{who.bag_kind} bag {who.bag_side}",
        "bag_color": list(who.bag),
        "mark": who.mark_shape,
        "mark_cell": list(who.mark_cell),
        "mark_color": list(who.mark),
    }


def _move_into_place(staging: Path, out: Path, replace: bool) -> None:
    """Rename the finished tree to ``out``; an old SynthPed is moved aside first, then deleted."""
    if replace:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)  # also fine when ``out`` is an empty folder


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``duatm synth``; also sets ``handler=run_synth`` on the parser."""
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write (Market-1501 layout)"
    )
    parser.add_argument("--ids", type=int, default=200, help="identities, half train / half test")
    parser.add_argument("--cameras", type=int, default=6, help=f"cameras, 2..{MAX_CAMERAS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument(
        "--images-per-camera", type=int, default=4, help="images per identity and camera"
    )
    parser.add_argument("--queries-per-camera", type=int, default=1)
    parser.add_argument(
        "--max-group-size",
        type=int,
        default=4,
        help="look-alike group size (1 = no hard negatives)",
    )
    parser.add_argument(
        "--distractors", type=int, default=None, help="pid-0000 gallery distractors (0.6 per id)"
    )
    parser.add_argument("--junk", type=int, default=None, help="pid -1 junk images (0.3 per id)")
    parser.add_argument("--occlusion-prob", type=float, default=0.25)
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
    """``duatm synth``: write SynthPed and print a summary; 0 on success, 2 on bad arguments."""
    try:
        write_synthped(
            args.out,
            num_ids=args.ids,
            num_cameras=args.cameras,
            seed=args.seed,
            height=args.height,
            width=args.width,
            images_per_id_per_camera=args.images_per_camera,
            queries_per_camera=args.queries_per_camera,
            max_group_size=args.max_group_size,
            num_distractors=args.distractors,
            num_junk=args.junk,
            occlusion_prob=args.occlusion_prob,
            nuisance=not args.no_nuisance,
            workers=args.workers,
            overwrite=args.overwrite,
            verbose=True,
        )
    except (ValueError, FileExistsError) as err:
        print(f"duatm synth: error: {err}", file=sys.stderr)
        return 2
    return 0
