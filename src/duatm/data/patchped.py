"""PatchPed: a second synthetic pedestrian family, built to check that a recipe is not SynthPed's.

Why a second family: a training recipe chosen on one synthetic data set can fit that renderer's
quirks. PatchPed shares no drawing code and few cues with SynthPed:

* **renderer**: whole-array numpy rasterisation of soft body masks (head, torso, arms, legs)
  filled with *procedural textures* that move with the body (stripes, checks, dots, two-tone
  blocks), over textured backgrounds (noise blobs, tiles, bands), where SynthPed draws flat
  polygons with PIL over gradients;
* **identity**: garment textures and their two colours, hair, skin, shoes; look-alike groups of
  2..``max_group_size`` identities share all of that and differ only in **where** a small badge
  sits on the body (one of six anchor points on chest, belly, shoulders, thighs). The badge has
  the same shape and colour within a group, so nothing but its place on the body tells the
  members apart (SynthPed's look-alikes also differ in bag and mark colour/shape);
* **nuisance**: large displacement and scale changes (the person is not centred), heavy partial
  occlusion (bottom, side or top strips with their own texture), camera gain / contrast /
  colour cast, blur and sensor noise.

The tree uses the Market-1501 layout and naming of :mod:`duatm.data.synthped` (the same planning
of which image goes to train / query / gallery, distractors pid 0 and junk pid -1), so
``Market1501(out)`` reads it. Deterministic from ``seed``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from duatm.data.synth_tree import check_target
from duatm.data.synthped import (
    DISTRACTOR_STREAM,
    JUNK_STREAM,
    ImageJob,
    market_extras,
    plan_market_layout,
    save_jpeg,
    validate_market_arguments,
    write_market_tree,
)

_FORMAT = "patchped"  # the manifest's "format"
PATCHPED_VERSION = 1
TEXTURES = ("solid", "hstripes", "vstripes", "checks", "dots", "blocks")
# Badge anchors in body units: x from the body centre (person-height units), y from the top.
BADGE_ANCHORS = (
    (-0.06, 0.27),  # left chest
    (0.06, 0.27),  # right chest
    (0.0, 0.40),  # belly
    (-0.10, 0.21),  # left shoulder
    (0.05, 0.66),  # right thigh
    (-0.05, 0.74),  # left shin
)


@dataclass(frozen=True, slots=True)
class Garment:
    texture: str
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    period: float  # texture period in person-height units


@dataclass(frozen=True, slots=True)
class PatchIdentity:
    pid: int
    group: int
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shoes: tuple[int, int, int]
    upper: Garment
    lower: Garment
    build: float
    badge_anchor: int
    badge_color: tuple[int, int, int]
    badge_round: bool


@dataclass(frozen=True, slots=True)
class PatchCamera:
    gain: np.ndarray  # per-channel
    contrast: float
    background_kind: int
    background_colors: np.ndarray  # (3, 3)
    blur: int
    noise: float
    scale: float


@dataclass(frozen=True, slots=True)
class _PatchScene:
    seed: int
    height: int
    width: int
    occlusion_prob: float
    identities: tuple[PatchIdentity, ...]
    cameras: tuple[PatchCamera, ...]


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _garment(rng: np.random.Generator) -> Garment:
    return Garment(
        str(rng.choice(TEXTURES)), (_color(rng), _color(rng)), float(rng.uniform(0.04, 0.09))
    )


def _identities(seed: int, num_ids: int, max_group_size: int) -> list[PatchIdentity]:
    """Identities 1..num_ids in look-alike groups; train and test ids never share a group."""
    rng = np.random.default_rng([seed, 11])
    out: list[PatchIdentity] = []
    num_train = num_ids // 2
    group = 0
    for first, last in ((1, num_train), (num_train + 1, num_ids)):
        pid = first
        while pid <= last:
            size = min(int(rng.integers(1, max_group_size + 1)), last - pid + 1)
            look = {
                "skin": _color(rng),
                "hair": _color(rng),
                "shoes": _color(rng),
                "upper": _garment(rng),
                "lower": _garment(rng),
                "build": float(rng.uniform(0.85, 1.15)),
                "badge_color": _color(rng),
                "badge_round": bool(rng.random() < 0.5),
            }
            anchors = rng.permutation(len(BADGE_ANCHORS))[:size]
            for anchor in anchors:
                out.append(PatchIdentity(pid=pid, group=group, badge_anchor=int(anchor), **look))
                pid += 1
            group += 1
    return out


def _stranger(rng: np.random.Generator) -> PatchIdentity:
    """A random person who is nobody's look-alike (a gallery distractor)."""
    return PatchIdentity(
        pid=0,
        group=-1,
        skin=_color(rng),
        hair=_color(rng),
        shoes=_color(rng),
        upper=_garment(rng),
        lower=_garment(rng),
        build=float(rng.uniform(0.85, 1.15)),
        badge_anchor=int(rng.integers(len(BADGE_ANCHORS))),
        badge_color=_color(rng),
        badge_round=bool(rng.random() < 0.5),
    )


