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

The data is a SynthPed written to a temporary folder at 256x128 (the loaders resize it).
Targets: training >= 0.85 of the bare backbone, extraction >= 0.9.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from duatm.config import DuATMConfig, load_config
from duatm.data.datasets import Market1501
from duatm.data.synthped import write_synthped
from duatm.engine.builders import build_test_loader
from duatm.engine.commands import add_overrides_argument
from duatm.engine.evaluator import extract
from duatm.engine.trainer import Trainer
from timing import device_sync, interleaved_best

# name -> (shipped config, overrides): the paper's image model and the demo's.
SIZES: dict[str, tuple[str, list[str]]] = {
    "paper": ("market1501", ["model.pretrained=null"]),
    "demo": ("synthped", []),
}


def measure(cfg: DuATMConfig, dataset: Market1501, iters: int, rounds: int) -> dict[str, float]:
    """Images/s of the five contenders, each the best of ``rounds`` interleaved timed runs."""
    trainer = Trainer(cfg, dataset=dataset, progress=False)
    model, device = trainer.model, trainer.device
    trainer.model.unfreeze_backbone()  # the end-to-end stage: the backbone trains too
    batch_size = trainer.sampler.batch_size
    images = torch.randn(batch_size, 3, cfg.data.height, cfg.data.width, device=device)
    backbone = model.backbone

    def bare_train() -> int:
        model.train()
        for _ in range(iters):
            backbone(images).sum().backward()
        return iters * batch_size

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
            seen += len(batch["pid"])
        return seen

    fixed_batch = next(iter(trainer.train_loader))

    def fixed_train() -> int:
        model.train()
        for _ in range(iters):
            trainer.train_step(fixed_batch)
        return iters * batch_size

    test_images = torch.randn(cfg.data.test_batch_size, 3, cfg.data.height, cfg.data.width)
    # As many images as the bare forward sees (the gallery repeated when it is smaller), so
    # both sides run the same number of full batches.
    num_images = cfg.data.test_batch_size * iters
    repeats = -(-num_images // len(dataset.gallery))
    loader = build_test_loader(cfg, (list(dataset.gallery) * repeats)[:num_images])

    def bare_forward() -> int:
        model.eval()
        with torch.inference_mode():
            for _ in range(iters):
                backbone(test_images.to(device))
        return iters * len(test_images)

    def pipeline_extract() -> int:
        return len(extract(model, loader, device, progress=False).pids)

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
        root = write_synthped(Path(tmp) / "synthped", num_ids=40, num_cameras=4, workers=2)
        dataset = Market1501(root, verbose=False)
        rows = []
        for name in args.sizes:
            config, overrides = SIZES[name]
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
        model = (
            f"{cfg.model.backbone} D={cfg.model.dim}, {cfg.data.height}x{cfg.data.width}, "
            f"{cfg.data.num_workers} workers{', cached' if cfg.data.cache_images else ''}"
        )
        print(
            f"| {name} | {model} | {r['train']:.1f} | {r['fixed_train']:.1f} | {r['bare_train']:.1f} "
            f"| {r['train'] / r['bare_train']:.2f} | {r['extract']:.1f} "
            f"| {r['bare_forward']:.1f} | {r['extract'] / r['bare_forward']:.2f} |"
        )


if __name__ == "__main__":
    main()
