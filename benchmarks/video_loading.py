"""Video clip loading: decoding JPEG frames vs the decoded-frame cache, against the CNN's cost.

Why: a training batch of the paper's video recipe is P x V = 21 clips of 16 frames, 336 frames
to decode, resize and augment; on a CPU machine that can cost as much as the backbone.
``VideoDataset(cache=True)`` (``data.cache_images``) decodes and resizes every frame once, so
loading a clip only gathers its frames and augments them. This prints, in one process, frames/s
of:

* loading P x V random training clips (train augmentation, collated) by decoding the JPEGs,
* loading the same batches from the cache,
* the bare backbone's forward + backward on a batch of as many frames (random init),

each the best of interleaved rounds, with the ratio loading / backbone: above 1, one loading
process keeps up with the CNN (more loader workers multiply the loading rate). Frames are
written at MARS's 256 x 128 and resized to the recipe's size, as real MARS boxes are.

    .venv/bin/python benchmarks/video_loading.py                    # densenet121, 128x64 (paper)
    .venv/bin/python benchmarks/video_loading.py --backbone densenet_tiny --height 64 --width 32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from duatm.data.clips import ClipSampler
from duatm.data.datasets import MARS
from duatm.data.samplers import IdentityBatchSampler
from duatm.data.synthped_video import write_video_synthped
from duatm.data.transforms import build_train_transform
from duatm.data.video_dataset import VideoDataset, collate_clips
from duatm.models.backbones import BACKBONE_NAMES, build_backbone
from timing import interleaved_best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default="densenet121")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--p", type=int, default=7, help="identities per batch")
    parser.add_argument("--v", type=int, default=3, help="tracklets per identity")
    parser.add_argument("--ids", type=int, default=16, help="video SynthPed identities")
    parser.add_argument("--batches", type=int, default=2, help="batches per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best kept")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_video_synthped(
            Path(tmp) / "video", num_ids=args.ids, height=256, width=128, workers=2
        )
        records = MARS(root, verbose=False).train
        transform = build_train_transform(args.height, args.width)
        clips = ClipSampler(args.clip_len, "random")
        decoding = VideoDataset(records, transform, clips)
        start = time.perf_counter()
        cached = VideoDataset(records, transform, clips, cache=True)
        cache_seconds = time.perf_counter() - start
        assert cached.frames is not None
        sampler = IdentityBatchSampler(decoding.pids, args.p, args.v, seed=0)
        batches = list(sampler)[: args.batches]
        while len(batches) < args.batches:
            batches += list(sampler)[: args.batches - len(batches)]
        frames_per_run = sum(len(b) for b in batches) * args.clip_len

        backbone = build_backbone(args.backbone)
        backbone.train()
        images = torch.randn(len(batches[0]) * args.clip_len, 3, args.height, args.width)

        def load(dataset: VideoDataset) -> None:
            for batch in batches:
                collate_clips([dataset[i] for i in batch])

        def bare_train() -> None:
            for _ in batches:
                backbone(images).sum().backward()

        seconds = interleaved_best(
            {
                "decode": lambda: load(decoding),
                "cache": lambda: load(cached),
                "backbone": bare_train,
            },
            args.rounds,
            lambda: None,
        )
    rate = {name: frames_per_run / s for name, s in seconds.items()}
    print(
        f"{len(records)} training tracklets, {cached.frames.shape[0]} frames; cache built in "
        f"{cache_seconds:.1f} s, {cached.frames.numel() / 2**20:.1f} MiB; "
        f"{args.threads} threads, {args.batches} batches of {args.p} x {args.v} clips x "
        f"{args.clip_len} frames per timed run, best of {args.rounds} interleaved rounds"
    )
    print(
        "| frames | backbone | decode frames/s | cache frames/s | bare fwd+bwd frames/s | "
        "decode / bare | cache / bare |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {args.height}x{args.width} | {args.backbone} | {rate['decode']:.0f} | "
        f"{rate['cache']:.0f} | {rate['backbone']:.0f} | "
        f"{rate['decode'] / rate['backbone']:.2f} | {rate['cache'] / rate['backbone']:.2f} |"
    )


if __name__ == "__main__":
    main()