def _cameras(seed: int, count: int) -> list[PatchCamera]:
    rng = np.random.default_rng([seed, 12])
    return [
        PatchCamera(
            gain=rng.uniform(0.6, 1.35) * rng.uniform(0.85, 1.15, size=3),
            contrast=float(rng.uniform(0.7, 1.2)),
            background_kind=int(rng.integers(0, 3)),
            # Muted: halfway between a random colour and mid grey.
            background_colors=(rng.integers(0, 256, size=(3, 3)) + 128) / 2.0,
            blur=int(rng.integers(0, 2)),
            noise=float(rng.uniform(2, 10)),
            scale=float(rng.uniform(0.72, 0.9)),
        )
        for _ in range(count)
    ]


def _texture(garment: Garment, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours of a garment at body coordinates u (across) and v (down)."""
    p = garment.period
    kind = garment.texture
    if kind == "solid":
        pick = np.zeros_like(u, dtype=bool)
    elif kind == "hstripes":
        pick = np.floor(v / p) % 2 == 1
    elif kind == "vstripes":
        pick = np.floor(u / p) % 2 == 1
    elif kind == "checks":
        pick = (np.floor(u / p) + np.floor(v / p)) % 2 == 1
    elif kind == "dots":
        pick = ((u / p) % 1 - 0.5) ** 2 + ((v / p) % 1 - 0.5) ** 2 < 0.09
    else:  # blocks: two-tone, split across the body
        pick = u > 0
    a, b = (np.asarray(c, dtype=np.float64) for c in garment.colors)
    return np.where(pick[..., None], b, a)


def _background(rng: np.random.Generator, camera: PatchCamera, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c = camera.background_colors
    if camera.background_kind == 0:  # soft noise blobs
        coarse = rng.random((h // 8 + 2, w // 8 + 2))
        field = np.kron(coarse, np.ones((8, 8)))[:h, :w]
        return c[0] + field[..., None] * (c[1] - c[0])
    if camera.background_kind == 1:  # tiles
        offset = rng.integers(0, 16, size=2)
        grout = ((yy + offset[0]) % 16 < 2) | ((xx + offset[1]) % 16 < 2)
        return np.where(grout[..., None], c[2], c[0])
    bands = np.sin((yy + rng.uniform(0, 40)) / rng.uniform(4, 9)) > 0  # horizontal bands
    return np.where(bands[..., None], c[1], c[2])


def _render(scene: _PatchScene, job: ImageJob) -> np.ndarray:
    h, w = scene.height, scene.width
    camera = scene.cameras[job.camera - 1]
    rng = np.random.default_rng([scene.seed, job.stream, job.pid + 1, job.camera, job.index])
    image = _background(rng, camera, h, w)
    if job.stream != JUNK_STREAM:  # junk images show no one
        if job.stream == DISTRACTOR_STREAM:
            who = _stranger(rng)
            scale = camera.scale * rng.choice([rng.uniform(0.5, 0.7), rng.uniform(1.2, 1.5)])
        else:
            who = scene.identities[job.pid - 1]
            scale = camera.scale * rng.uniform(0.88, 1.12)
        person_h = scale * h
        cx = w / 2 + rng.uniform(-0.17, 0.17) * w
        top = (h - person_h) / 2 + rng.uniform(-0.08, 0.08) * h
        _draw_person(image, who, cx, top, person_h, rng)
    if rng.random() < scene.occlusion_prob:
        _occlude(image, rng)
    image = (image - 128.0) * camera.contrast + 128.0
    image = image * camera.gain * rng.uniform(0.9, 1.1)
    if camera.blur:
        image = (
            image + np.roll(image, 1, 0) + np.roll(image, 1, 1) + np.roll(image, (1, 1), (0, 1))
        ) / 4
    image = image + rng.normal(0.0, camera.noise, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _draw_person(
    image: np.ndarray,
    who: PatchIdentity,
    cx: float,
    top: float,
    person_h: float,
    rng: np.random.Generator,
) -> None:
    h, w, _ = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    lean = rng.uniform(-0.04, 0.04)
    v = (yy - top) / person_h  # 0 at the top of the head, 1 at the soles
    u = (xx - cx) / person_h - lean * (v - 0.5)
    half = 0.11 * who.build
    stride = rng.uniform(0.0, 0.06)

    def paint(mask: np.ndarray, colors: np.ndarray) -> None:
        image[mask] = colors[mask] if colors.ndim == 3 else colors

    # legs (two, apart by the stride), lower garment
    for side in (-1, 1):
        leg = (
            (np.abs(u - side * (0.045 + stride / 2) * (v - 0.5) * 2) < 0.042)
            & (v > 0.5)
            & (v < 0.95)
        )
        paint(leg, _texture(who.lower, u, v))
        shoe = (np.abs(u - side * (0.045 + stride)) < 0.05) & (v >= 0.95) & (v < 1.0)
        paint(shoe, np.asarray(who.shoes, dtype=np.float64))
    hips = (np.abs(u) < half * 0.9) & (v > 0.46) & (v <= 0.56)
    paint(hips, _texture(who.lower, u, v))
    # arms, then torso, upper garment
    for side in (-1, 1):
        arm = (np.abs(u - side * (half + 0.03)) < 0.03) & (v > 0.19) & (v < 0.5)
        paint(arm, _texture(who.upper, u, v))
        hand = (np.abs(u - side * (half + 0.03)) < 0.028) & (v >= 0.5) & (v < 0.55)
        paint(hand, np.asarray(who.skin, dtype=np.float64))
    torso = (np.abs(u) < half) & (v > 0.18) & (v <= 0.48)
    paint(torso, _texture(who.upper, u, v))
    # neck, head, hair
    paint((np.abs(u) < 0.025) & (v > 0.14) & (v <= 0.19), np.asarray(who.skin, dtype=np.float64))
    head = (u / 0.055) ** 2 + ((v - 0.085) / 0.075) ** 2 < 1
    paint(head, np.asarray(who.skin, dtype=np.float64))
    hair = head & (v < 0.06)
    paint(hair, np.asarray(who.hair, dtype=np.float64))
    # the badge: the only difference inside a look-alike group
    bx, by = BADGE_ANCHORS[who.badge_anchor]
    size = 0.028
    if who.badge_round:
        badge = ((u - bx) / size) ** 2 + ((v - by) / size) ** 2 < 1
    else:
        badge = (np.abs(u - bx) < size) & (np.abs(v - by) < size)
    paint(badge, np.asarray(who.badge_color, dtype=np.float64))


def _occlude(image: np.ndarray, rng: np.random.Generator) -> None:
    h, w, _ = image.shape
    color = rng.integers(0, 256, size=3).astype(np.float64)
    stripes = (np.arange(w)[None, :] // int(rng.integers(3, 8))) % 2 == 0
    fill = np.where(stripes[..., None], color, color * 0.6)
    kind = rng.integers(0, 3)
    if kind == 0:  # bottom
        start = int(h * rng.uniform(0.6, 0.8))
        image[start:] = np.broadcast_to(fill, image.shape)[start:]
    elif kind == 1:  # side
        span = int(w * rng.uniform(0.25, 0.4))
        cols = slice(0, span) if rng.random() < 0.5 else slice(w - span, w)
        image[:, cols] = np.broadcast_to(fill, image.shape)[:, cols]
    else:  # top
        stop = int(h * rng.uniform(0.12, 0.25))
        image[:stop] = np.broadcast_to(fill, image.shape)[:stop]


def _write(scene: _PatchScene, jobs: list[ImageJob], root: Path) -> None:
    for job in jobs:
        save_jpeg(Image.fromarray(_render(scene, job)), root / job.folder / job.name)


def write_patchped(
    out: str | Path,
    num_ids: int = 100,
    num_cameras: int = 6,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    images_per_id_per_camera: int = 4,
    *,
    queries_per_camera: int = 1,
    max_group_size: int = 4,
    num_distractors: int | None = None,
    num_junk: int | None = None,
    occlusion_prob: float = 0.35,
    workers: int = 1,
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Render PatchPed into ``out`` (Market-1501 layout) and return ``out``; written and kept
    or replaced like SynthPed (:mod:`duatm.data.synth_tree`), with the same split of images
    into train / query / gallery and the same default numbers of distractors and junk."""
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
    }
    if not 1 <= max_group_size <= len(BADGE_ANCHORS):
        raise ValueError(
            f"write_patchped: max_group_size={max_group_size}, expected 1..{len(BADGE_ANCHORS)} "
            "(each member of a group needs its own badge anchor)"
        )
    validate_market_arguments("write_patchped", arguments)
    target = check_target(out, _FORMAT, PATCHPED_VERSION, arguments, overwrite=overwrite)
    if target == "current":
        return out
    start = time.perf_counter()
    identities = _identities(seed, num_ids, max_group_size)
    scene = _PatchScene(
        seed, height, width, occlusion_prob, tuple(identities), tuple(_cameras(seed, num_cameras))
    )
    jobs = plan_market_layout(
        identities,
        num_ids // 2,
        num_cameras,
        images_per_id_per_camera,
        queries_per_camera,
        num_distractors,
        num_junk,
    )
    manifest = {"format": _FORMAT, "version": PATCHPED_VERSION, "arguments": arguments}
    write_market_tree(
        out, _write, scene, jobs, manifest, workers=workers, replace=target == "replace"
    )
    if verbose:
        print(
            f"PatchPed -> {out}: {num_ids} ids, {num_cameras} cameras, {height}x{width}, "
            f"{len(jobs)} images in {time.perf_counter() - start:.1f} s"
        )
    return out
