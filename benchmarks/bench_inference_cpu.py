"""Memory format and BatchNorm folding on the CPU: what ftlight's defaults buy per model.

    python benchmarks/bench_inference_cpu.py [--rounds 3] [--threads N] [--models a,b] [--out F]

For each seed model (random weights, statistics made non-trivial), in one process, contenders
alternated round-robin, median time per batch:

- inference: a plain PyTorch ``model.eval()`` forward (contiguous, as a plain loop writes it)
  vs channels-last (``FineTuner``'s default on CUDA and CPU) vs channels-last with BatchNorm
  folded into the convolutions (``ftlight.models.fold``: the frozen-feature cache, ``test``
  and ``predict``);
- a training step (forward, backward, SGD step): contiguous vs channels-last.

Ratios > 1 mean faster than the plain loop. Writes ``results/inference_cpu.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, write
from ftlight.models.fold import fold_batchnorm

# name, input size, batch: the seed models at their pretrained input sizes
MODELS = {
    "tf_efficientnet_lite0": (224, 32),  # ftlight's efficientnet_lite0 (TF-same padding)
    "resnet50": (224, 16),
    "inception_v3": (299, 8),
    "vgg16": (224, 8),
}


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _with_statistics(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def bench_model(name: str, size: int, batch: int, rounds: int) -> dict[str, Any]:
    model = _with_statistics(timm.create_model(name, pretrained=False, num_classes=10))
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    plain = model.eval()
    last = timm.create_model(name, pretrained=False, num_classes=10)
    last.load_state_dict(model.state_dict())
    last = last.to(memory_format=torch.channels_last).eval()
    x_last = x.contiguous(memory_format=torch.channels_last)
    built = fold_batchnorm(last)
    folded = built[0] if built else None

    def train_step(net: nn.Module, inputs: torch.Tensor) -> Callable[[], None]:
        opt = torch.optim.SGD(net.parameters(), lr=1e-4)

        def step() -> None:
            net.train()
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(inputs), y).backward()
            opt.step()
            net.eval()

        return step

    contenders: dict[str, Callable[[], Any]] = {
        "infer_plain": lambda: plain(x),
        "infer_channels_last": lambda: last(x_last),
    }
    if folded is not None:
        contenders["infer_channels_last_folded"] = lambda: folded(x_last)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    with torch.inference_mode():
        for fn in contenders.values():
            fn()  # warm-up
        for _ in range(rounds):
            for key, fn in contenders.items():
                times[key].append(_timed(fn))
    steps = {"train_plain": train_step(plain, x), "train_channels_last": train_step(last, x_last)}
    times.update({k: [] for k in steps})
    for fn in steps.values():
        fn()
    for _ in range(max(2, rounds - 1)):
        for key, fn in steps.items():
            times[key].append(_timed(fn))
    median = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, Any] = {
        "input": [batch, 3, size, size],
        "batchnorms_folded": built[1] if built else 0,
        "ms_per_image": {k: round(v / batch * 1000, 2) for k, v in median.items()},
        "speedup_vs_plain": {
            k: round(median["infer_plain"] / median[k], 2)
            for k in median
            if k.startswith("infer_") and k != "infer_plain"
        },
    }
    out["speedup_vs_plain"]["train_channels_last"] = round(
        median["train_plain"] / median["train_channels_last"], 2
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = machine()
    results: dict[str, Any] = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; known: {sorted(MODELS)}")
        size, batch = MODELS[name]
        results[name] = bench_model(name, size, batch, args.rounds)
        print(f"{name:>20}: {results[name]['speedup_vs_plain']}", flush=True)
        write(
            "inference_cpu",
            {"benchmark": "memory format and BatchNorm folding", "results": results},
            start,
            args.out,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
