"""Lightning callbacks and plugins: staged unfreezing, the feature cache, EMA of weights, and
the guards (non-finite loss, atomic checkpoints)."""

from ftlight.callbacks.ema import EMA
from ftlight.callbacks.feature_cache import FeatureCache
from ftlight.callbacks.guards import AtomicCheckpointIO, NonFiniteLossError, NonFiniteLossGuard
from ftlight.callbacks.staged import Milestone, StagedUnfreeze

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "FeatureCache",
    "Milestone",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "StagedUnfreeze",
]
