"""Same model, data and batch four ways, in one process: a plain PyTorch loop,
``FineTuner`` + ``lightning.Trainer``, compat ``fit`` and Keras 3 (torch backend, if installed).

ResNet50 at 64 px, batch 32, random data, all layers trainable, SGD(momentum=0.9), as in
``../shared/BENCHMARKS.md``. Each loop runs ``--warmup`` steps, then ``--steps`` timed steps;
``--repeats`` runs the four loops round-robin and keeps each loop's best run (the machines
are shared, so a slow outlier is load, not the loop). Targets: FineTuner and compat >= 0.95x
the plain loop and >= 1.3x Keras 3.

    python benchmarks/bench_finetuner_cpu.py        # writes results/finetuner_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).parent))

import torch
from _common import machine, quiet_trainer, write
from bench_compat_fit import BATCH, CLASSES, SIZE, bench_compat, bench_keras, bench_plain, data

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")


def bench_finetuner(steps: int, warmup: int) -> float:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from ftlight import FineTuner

    model = FineTuner(
        "resnet50",
        CLASSES,
        None,
        image_size=SIZE,
        optimizer="sgd",
        lr=0.01,
        backbone_lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        cache_features=False,
    )
    x, y = data(BATCH * (steps + warmup))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    loader = DataLoader(TensorDataset(xt, torch.from_numpy(y).argmax(1)), batch_size=BATCH)
    marks: list[float] = []

    class Tick(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            marks.append(time.perf_counter())

    quiet_trainer(max_epochs=1, accelerator="cpu", callbacks=[Tick()]).fit(model, loader)
    return steps * BATCH / (marks[-1] - marks[warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    start = machine()
    print(f"machine at start: load average {start['load_average']}, {start['cpu_count']} cores")
    torch.manual_seed(0)
    loops = {"plain": bench_plain, "finetuner": bench_finetuner, "compat": bench_compat}
    try:
        import keras  # noqa: F401

        loops["keras"] = bench_keras
    except ImportError:
        print("keras not installed: skipping the Keras 3 loop")
    runs: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.repeats):
        for name, fn in loops.items():
            runs[name].append(fn(args.steps, args.warmup))
            print(f"[{r + 1}/{args.repeats}] {name:>9}: {runs[name][-1]:.1f} images/s", flush=True)
    best = {name: max(v) for name, v in runs.items()}
    ratios = {
        "finetuner_vs_plain": best["finetuner"] / best["plain"],
        "compat_vs_plain": best["compat"] / best["plain"],
    }
    if "keras" in best:
        ratios["finetuner_vs_keras"] = best["finetuner"] / best["keras"]
        ratios["compat_vs_keras"] = best["compat"] / best["keras"]
    targets = {k: (0.95 if k.endswith("plain") else 1.3) for k in ratios}
    for k, v in ratios.items():
        verdict = "met" if v >= targets[k] else "MISSED"
        print(f"{k:>20} = {v:.3f} (target >= {targets[k]}) {verdict}")
    write(
        "finetuner_cpu",
        {
            "workload": f"ResNet50 {SIZE}px, batch {BATCH}, random data, SGD momentum, all "
            f"layers trainable; {args.warmup} warm-up + {args.steps} timed steps, best of "
            f"{args.repeats} round-robin runs",
            "images_per_s": best,
            "runs": runs,
            "ratios": ratios,
            "targets": targets,
            "targets_met": {k: ratios[k] >= targets[k] for k in ratios},
        },
        start,
        args.out,
    )


if __name__ == "__main__":
    main()
