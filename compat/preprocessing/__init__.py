"""``keras.preprocessing``."""

from compat.preprocessing import image

__all__ = ["image"]
