"""GPU suite, one script, a few minutes on one H100: ResNet50 fine-tuning images/s against
the plain PyTorch loop and Keras 3, bf16 + channels_last; torch.compile; frozen phase with
cached features; a JPEG folder end to end (GPU decoding, CPU workers) against synthetic data;
peak memory.

    python benchmarks/bench_gpu.py              # needs CUDA; writes results/gpu.json
    python benchmarks/bench_gpu.py --smoke      # tiny CPU run that checks the script itself

Targets (../shared/BENCHMARKS.md): FineTuner and compat >= 0.97x the plain loop, >= 4x
Keras 3; JPEG folder >= 0.9x synthetic; peak memory within 5% of the plain loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch
from _common import machine, quiet_trainer, write

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")

CLASSES = 10
CFG: dict[str, Any] = {}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0


class _GatheredRows(torch.utils.data.Dataset):
    """Tensors on their device, gathered a whole batch at a time (``__getitems__``)."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitems__(self, indices: list[int]) -> tuple:
        index = torch.as_tensor(indices, device=self.tensors[0].device)
        return tuple(t[index] for t in self.tensors)


def gpu_batches(n_batches: int, channels_last_nhwc: bool = False):
    """Synthetic data already on the device, served one gathered batch at a time."""
    from torch.utils.data import DataLoader

    b, s, dev = CFG["batch"], CFG["size"], CFG["device"]
    x = torch.rand(b * n_batches, 3, s, s, device=dev)
    if channels_last_nhwc:
        x = x.permute(0, 2, 3, 1).contiguous()
    y = torch.randint(0, CLASSES, (len(x),), device=dev)
    return DataLoader(_GatheredRows(x, y), batch_size=b, collate_fn=lambda batch: batch)


class Marks:
    def __new__(cls):
        import lightning as L

        class _M(L.Callback):
            t: list[float] = []

            def on_train_batch_end(self, *args) -> None:
                sync()
                self.t.append(time.perf_counter())

        m = _M()
        m.t = []
        return m


def rate(marks: list[float], warmup: int) -> float:
    return (len(marks) - warmup) * CFG["batch"] / (marks[-1] - marks[warmup - 1])


# ---- loops ---------------------------------------------------------------------------------


def plain_loop(steps: int, warmup: int, frozen: bool = False) -> dict[str, float]:
    import timm

    dev = CFG["device"]
    model = timm.create_model(CFG["arch"], num_classes=CLASSES).to(dev)
    model = model.to(memory_format=torch.channels_last)
    if frozen:
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("fc.") or n.startswith("head"))
        model.eval()  # frozen BN in inference mode
    else:
        model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], 0.01, 0.9)
    reset_peak()
    t0 = 0.0
    for i, (x, y) in enumerate(gpu_batches(steps + warmup)):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return {"images_per_s": steps * CFG["batch"] / (time.perf_counter() - t0), "peak_gb": peak_gb()}


def finetuner_loop(
    steps: int, warmup: int, *, compile: bool = False, frozen: bool = False, cache: bool = False
) -> dict[str, float]:
    from ftlight import FineTuner
    from ftlight.callbacks.feature_cache import LoaderDataModule

    model = FineTuner(
        CFG["arch"],
        CLASSES,
        None,
        image_size=CFG["size"],
        optimizer="sgd",
        lr=0.01,
        backbone_lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        freeze=True if frozen else None,
        cache_features=cache,
        torch_compile=compile,
    )
    marks = Marks()
    reset_peak()
    trainer = quiet_trainer(
        max_epochs=3 if cache else 1,
        accelerator=CFG["accelerator"],
        devices=1,
        precision=CFG["precision"],
        callbacks=[marks],
    )
    # a data module: FeatureCache serves cached rows through its hooks
    trainer.fit(model, datamodule=LoaderDataModule(gpu_batches(steps + warmup)))
    per_epoch = steps + warmup
    if cache:  # the last epoch is a head-only epoch on cached rows
        last = marks.t[-per_epoch:]
        return {"images_per_s": rate(last, 1), "peak_gb": peak_gb()}
    return {"images_per_s": rate(marks.t, warmup), "peak_gb": peak_gb()}


def compat_loop(steps: int, warmup: int) -> dict[str, float]:
    import compat as keras

    if CFG["device"].type == "cuda":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    s = CFG["size"]
    base = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(s, s, 3), pooling="avg"
    )
    model = keras.Model(base.input, keras.layers.Dense(CLASSES, activation="softmax")(base.output))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy"
    )
    times: list[float] = []

    class Tick(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None) -> None:
            sync()
            times.append(time.perf_counter())

    reset_peak()
    model.fit(
        gpu_batches(steps + warmup, channels_last_nhwc=True),
        epochs=1,
        verbose=0,
        callbacks=[Tick()],
    )
    keras.mixed_precision.set_global_policy("float32")
    return {"images_per_s": rate(times, warmup), "peak_gb": peak_gb()}


