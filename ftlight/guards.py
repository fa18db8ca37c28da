"""Kept for the documented import path ``from ftlight.guards import ...``; the guards live in
:mod:`ftlight.callbacks.guards`."""

from ftlight.callbacks.guards import AtomicCheckpointIO, NonFiniteLossError, NonFiniteLossGuard

__all__ = ["AtomicCheckpointIO", "NonFiniteLossError", "NonFiniteLossGuard"]
