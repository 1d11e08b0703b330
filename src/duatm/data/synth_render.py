"""The SynthPed renderer shared by the image and the video writers: identities, cameras, people.

What a person looks like (:class:`Identity`, in look-alike groups that differ only in a bag and a
mark), what a camera does to every picture it takes (:class:`Camera`: scene, light, colour cast,
scale, noise, blur), and the drawing of one pedestrian in a walking pose (:func:`draw_person`),
of an occluder (:func:`draw_occluder`) and of the camera's development (:func:`develop`). The
writers (``synthped.py`` for images, ``synthped_video.py`` for tracklets) decide what to draw
where, and seed every drawing from their own streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Color = tuple[int, int, int]

# Seed-stream tags of the shared parts; the writers number their own streams from
# FIRST_FREE_STREAM so every kind of drawing gets independent numbers.
_IDENTITY_STREAM, _CAMERA_STREAM = 0, 1
FIRST_FREE_STREAM = 2

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
MARK_GRID = 3  # marks sit in one cell of a 3x3 grid on the torso


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


def _jitter(rng: np.random.Generator, color: Color, amount: int) -> Color:
    values = np.clip(np.asarray(color) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return (int(values[0]), int(values[1]), int(values[2]))


def pick(rng: np.random.Generator, palette: Sequence[Color], amount: int = 12) -> Color:
    return _jitter(rng, palette[int(rng.integers(len(palette)))], amount)


def _contrasting_mark(rng: np.random.Generator, upper: Color) -> Color:
    """A mark colour far from the shirt colour, so the local detail is actually visible."""
    far = [c for c in _MARK if sum(abs(a - b) for a, b in zip(c, upper, strict=True)) > 250]
    return pick(rng, far or _MARK, amount=8)


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
        "skin": pick(rng, _SKIN, 8),
        "hair": pick(rng, _HAIR, 10),
        "long_hair": bool(rng.random() < 0.35),
        "upper": pick(rng, _CLOTHES),
        "lower": pick(rng, _CLOTHES),
        "shoes": pick(rng, _SHOES, 10),
        "short_sleeves": bool(rng.random() < 0.4),
        "shorts": bool(rng.random() < 0.25),
        "build": float(rng.uniform(0.85, 1.15)),
    }


def _local_details(rng: np.random.Generator, upper: Color, cell: int) -> dict:
    """What tells group members apart: the bag and the mark (in torso grid cell ``cell``)."""
    return {
        "bag_side": _BAG_SIDES[int(rng.integers(len(_BAG_SIDES)))],
        "bag_kind": _BAG_KINDS[int(rng.integers(len(_BAG_KINDS)))],
        "bag": pick(rng, _CLOTHES, 20),
        "mark_shape": _MARK_SHAPES[int(rng.integers(len(_MARK_SHAPES)))],
        "mark_cell": divmod(cell, MARK_GRID),
        "mark": _contrasting_mark(rng, upper),
        "mark_size": float(rng.uniform(0.035, 0.05)),
    }


def make_identities(
    seed: int, num_train_ids: int, num_test_ids: int, max_group_size: int
) -> list[Identity]:
    """Identities 1..N in groups; a group shares all global attributes, members differ locally."""
    rng = np.random.default_rng([seed, _IDENTITY_STREAM])
    identities: list[Identity] = []
    group = 0
    for count in (num_train_ids, num_test_ids):
        for size in _group_sizes(rng, count, max_group_size):
            look = _global_look(rng)
            for cell in rng.choice(MARK_GRID * MARK_GRID, size=size, replace=False):
                details = _local_details(rng, look["upper"], int(cell))
                identities.append(Identity(pid=len(identities) + 1, group=group, **look, **details))
            group += 1
    return identities


def random_stranger(rng: np.random.Generator) -> Identity:
    """A person outside the data set, for the pid-0000 distractors."""
    look = _global_look(rng)
    cell = int(rng.integers(MARK_GRID * MARK_GRID))
    return Identity(pid=0, group=-1, **look, **_local_details(rng, look["upper"], cell))


def identity_groups(identities: Sequence[Identity]) -> list[list[int]]:
    """The pids of each look-alike group, for the manifest."""
    groups: dict[int, list[int]] = {}
    for who in identities:
        groups.setdefault(who.group, []).append(who.pid)
    return list(groups.values())


def describe_identity(who: Identity) -> dict:
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
    image[floor_row:] = pick(rng, ((150, 150, 150), (110, 95, 80), (80, 80, 85)), 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_cameras(
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
class BodyFrame:
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


def draw_person(
    draw: ImageDraw.ImageDraw, who: Identity, frame: BodyFrame, stride: float, swing: float
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


def _draw_mark(draw: ImageDraw.ImageDraw, who: Identity, frame: BodyFrame) -> None:
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


def _draw_bag(draw: ImageDraw.ImageDraw, who: Identity, frame: BodyFrame, swing: float) -> None:
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


def draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    """Something between camera and person: a pole, a low box (bench, car) or a side block."""
    color = pick(
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


def develop(
    image: Image.Image, camera: Camera, brightness: float, rng: np.random.Generator
) -> Image.Image:
    """What the camera does to a drawn picture: gamma and gains (times ``brightness``), blur,
    then sensor noise from a random window of the camera's noise field."""
    height, width = image.height, image.width
    bg_w, bg_h = camera.background.size
    levels = np.arange(256, dtype=np.float64) / 255.0
    gains = camera.gains * brightness
    lut = np.clip(np.round(255.0 * levels[None, :] ** camera.gamma * gains[:, None]), 0, 255)
    image = image.point(lut.astype(np.int64).ravel().tolist())
    if camera.blur_radius > 0.3:
        image = image.filter(ImageFilter.BoxBlur(camera.blur_radius))
    nx, ny = int(rng.integers(0, bg_w - width + 1)), int(rng.integers(0, bg_h - height + 1))
    noisy = np.asarray(image, dtype=np.int16) + camera.noise[ny : ny + height, nx : nx + width]
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
