"""Time the same fine-tuning in one process: compat ``fit`` (Lightning Trainer), a plain
PyTorch loop over compat's own model module (the same ``nn.Module`` that ``fit`` trains, called
on NCHW tensors, with Keras's SGD-momentum rule and the same loss: ``plain_same_model``), a
plain loop over timm's resnet50 (``plain_timm``: a different module, no conv biases or
ZeroPadding, kept for reference) and Keras 3 on the torch backend.

ResNet50 at 64 px, batch 32, random data, all layers trainable, SGD(momentum=0.9), softmax
head + categorical cross-entropy. Each loop runs ``--warmup`` steps, then ``--steps`` timed
steps. Writes ``benchmarks/results/compat_fit_cpu.json`` (or ``--out``).

    python benchmarks/bench_compat_fit.py --steps 6 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import torch

SIZE, BATCH, CLASSES = 64, 32, 10


def data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype("float32")
    y = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, n)]
    return x, y


def _model(keras: Any) -> Any:
    """The benchmarked model in ``keras`` (real Keras or compat): headless ResNet50, average
    pooling, a softmax Dense head."""
    base = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(SIZE, SIZE, 3), pooling="avg"
    )
    out = keras.layers.Dense(CLASSES, activation="softmax")(base.output)
    return keras.Model(base.input, out)


def _compat_model() -> Any:
    import compat as keras

    return _model(keras)


def _hand_loop(
    model: torch.nn.Module,
    steps: int,
    warmup: int,
    step: Callable[[torch.Tensor, torch.Tensor], None],
) -> float:
    """Images/s of ``step(x, y)`` on NCHW batches (``model`` in training mode), timed after
    ``warmup`` steps."""
    x, y = data(BATCH * (steps + warmup))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # NHWC -> NCHW view, as compat's engine
    yt = torch.from_numpy(y)
    model.train()
    t0 = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        step(xt[i * BATCH : (i + 1) * BATCH], yt[i * BATCH : (i + 1) * BATCH])
    return steps * BATCH / (time.perf_counter() - t0)


def bench_plain_same_model(steps: int, warmup: int) -> float:
    """compat's model module in a hand loop: what ``fit`` would cost with no framework."""
    model = _compat_model()
    params = [p for p in model.parameters() if p.requires_grad]
    bufs = [torch.zeros_like(p) for p in params]
    lr, momentum = 0.01, 0.9

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        p = model.forward(xb)
        p = (p / p.sum(-1, keepdim=True)).clamp(1e-7, 1 - 1e-7)
        loss = -(yb * p.log()).sum(-1).mean()
        for q in params:
            q.grad = None
        loss.backward()
        with torch.no_grad():  # Keras's SGD momentum: v = m v - lr g; w += v
            grads = [q.grad for q in params]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads, alpha=-lr)
            torch._foreach_add_(params, bufs)

    return _hand_loop(model, steps, warmup, step)


def bench_plain(steps: int, warmup: int) -> float:
    import timm

    model = timm.create_model("resnet50", pretrained=False, num_classes=CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        p = torch.softmax(model(xb), -1).clamp(1e-7, 1 - 1e-7)
        loss = -(yb * p.log()).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _hand_loop(model, steps, warmup, step)


class _Timer:
    def __init__(self, warmup: int) -> None:
        self.warmup, self.count, self.t0 = warmup, 0, None

    def tick(self) -> None:
        self.count += 1
        if self.count == self.warmup:
            self.t0 = time.perf_counter()


def bench_compat(steps: int, warmup: int) -> float:
    import compat as keras

    timer = _Timer(warmup)
    model = _compat_model()
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss="categorical_crossentropy",
    )
    x, y = data(BATCH * (steps + warmup))
    # a user batch hook would make compat compute logs every step; tick in the bridge instead
    t_end = []

    class End(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            t_end.append(time.perf_counter())

    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[_NoLogTick(timer), End()],
    )
    return steps * BATCH / (t_end[0] - timer.t0)


class _NoLogTick:
    """Marker replaced below (compat Callback subclass created lazily)."""

    def __new__(cls, timer: _Timer):
        import compat as keras
        from compat import engine

        class NoLog(keras.callbacks.Callback):
            pass

        cb = NoLog()
        # patch once: later rounds must not wrap an earlier round's hook (that would tick twice)
        original = getattr(
            engine._KerasBridge,
            "_unpatched_on_train_batch_end",
            engine._KerasBridge.on_train_batch_end,
        )
        engine._KerasBridge._unpatched_on_train_batch_end = original

        def hook(self, trainer, pl_module, outputs, batch, batch_idx):
            timer.tick()
            original(self, trainer, pl_module, outputs, batch, batch_idx)

        engine._KerasBridge.on_train_batch_end = hook
        return cb


def bench_keras(steps: int, warmup: int) -> float:
    import keras

    timer = _Timer(warmup)
    t_end = []

    class Tick(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            timer.tick()

        def on_train_end(self, logs=None):
            t_end.append(time.perf_counter())

    model = _model(keras)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss="categorical_crossentropy",
    )
    x, y = data(BATCH * (steps + warmup))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[Tick()])
    return steps * BATCH / (t_end[0] - timer.t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "compat_fit_cpu.json")
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the contenders this many times, alternating, and report median ratios",
    )
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras 3 contender")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for every contender (1 keeps a shared, loaded machine from "
        "stalling intra-op threads; default: torch's choice)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    contenders = (
        ("plain_same_model", bench_plain_same_model),
        ("compat", bench_compat),
        ("plain_timm", bench_plain),
        ("keras", bench_keras),
    )
    if args.no_keras:
        contenders = contenders[:-1]
    runs: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for round_index in range(args.rounds):
        for name, fn in contenders:
            runs[name].append(fn(args.steps, args.warmup))
            print(f"round {round_index + 1} {name:>7}: {runs[name][-1]:.1f} images/s", flush=True)
    results = {name: float(np.median(values)) for name, values in runs.items()}

    def per(other: str) -> list[float]:
        return [c / o for c, o in zip(runs["compat"], runs[other], strict=True)]

    # compat_vs_plain: the same model module in both loops (the "same model and data")
    per_round = {
        "compat_vs_plain": per("plain_same_model"),
        "compat_vs_plain_timm": per("plain_timm"),
    }
    if "keras" in runs:
        per_round["compat_vs_keras"] = per("keras")
    ratios = {key: float(np.median(values)) for key, values in per_round.items()}
    print(f"compat / plain (same model) = {ratios['compat_vs_plain']:.3f} (median; target >= 0.95)")
    print(f"compat / plain (timm resnet50) = {ratios['compat_vs_plain_timm']:.3f} (median)")
    if "keras" in ratios:
        print(f"compat / keras = {ratios['compat_vs_keras']:.3f} (median; target >= 1.3)")
    import keras
    import lightning
    import timm

    record = {
        "workload": f"ResNet50 {SIZE}px, batch {BATCH}, random data, SGD momentum, all layers "
        f"trainable; {args.warmup} warm-up + {args.steps} timed steps",
        "rounds": args.rounds,
        "images_per_s": results,
        "images_per_s_each_round": runs,
        "ratios": ratios,
        "ratios_each_round": per_round,
        "load_average_start_end": [load_start, os.getloadavg()],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "timm": timm.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
