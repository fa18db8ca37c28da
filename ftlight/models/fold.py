"""Inference copies with BatchNorm folded into the convolution before it.

In inference mode a BatchNorm layer is a per-channel affine map of fixed statistics, so it can
be folded into the weights of the convolution that feeds it (``torch.nn.utils.fusion``): one
pass over the feature map fewer per layer. On 2 CPU cores, channels-last, EfficientNet-Lite0
at 224 px runs 2.58x a plain forward with it, 1.66x without
(``benchmarks/bench_inference_cpu.py``). ftlight uses it where a backbone runs many images
with fixed weights: the frozen-feature cache and ``test`` / ``predict``. The copy is checked
against the original on its first batch and dropped, with a warning, if they differ; it is
dropped too as soon as any weight or statistic of the original changes (in place or by new
tensors: version counters and storage), so it can never serve stale weights. The copy holds
a second set of the weights while it lives; models with nothing to fold are not copied.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)

try:  # timm's BatchNorm + dropout + activation in one module, and TF-"same" convolution
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.norm_act import BatchNormAct2d
except ImportError:  # pragma: no cover - timm is a dependency
    BatchNormAct2d = Conv2dSame = None  # type: ignore[assignment,misc]

# Convolutions whose forward is ``conv(x, self.weight, self.bias, ...)``: folding rewrites
# their weight and bias. Conv2dSame pads from the input's size, which fx cannot trace through:
# it is kept as one node.
_FOLDABLE_CONVS = tuple(t for t in (nn.Conv2d, Conv2dSame) if t is not None)


def _is_batchnorm(module: nn.Module) -> bool:
    """The BatchNorm types whose forward is known: a plain BatchNorm2d, or timm's
    BatchNormAct2d (BatchNorm, then its ``drop`` and ``act``)."""
    return type(module) is nn.BatchNorm2d or (
        BatchNormAct2d is not None and type(module) is BatchNormAct2d
    )


class _Tracer(fx.Tracer):
    """Keeps BatchNorm layers (timm's too) and the foldable convolutions as single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_batchnorm(m) or type(m) in _FOLDABLE_CONVS or super().is_leaf_module(m, qualname)


def _set(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent, _, name = qualname.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def fold_batchnorm(module: nn.Module) -> tuple[nn.Module, int] | None:
    """An inference-mode copy of ``module`` with every BatchNorm that is the only reader of a
    plain ``nn.Conv2d`` (or timm's ``Conv2dSame``) folded into that convolution; and the
    number folded.

    ``None`` when the module cannot be traced by ``torch.fx`` or has nothing to fold. The copy
    is only valid in inference mode and for the weights ``module`` has now.
    """
    if not any(_is_batchnorm(m) for m in module.modules()):
        return None  # nothing to fold: no copy of the weights
    # traced in inference mode: fx bakes Python-level ``self.training`` branches (a head's
    # functional dropout) into the graph
    inference = copy.deepcopy(module).eval()
    try:
        graph = _Tracer().trace(inference)
    except Exception as err:  # any model fx cannot trace keeps its own forward
        log.debug("BatchNorm folding skipped: %s cannot be traced (%s)", type(module), err)
        return None
    folded = fx.GraphModule(inference, graph)
    modules = dict(folded.named_modules())
    count = 0
    for node in folded.graph.nodes:
        if node.op != "call_module" or not _is_batchnorm(modules[node.target]):
            continue
        conv_node = node.args[0]
        if not (
            isinstance(conv_node, fx.Node)
            and conv_node.op == "call_module"
            and type(modules[conv_node.target]) in _FOLDABLE_CONVS
            and len(conv_node.users) == 1
        ):
            continue
        bn = modules[node.target]
        if bn.running_mean is None or bn.running_var is None:
            continue  # normalises with batch statistics even in inference mode
        _set(folded, conv_node.target, fuse_conv_bn_eval(modules[conv_node.target], bn))
        rest = nn.Identity() if type(bn) is nn.BatchNorm2d else nn.Sequential(bn.drop, bn.act)
        _set(folded, node.target, rest)
        count += 1
    if not count:
        return None
    folded.recompile()
    return folded.eval(), count


def _stamp(module: nn.Module) -> tuple[tuple[int, int, torch.dtype], ...]:
    """The in-place version counters, storage and dtype of every parameter and buffer: any
    change of weights or statistics in place (an optimizer step, ``load_state_dict``,
    ``copy_``) or by new tensors (``load_state_dict(assign=True)``, ``p.data = ...``, whose
    version counters may equal the old ones) changes the stamp."""
    return tuple(
        (t._version, t.data_ptr(), t.dtype) for t in (*module.parameters(), *module.buffers())
    )


class FoldedInference:
    """A BatchNorm-folded copy of ``module`` for inference while its weights stay as they are.

    ``forward_or_none(x)`` returns the copy's output, or ``None`` where the caller must run the
    original: ``module`` is in training mode, its weights changed since the copy was made
    (the copy is then dropped), nothing could be folded, or the copy's first output differed
    from the original's (the copy is dropped with a warning).
    """

    def __init__(self, module: nn.Module, *, rtol: float = 1e-3) -> None:
        self.module = module
        self.rtol = rtol
        self.checked = False
        built = fold_batchnorm(module)
        self.copy = built[0] if built else None
        self.stamp = _stamp(module)
        self.device = next(module.parameters(), torch.empty(0)).device

    def forward_or_none(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.copy is None or self.module.training:
            return None
        if _stamp(self.module) != self.stamp or x.device != self.device:
            log.debug("BatchNorm-folded copy dropped: the weights changed or moved")
            self.copy = None
            return None
        out = self.copy(x)
        if not self.checked:
            reference = self.module(x)
            scale = float(reference.detach().abs().max()) or 1.0
            error = float((out.detach().float() - reference.detach().float()).abs().max())
            # low-precision outputs (bf16 autocast) round at their own epsilon, folded or not
            tolerance = self.rtol
            if out.is_floating_point():
                tolerance = max(tolerance, 8 * torch.finfo(out.dtype).eps)
            if not error <= tolerance * scale:
                warnings.warn(
                    f"BatchNorm folding changed this backbone's outputs by {error:.3g} (largest "
                    f"output {scale:.3g}); inference runs without it.",
                    stacklevel=2,
                )
                self.copy = None
                return reference
            self.checked = True
        return out
