"""Training and extraction throughput of the whole pipeline against the bare backbone.

Why: everything DuATM adds around the CNN (data loading and augmentation, the FC layer, the B x B
matcher with gradients, three losses, the optimiser step; batching and inference mode for
extraction) should cost little next to the CNN itself. This prints, per input size, in one
process and on the same data:

* training images/s of `Trainer.train_step` fed by the training DataLoader (loading included),
  and on one fixed batch (model, matcher, losses and optimiser only), against forward +
  backward images/s of the bare backbone on one fixed batch of the same size;
* extraction images/s of `duatm.engine.evaluator.extract` over a DataLoader (loading included),
  against inference-mode forward images/s of the bare backbone on one fixed batch.

    .venv/bin/python benchmarks/pipeline.py                       # paper (256x128) and demo sizes
    .venv/bin/python benchmarks/pipeline.py --sizes demo --iters 20
    .venv/bin/python benchmarks/pipeline.py --sizes video video-demo   # the video model

The video sizes count frames instead of images: training clips of P x V tracklets x T frames
(the loader cuts them, the model runs the CNN on every frame, pools, runs the bidirectional GRU,
the matcher and the losses) against the bare backbone's forward + backward on as many frames
in one call; extraction of test clips (or whole tracklets in the ``all`` mode) against the bare
backbone's inference forward on batches of ``model.frame_chunk`` frames, the chunks the model
runs.

The data is a SynthPed written to a temporary folder at 256x128, or a video SynthPed at 128x64
for the video sizes (the loaders resize it).
Targets: training >= 0.85 of the bare backbone, extraction >= 0.9.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from duatm.config import DuATMConfig, load_config
from duatm.data.datasets import MARS, Market1501, ReIDDataset
from duatm.data.synthped import write_synthped
from duatm.data.synthped_video import write_video_synthped
from duatm.engine.builders import build_test_loader
from duatm.engine.commands import add_overrides_argument
from duatm.engine.evaluator import extract
from duatm.engine.trainer import Trainer
from timing import device_sync, interleaved_best

# name -> (shipped config, overrides): the paper's image and video models and the demos'.
SIZES: dict[str, tuple[str, list[str]]] = {
    "paper": ("market1501", ["model.pretrained=null"]),
    "demo": ("synthped", []),
    "video": ("mars", ["model.pretrained=null"]),
    "video-demo": ("synthped_video", []),
}


def measure(cfg: DuATMConfig, dataset: ReIDDataset, iters: int, rounds: int) -> dict[str, float]:
    """Images (video: frames) per second of the five contenders, each the best of ``rounds``
    interleaved timed runs."""
    trainer = Trainer(cfg, dataset=dataset, progress=False)
    model, device = trainer.model, trainer.device
    trainer.model.unfreeze_backbone()  # the end-to-end stage: the backbone trains too
    video = cfg.model.kind == "video"
    # Frames per training item: the clip length for video, 1 for an image.
    per_item = cfg.data.clip_len if video else 1
    batch_size = trainer.sampler.batch_size
    images = torch.randn(batch_size * per_item, 3, cfg.data.height, cfg.data.width, device=device)
    backbone = model.backbone

    def bare_train() -> int:
        model.train()
        for _ in range(iters):
            backbone(images).sum().backward()
        return iters * len(images)

    def pipeline_train() -> int:
        model.train()
        seen = 0
        batches = iter(trainer.train_loader)
        for _ in range(iters):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(trainer.train_loader)
                batch = next(batches)
            trainer.train_step(batch)
            seen += len(batch["pid"]) * per_item
        return seen

    fixed_batch = next(iter(trainer.train_loader))

    def fixed_train() -> int:
        model.train()
        for _ in range(iters):
            trainer.train_step(fixed_batch)
        return iters * batch_size * per_item

    # As many items as the bare forward sees (the gallery repeated when it is smaller), so
    # both sides run the same number of full batches.
    num_images = cfg.data.test_batch_size * iters
    repeats = -(-num_images // len(dataset.gallery))
    loader = build_test_loader(cfg, (list(dataset.gallery) * repeats)[:num_images])
    if video:
        # The frames those clips hold, in the chunks the model runs its backbone on.
        d = cfg.data
        lengths = [len(r.paths) for r in loader.dataset.records]  # type: ignore[attr-defined]
        frames = sum(lengths) if d.test_clip_mode == "all" else len(lengths) * d.test_clip_len
        chunk = cfg.model.frame_chunk
        test_batches = [min(chunk, frames - start) for start in range(0, frames, chunk)]
    else:
        test_batches = [cfg.data.test_batch_size] * iters
    test_images = torch.randn(max(test_batches), 3, cfg.data.height, cfg.data.width)

    def bare_forward() -> int:
        model.eval()
        with torch.inference_mode():
            for size in test_batches:
                backbone(test_images[:size].to(device))
        return sum(test_batches)

    def pipeline_extract() -> int:
        extracted = extract(model, loader, device, progress=False)
        if not video:
            return len(extracted.pids)
        if extracted.lengths is not None:
            return int(extracted.lengths.sum())
        return extracted.sequences.shape[0] * extracted.sequences.shape[1]

    contenders = {
        "train": pipeline_train,
        "fixed_train": fixed_train,
        "bare_train": bare_train,
        "extract": pipeline_extract,
        "bare_forward": bare_forward,
    }
    counts: dict[str, int] = {}

    def counted(name: str) -> Callable[[], None]:
        def run() -> None:
            counts[name] = contenders[name]()

        return run

    seconds = interleaved_best(
        {name: counted(name) for name in contenders}, rounds, device_sync(device)
    )
    return {name: counts[name] / seconds[name] for name in contenders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["paper", "demo"])
    parser.add_argument("--iters", type=int, default=5, help="batches per timed run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timed rounds; each keeps its best"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader processes (default: the config's)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="auto")
    add_overrides_argument(parser, help="config overrides for every size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data: dict[str, tuple[Path, ReIDDataset]] = {}
        rows = []
        for name in args.sizes:
            config, overrides = SIZES[name]
            kind = "video" if name.startswith("video") else "image"
            if kind not in data:
                data[kind] = _write_data(Path(tmp), kind)
            root, dataset = data[kind]
            cfg = load_config(
                config,
                [
                    *overrides,
                    f"data.root={root}",
                    *([] if args.workers is None else [f"data.num_workers={args.workers}"]),
                    f"device={args.device}",
                    f"out_dir={tmp}/{name}",
                    *args.overrides,
                ],
            )
            rates = measure(cfg, dataset, args.iters, args.rounds)
            rows.append((name, cfg, rates))
    print(
        f"device {args.device}, {args.threads} threads, "
        f"{args.iters} batches per timed run, best of {args.rounds} interleaved rounds"
    )
    print(
        "| size | model | train img/s | train, one fixed batch | bare fwd+bwd img/s | ratio | "
        "extract img/s | bare fwd img/s | ratio |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, cfg, r in rows:
        d = cfg.data
        clips = ""
        if cfg.model.kind == "video":
            test = "all frames" if d.test_clip_mode == "all" else f"{d.test_clip_len} frames"
            clips = f", clips {d.clip_len} / {test} (frames/s)"
        model = (
            f"{cfg.model.backbone} D={cfg.model.dim}, {d.height}x{d.width}, "
            f"{d.num_workers} workers{', cached' if d.cache_images else ''}{clips}"
        )
        print(
            f"| {name} | {model} | {r['train']:.1f} | {r['fixed_train']:.1f} | {r['bare_train']:.1f} "
            f"| {r['train'] / r['bare_train']:.2f} | {r['extract']:.1f} "
            f"| {r['bare_forward']:.1f} | {r['extract'] / r['bare_forward']:.2f} |"
        )


def _write_data(folder: Path, kind: str) -> tuple[Path, ReIDDataset]:
    """A SynthPed (images at 256x128) or video SynthPed (tracklets at 128x64) under ``folder``."""
    if kind == "video":
        root = write_video_synthped(folder / "synthped_video", num_ids=40, workers=2)
        return root, MARS(root, verbose=False)
    root = write_synthped(folder / "synthped", num_ids=40, num_cameras=4, workers=2)
    return root, Market1501(root, verbose=False)


if __name__ == "__main__":
    main()