def keras_loop(steps: int, warmup: int) -> dict[str, float] | None:
    try:
        import keras
    except ImportError:
        return None
    if CFG["device"].type == "cuda":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    s, b = CFG["size"], CFG["batch"]
    base = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(s, s, 3), pooling="avg"
    )
    model = keras.Model(base.input, keras.layers.Dense(CLASSES, activation="softmax")(base.output))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy"
    )
    times: list[float] = []

    class Tick(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None) -> None:
            sync()
            times.append(time.perf_counter())

    n = b * (steps + warmup)
    x = np.random.default_rng(0).uniform(0, 1, (n, s, s, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, CLASSES, n)
    reset_peak()
    model.fit(x, y, batch_size=b, epochs=1, verbose=0, callbacks=[Tick()])
    keras.mixed_precision.set_global_policy("float32")
    return {"images_per_s": rate(times, warmup), "peak_gb": peak_gb()}


def jpeg_folder(n: int, root: Path) -> Path:
    """``n`` random-content 500x375 JPEGs in two class folders (written in parallel)."""
    from concurrent.futures import ProcessPoolExecutor

    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_jpeg, [(root, i) for i in range(n)], chunksize=64))
    return root


def _write_jpeg(args: tuple[Path, int]) -> None:
    from PIL import Image

    root, i = args
    rng = np.random.default_rng(i)
    small = rng.integers(0, 255, (47, 63, 3), dtype=np.uint8)  # smooth-ish content
    img = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
    img.save(root / ("a" if i % 2 else "b") / f"{i:06d}.jpg", quality=90)


def folder_loop(root: Path, decode_device: str, workers: int, warmup: int) -> dict[str, float]:
    from ftlight import FineTuner, ImageDataModule

    dm = ImageDataModule.from_folder(
        root,
        batch_size=CFG["batch"],
        val_split=0.0,
        num_workers=workers,
        decode_device=decode_device,
        verify_images=False,
        augment=True,
    )
    model = FineTuner(
        CFG["arch"],
        2,
        None,
        image_size=CFG["size"],
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        cache_features=False,
    )
    marks = Marks()
    quiet_trainer(
        max_epochs=1,
        accelerator=CFG["accelerator"],
        devices=1,
        precision=CFG["precision"],
        callbacks=[marks],
        limit_val_batches=0,
    ).fit(model, datamodule=dm)
    return {"images_per_s": rate(marks.t, warmup)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run to check the script")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--jpegs", type=int, default=8192)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print(
            "bench_gpu.py needs a CUDA GPU and none is available here "
            "(torch.cuda.is_available() is False). Run it on a GPU machine, or pass --smoke "
            "for a tiny CPU run that only checks the script.",
            file=sys.stderr,
        )
        return 2
    if args.smoke:
        CFG.update(
            device=torch.device("cpu"),
            accelerator="cpu",
            precision="32-true",
            arch="resnet18",
            size=32,
            batch=4,
        )
        args.steps, args.warmup, args.jpegs = 2, 1, 16
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        CFG.update(
            device=torch.device("cuda"),
            accelerator="gpu",
            precision="bf16-mixed",
            arch="resnet50",
            size=224,
            batch=256,
        )
    start = machine()
    print(f"device: {start.get('gpu', 'cpu')}; load average {start['load_average']}")
    s, w = args.steps, args.warmup
    res: dict[str, Any] = {}

    def run(name: str, fn, *a, **kw) -> None:
        t0 = time.perf_counter()
        res[name] = fn(*a, **kw)
        shown = res[name] and {k: round(v, 2) for k, v in res[name].items()}
        print(f"{name:>22}: {shown} ({time.perf_counter() - t0:.0f}s)", flush=True)

    run("plain", plain_loop, s, w)
    run("finetuner", finetuner_loop, s, w)
    run("compat", compat_loop, s, w)
    run("keras", keras_loop, max(4, s // 3), min(w, 3))
    run("finetuner_compile", finetuner_loop, s, w, compile=True)
    run("plain_frozen", plain_loop, s, w, frozen=True)
    run("finetuner_frozen", finetuner_loop, s, w, frozen=True)
    run("finetuner_frozen_cached", finetuner_loop, s, w, frozen=True, cache=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = jpeg_folder(args.jpegs, Path(tmp) / "jpegs")
        print(f"wrote {args.jpegs} JPEGs in {time.perf_counter() - t0:.0f}s")
        workers = max(1, (os.cpu_count() or 2) - 1)
        run("jpeg_gpu_decode", folder_loop, root, "cuda" if not args.smoke else "cpu", 4, w)
        run("jpeg_cpu_workers", folder_loop, root, "cpu", workers, w)
    ips = {k: v["images_per_s"] for k, v in res.items() if v}
    ratios = {
        "finetuner_vs_plain": ips["finetuner"] / ips["plain"],
        "compat_vs_plain": ips["compat"] / ips["plain"],
        "jpeg_gpu_vs_synthetic": ips["jpeg_gpu_decode"] / ips["finetuner"],
        "jpeg_cpu_vs_synthetic": ips["jpeg_cpu_workers"] / ips["finetuner"],
        "finetuner_peak_mem_vs_plain": res["finetuner"]["peak_gb"]
        / max(res["plain"]["peak_gb"], 1e-9),
        "cached_head_vs_frozen": ips["finetuner_frozen_cached"] / ips["finetuner_frozen"],
    }
    if "keras" in ips:
        ratios["finetuner_vs_keras"] = ips["finetuner"] / ips["keras"]
        ratios["compat_vs_keras"] = ips["compat"] / ips["keras"]
    for k, v in ratios.items():
        print(f"{k:>30} = {v:.3f}")
    if args.smoke:
        print("smoke run: nothing written")
        return 0
    write(
        "gpu",
        {
            "workload": dict(CFG, device=str(CFG["device"]), steps=s, warmup=w),
            "results": res,
            "ratios": ratios,
        },
        start,
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
