"""``keras.preprocessing``."""

from compat.preprocessing import image
from compat.utils import image_dataset_from_directory

__all__ = ["image", "image_dataset_from_directory"]
