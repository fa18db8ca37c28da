"""``keras.mixed_precision``: the global policy maps to Lightning's ``precision``."""

from __future__ import annotations

_POLICIES = {"float32": "32-true", "mixed_float16": "16-mixed", "mixed_bfloat16": "bf16-mixed"}
_policy = "float32"


class Policy:
    def __init__(self, name: str) -> None:
        if name not in _POLICIES:
            raise ValueError(f"Unknown policy {name!r}. Expected one of {sorted(_POLICIES)}.")
        self.name = name

    @property
    def compute_dtype(self) -> str:
        return {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}[
            self.name
        ]

    @property
    def variable_dtype(self) -> str:
        return "float32"


def set_global_policy(policy: str | Policy) -> None:
    """``"mixed_float16"`` -> ``precision="16-mixed"``, ``"mixed_bfloat16"`` -> ``"bf16-mixed"``."""
    global _policy
    _policy = Policy(policy if isinstance(policy, str) else policy.name).name


def global_policy() -> Policy:
    return Policy(_policy)


def lightning_precision() -> str:
    return _POLICIES[_policy]
