"""``ImageDataGenerator`` with Keras's (legacy) semantics: the same random parameters,
the same transform (Keras's affine matrix, sampled bilinearly with scipy's fill modes, here
with torch ``grid_sample``), channel shift, PIL brightness, ``standardize`` and ``fit``;
``flow`` / ``flow_from_directory`` iterate like Keras's ``Iterator`` (file order, split,
``filenames``, ``classes``, ``reset()``). Batches are NHWC float32 NumPy arrays.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ImageEnhance

from compat.utils import to_categorical
from compat.utils.image_dataset import iter_valid_files
from compat.utils.image_utils import array_to_img, img_to_array, load_img, save_img

_PADDING = {"nearest": "border", "reflect": "reflection", "constant": "zeros"}


def transform_matrix_offset_center(matrix: np.ndarray, x: int, y: int) -> np.ndarray:
    o_x, o_y = float(x) / 2 - 0.5, float(y) / 2 - 0.5
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    return offset @ matrix @ reset


def apply_affine_transform(
    x: np.ndarray,
    theta: float = 0,
    tx: float = 0,
    ty: float = 0,
    shear: float = 0,
    zx: float = 1,
    zy: float = 1,
    fill_mode: str = "nearest",
    cval: float = 0.0,
) -> np.ndarray:
    """Keras's affine transform of one ``(H, W, C)`` image (degrees, pixels, zoom)."""
    matrix = np.eye(3)
    if theta != 0:
        t = np.deg2rad(theta)
        matrix = matrix @ np.array(
            [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
        )
    if tx != 0 or ty != 0:
        matrix = matrix @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    if shear != 0:
        s = np.deg2rad(shear)
        matrix = matrix @ np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    if zx != 1 or zy != 1:
        matrix = matrix @ np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    if np.array_equal(matrix, np.eye(3)):
        return x
    h, w = x.shape[0], x.shape[1]
    m = transform_matrix_offset_center(matrix, h, w)
    m[:, [0, 1]] = m[:, [1, 0]]
    m[[0, 1]] = m[[1, 0]]
    # output pixel (r, c) samples input at A @ (r, c) + b (scipy.ndimage.affine_transform)
    a, b = m[:2, :2], m[:2, 2]
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    src = np.einsum("ij,jhw->ihw", a, np.stack([rows, cols])) + b[:, None, None]
    src_r, src_c = torch.from_numpy(src[0]), torch.from_numpy(src[1])
    grid = torch.stack([(2 * src_c + 1) / w - 1, (2 * src_r + 1) / h - 1], -1)[None]
    img = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).permute(2, 0, 1)[None]
    out = F.grid_sample(
        img, grid, mode="bilinear", padding_mode=_PADDING[fill_mode], align_corners=False
    )[0]
    if fill_mode == "constant":
        outside = (src_r < 0) | (src_r > h - 1) | (src_c < 0) | (src_c > w - 1)
        out[:, outside] = cval
    return out.permute(1, 2, 0).numpy().astype(x.dtype)


def apply_channel_shift(x: np.ndarray, intensity: float) -> np.ndarray:
    return np.clip(x + intensity, np.min(x), np.max(x))


def apply_brightness_shift(x: np.ndarray, brightness: float, scale: bool = True) -> np.ndarray:
    """Keras's brightness shift: PIL ``ImageEnhance.Brightness`` on the image."""
    x_min, x_max = np.min(x), np.max(x)
    local_scale = (x_min < 0) or (x_max > 255)
    img = array_to_img(x, scale=local_scale or scale)
    x = img_to_array(ImageEnhance.Brightness(img).enhance(brightness))
    if not scale and local_scale:
        x = x / 255 * (x_max - x_min) + x_min
    return x


class ImageDataGenerator:
    """Keras's ``ImageDataGenerator`` (channels-last; ``zca_whitening`` not supported)."""

    def __init__(
        self,
        featurewise_center: bool = False,
        samplewise_center: bool = False,
        featurewise_std_normalization: bool = False,
        samplewise_std_normalization: bool = False,
        zca_whitening: bool = False,
        zca_epsilon: float = 1e-6,
        rotation_range: float = 0,
        width_shift_range: Any = 0.0,
        height_shift_range: Any = 0.0,
        brightness_range: Any = None,
        shear_range: float = 0.0,
        zoom_range: Any = 0.0,
        channel_shift_range: float = 0.0,
        fill_mode: str = "nearest",
        cval: float = 0.0,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        rescale: float | None = None,
        preprocessing_function: Any = None,
        data_format: str | None = None,
        validation_split: float = 0.0,
        interpolation_order: int = 1,
        dtype: Any = None,
    ) -> None:
        if zca_whitening:
            raise NotImplementedError("ImageDataGenerator(zca_whitening=True)")
        if data_format not in (None, "channels_last"):
            raise NotImplementedError(f"ImageDataGenerator(data_format={data_format!r})")
        if interpolation_order != 1:
            raise NotImplementedError(
                f"ImageDataGenerator(interpolation_order={interpolation_order}): only 1 "
                "(bilinear, Keras's default)"
            )
        if fill_mode not in ("constant", "nearest", "reflect", "wrap"):
            raise ValueError(
                "`fill_mode` should be one of 'constant', 'nearest', 'reflect' or 'wrap'. "
                f"Received: {fill_mode}"
            )
        if fill_mode == "wrap":
            raise NotImplementedError("ImageDataGenerator(fill_mode='wrap')")
        if not 0 <= validation_split < 1:
            raise ValueError(
                f"`validation_split` must be strictly between 0 and 1. Received: {validation_split}"
            )
        self.featurewise_center = featurewise_center
        self.samplewise_center = samplewise_center
        self.featurewise_std_normalization = featurewise_std_normalization
        self.samplewise_std_normalization = samplewise_std_normalization
        self.zca_whitening, self.zca_epsilon = zca_whitening, zca_epsilon
        self.rotation_range = rotation_range
        self.width_shift_range, self.height_shift_range = width_shift_range, height_shift_range
        self.shear_range, self.channel_shift_range = shear_range, channel_shift_range
        self.fill_mode, self.cval = fill_mode, cval
        self.horizontal_flip, self.vertical_flip = horizontal_flip, vertical_flip
        self.rescale, self.preprocessing_function = rescale, preprocessing_function
        self.data_format, self.dtype = "channels_last", dtype or "float32"
        self.interpolation_order = interpolation_order
        self._validation_split = validation_split
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        if isinstance(zoom_range, (float, int)):
            self.zoom_range = [1 - zoom_range, 1 + zoom_range]
        elif len(zoom_range) == 2 and all(isinstance(v, (float, int)) for v in zoom_range):
            self.zoom_range = [zoom_range[0], zoom_range[1]]
        else:
            raise ValueError(
                "`zoom_range` should be a float or a tuple or list of two floats. "
                f"Received: {zoom_range}"
            )
        if brightness_range is not None and (
            not isinstance(brightness_range, (tuple, list)) or len(brightness_range) != 2
        ):
            raise ValueError(
                "`brightness_range should be tuple or list of two floats. "
                f"Received: {brightness_range}"
            )
        self.brightness_range = brightness_range
        if featurewise_std_normalization and not featurewise_center:
            self.featurewise_center = True
            warnings.warn(
                "This ImageDataGenerator specifies `featurewise_std_normalization`, "
                "which overrides setting of `featurewise_center`.",
                stacklevel=2,
            )
        if samplewise_std_normalization and not samplewise_center:
            self.samplewise_center = True
            warnings.warn(
                "This ImageDataGenerator specifies `samplewise_std_normalization`, "
                "which overrides setting of `samplewise_center`.",
                stacklevel=2,
            )

    # ----- Keras's per-image pipeline ------------------------------------------------
    def get_random_transform(self, img_shape: tuple, seed: int | None = None) -> dict:
        """Random parameters drawn as Keras draws them (``np.random``, same order)."""
        if seed is not None:
            np.random.seed(seed)
        theta = (
            np.random.uniform(-self.rotation_range, self.rotation_range)
            if self.rotation_range
            else 0
        )
        tx = self._shift(self.height_shift_range, img_shape[0])
        ty = self._shift(self.width_shift_range, img_shape[1])
        shear = np.random.uniform(-self.shear_range, self.shear_range) if self.shear_range else 0
        if self.zoom_range[0] == 1 and self.zoom_range[1] == 1:
            zx, zy = 1, 1
        else:
            zx, zy = np.random.uniform(self.zoom_range[0], self.zoom_range[1], 2)
        flip_horizontal = (np.random.random() < 0.5) * self.horizontal_flip
        flip_vertical = (np.random.random() < 0.5) * self.vertical_flip
        channel_shift_intensity = None
        if self.channel_shift_range != 0:
            channel_shift_intensity = np.random.uniform(
                -self.channel_shift_range, self.channel_shift_range
            )
        brightness = None
        if self.brightness_range is not None:
            brightness = np.random.uniform(self.brightness_range[0], self.brightness_range[1])
        return {
            "theta": theta,
            "tx": tx,
            "ty": ty,
            "shear": shear,
            "zx": zx,
            "zy": zy,
            "flip_horizontal": flip_horizontal,
            "flip_vertical": flip_vertical,
            "channel_shift_intensity": channel_shift_intensity,
            "brightness": brightness,
        }

    @staticmethod
    def _shift(shift_range: Any, size: int) -> float:
        if not shift_range:
            return 0
        try:  # 1-D array-like or int
            shift = np.random.choice(shift_range)
            shift *= np.random.choice([-1, 1])
        except ValueError:  # floating point
            shift = np.random.uniform(-shift_range, shift_range)
        if np.max(shift_range) < 1:
            shift *= size
        return shift

    def apply_transform(self, x: np.ndarray, transform_parameters: dict) -> np.ndarray:
        p = transform_parameters
        x = apply_affine_transform(
            x,
            p.get("theta", 0),
            p.get("tx", 0),
            p.get("ty", 0),
            p.get("shear", 0),
            p.get("zx", 1),
            p.get("zy", 1),
            fill_mode=self.fill_mode,
            cval=self.cval,
        )
        if p.get("channel_shift_intensity") is not None:
            x = apply_channel_shift(x, p["channel_shift_intensity"])
        if p.get("flip_horizontal", False):
            x = x[:, ::-1]
        if p.get("flip_vertical", False):
            x = x[::-1]
        if p.get("brightness") is not None:
            x = apply_brightness_shift(x, p["brightness"], False)
        return x

    def random_transform(self, x: np.ndarray, seed: int | None = None) -> np.ndarray:
        return self.apply_transform(x, self.get_random_transform(x.shape, seed))

    def standardize(self, x: np.ndarray) -> np.ndarray:
        if self.preprocessing_function is not None:
            x = self.preprocessing_function(x)
        if self.rescale:
            x = x * self.rescale
        if self.samplewise_center:
            x = x - np.mean(x, keepdims=True)
        if self.samplewise_std_normalization:
            x = x / (np.std(x, keepdims=True) + 1e-6)
        if self.featurewise_center:
            if self.mean is None:
                warnings.warn(
                    "This ImageDataGenerator specifies `featurewise_center`, but it hasn't "
                    "been fit on any training data. Fit it first by calling `.fit(numpy_data)`.",
                    stacklevel=2,
                )
            else:
                x = x - self.mean
        if self.featurewise_std_normalization:
            if self.std is None:
                warnings.warn(
                    "This ImageDataGenerator specifies `featurewise_std_normalization`, but "
                    "it hasn't been fit on any training data. Fit it first by calling "
                    "`.fit(numpy_data)`.",
                    stacklevel=2,
                )
            else:
                x = x / (self.std + 1e-6)
        return x

    def fit(self, x: Any, augment: bool = False, rounds: int = 1, seed: int | None = None):
        """Compute the feature-wise mean / std (after ``rescale``) from sample images."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 4:
            raise ValueError(
                f"Input to `.fit()` should have rank 4. Got array with shape: {x.shape}"
            )
        if seed is not None:
            np.random.seed(seed)
        x = np.copy(x)
        if self.rescale:
            x *= self.rescale
        if augment:
            x = np.stack([self.random_transform(img) for _ in range(rounds) for img in x])
        if self.featurewise_center:
            self.mean = np.mean(x, axis=(0, 1, 2)).reshape((1, 1, x.shape[3]))
            x -= self.mean
        if self.featurewise_std_normalization:
            self.std = np.std(x, axis=(0, 1, 2)).reshape((1, 1, x.shape[3]))
            x /= self.std + 1e-6

    def _process(self, x: np.ndarray) -> np.ndarray:
        x = self.apply_transform(x, self.get_random_transform(x.shape))
        return self.standardize(x)

    # ----- iterators -----------------------------------------------------------------
    def flow(
        self,
        x: Any,
        y: Any = None,
        batch_size: int = 32,
        shuffle: bool = True,
        sample_weight: Any = None,
        seed: int | None = None,
        save_to_dir: Any = None,
        save_prefix: str = "",
        save_format: str = "png",
        ignore_class_split: bool = False,
        subset: str | None = None,
    ) -> NumpyArrayIterator:
        if save_to_dir is not None:
            raise NotImplementedError("ImageDataGenerator.flow(save_to_dir=...)")
        return NumpyArrayIterator(
            x,
            y,
            self,
            batch_size=batch_size,
            shuffle=shuffle,
            sample_weight=sample_weight,
            seed=seed,
            ignore_class_split=ignore_class_split,
            subset=subset,
        )

    def flow_from_directory(
        self,
        directory: str | os.PathLike,
        target_size: tuple[int, int] = (256, 256),
        color_mode: str = "rgb",
        classes: list[str] | None = None,
        class_mode: str | None = "categorical",
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        save_to_dir: Any = None,
        save_prefix: str = "",
        save_format: str = "png",
        follow_links: bool = False,
        subset: str | None = None,
        interpolation: str = "nearest",
        keep_aspect_ratio: bool = False,
    ) -> DirectoryIterator:
        if save_to_dir is not None:
            raise NotImplementedError("ImageDataGenerator.flow_from_directory(save_to_dir=...)")
        return DirectoryIterator(
            directory,
            self,
            target_size=target_size,
            color_mode=color_mode,
            classes=classes,
            class_mode=class_mode,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            follow_links=follow_links,
            subset=subset,
            interpolation=interpolation,
            keep_aspect_ratio=keep_aspect_ratio,
        )


class Iterator:
    """Keras's batch iterator: ``it[i]``, ``len(it)``, ``next(it)``, ``reset()``; a shuffled
    iterator draws a new permutation each epoch (seeded like Keras's)."""

    _compat_batches = True

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int | None) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.batch_index = 0
        self.total_batches_seen = 0
        self.index_array: np.ndarray | None = None

    def _set_index_array(self) -> None:
        self.index_array = np.arange(self.n)
        if self.shuffle:
            self.index_array = np.random.permutation(self.n)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __getitem__(self, idx: int) -> Any:
        if idx >= len(self):
            raise ValueError(
                f"Asked to retrieve element {idx}, but the Sequence has length {len(self)}"
            )
        if self.seed is not None:
            np.random.seed(self.seed + self.total_batches_seen)
        self.total_batches_seen += 1
        if self.index_array is None:
            self._set_index_array()
        index_array = self.index_array[self.batch_size * idx : self.batch_size * (idx + 1)]
        return self._get_batches_of_transformed_samples(index_array)

    def on_epoch_end(self) -> None:
        self._set_index_array()

    def reset(self) -> None:
        self.batch_index = 0

    def __iter__(self) -> Iterator:
        return self

    def __next__(self) -> Any:
        if self.batch_index >= len(self):
            self.batch_index = 0
        if self.batch_index == 0:
            if self.seed is not None:
                np.random.seed(self.seed + self.total_batches_seen)
            self._set_index_array()
        i = self.batch_index
        self.batch_index += 1
        self.total_batches_seen += 1
        assert self.index_array is not None
        return self._get_batches_of_transformed_samples(
            self.index_array[self.batch_size * i : self.batch_size * (i + 1)]
        )

    def _get_batches_of_transformed_samples(self, index_array: np.ndarray) -> Any:
        raise NotImplementedError


class NumpyArrayIterator(Iterator):
    def __init__(
        self,
        x: Any,
        y: Any,
        image_data_generator: ImageDataGenerator,
        batch_size: int = 32,
        shuffle: bool = False,
        sample_weight: Any = None,
        seed: int | None = None,
        ignore_class_split: bool = False,
        subset: str | None = None,
    ) -> None:
        if isinstance(x, (tuple, list)):
            raise NotImplementedError("ImageDataGenerator.flow(x=[images, *other inputs])")
        self.x = np.asarray(x, dtype=image_data_generator.dtype)
        if self.x.ndim != 4:
            raise ValueError(
                "Input data in `NumpyArrayIterator` should have rank 4. You passed an array "
                f"with shape {self.x.shape}"
            )
        if y is not None and len(self.x) != len(y):
            raise ValueError(
                "`x` (images tensor) and `y` (labels) should have the same length. Found: "
                f"x.shape = {self.x.shape}, y.shape = {np.asarray(y).shape}"
            )
        self.y = None if y is None else np.asarray(y)
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        if subset is not None:
            if subset not in {"training", "validation"}:
                raise ValueError(
                    f"Invalid subset name: {subset}; expected 'training' or 'validation'."
                )
            split_idx = int(len(self.x) * image_data_generator._validation_split)
            if (
                self.y is not None
                and not ignore_class_split
                and not np.array_equal(np.unique(self.y[:split_idx]), np.unique(self.y[split_idx:]))
            ):
                raise ValueError(
                    "Training and validation subsets have different number of classes after "
                    "the split. If your numpy arrays are sorted by the label, you might want "
                    "to shuffle them."
                )
            part = slice(None, split_idx) if subset == "validation" else slice(split_idx, None)
            self.x = self.x[part]
            self.y = None if self.y is None else self.y[part]
            if self.sample_weight is not None:
                self.sample_weight = self.sample_weight[part]
        self.image_data_generator = image_data_generator
        super().__init__(len(self.x), batch_size, shuffle, seed)

    def _get_batches_of_transformed_samples(self, index_array: np.ndarray) -> Any:
        gen = self.image_data_generator
        batch_x = np.stack([gen._process(self.x[j]) for j in index_array]).astype(gen.dtype)
        if self.y is None:
            return batch_x
        out = (batch_x, self.y[index_array])
        if self.sample_weight is not None:
            out = (*out, self.sample_weight[index_array])
        return out


class DirectoryIterator(Iterator):
    """Images from ``directory/<class>/**`` in Keras's order; ``filenames`` are relative."""

    allowed_class_modes = {"categorical", "binary", "sparse", "input", None}
    white_list_formats = ("png", "jpg", "jpeg", "bmp", "ppm", "tif", "tiff")

    def __init__(
        self,
        directory: str | os.PathLike,
        image_data_generator: ImageDataGenerator,
        target_size: tuple[int, int] = (256, 256),
        color_mode: str = "rgb",
        classes: list[str] | None = None,
        class_mode: str | None = "categorical",
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        follow_links: bool = False,
        subset: str | None = None,
        interpolation: str = "nearest",
        keep_aspect_ratio: bool = False,
    ) -> None:
        if color_mode not in {"rgb", "rgba", "grayscale"}:
            raise ValueError(
                f"Invalid color mode: {color_mode}; expected 'rgb', 'rgba', or 'grayscale'."
            )
        if class_mode not in self.allowed_class_modes:
            raise ValueError(
                f"Invalid class_mode: {class_mode}; expected one of "
                '"categorical", "binary", "sparse", "input" or None.'
            )
        self.directory = os.fspath(directory)
        self.image_data_generator = image_data_generator
        self.target_size = tuple(target_size)
        self.color_mode, self.class_mode = color_mode, class_mode
        self.interpolation, self.keep_aspect_ratio = interpolation, keep_aspect_ratio
        self.dtype = image_data_generator.dtype
        channels = {"rgba": 4, "rgb": 3, "grayscale": 1}[color_mode]
        self.image_shape = (*self.target_size, channels)
        split = None
        if subset is not None:
            if subset not in {"training", "validation"}:
                raise ValueError(
                    f"Invalid subset name: {subset}; expected 'training' or 'validation'"
                )
            vs = image_data_generator._validation_split
            split = (0, vs) if subset == "validation" else (vs, 1)
        self.split, self.subset = split, subset
        if not classes:
            classes = [
                d
                for d in sorted(os.listdir(self.directory))
                if os.path.isdir(os.path.join(self.directory, d))
            ]
        self.num_classes = len(classes)
        self.class_indices = dict(zip(classes, range(len(classes)), strict=True))
        formats = tuple("." + f for f in self.white_list_formats)
        filenames, labels = [], []
        for name in classes:
            folder = os.path.join(self.directory, name)
            files = list(iter_valid_files(folder, follow_links, formats))
            if split:
                files = files[int(split[0] * len(files)) : int(split[1] * len(files))]
            for root, fname in files:
                filenames.append(
                    os.path.join(name, os.path.relpath(os.path.join(root, fname), folder))
                )
                labels.append(self.class_indices[name])
        self.filenames = filenames
        self.classes = np.array(labels, dtype="int32")
        self.samples = len(filenames)
        print(f"Found {self.samples} images belonging to {self.num_classes} classes.")
        super().__init__(self.samples, batch_size, shuffle, seed)

    @property
    def filepaths(self) -> list[str]:
        return [os.path.join(self.directory, f) for f in self.filenames]

    @property
    def labels(self) -> np.ndarray:
        return self.classes

    def _get_batches_of_transformed_samples(self, index_array: np.ndarray) -> Any:
        gen, paths = self.image_data_generator, self.filepaths
        batch_x = np.zeros((len(index_array), *self.image_shape), dtype=self.dtype)
        for i, j in enumerate(index_array):
            img = load_img(
                paths[j],
                color_mode=self.color_mode,
                target_size=self.target_size,
                interpolation=self.interpolation,
                keep_aspect_ratio=self.keep_aspect_ratio,
            )
            batch_x[i] = gen._process(img_to_array(img, dtype=self.dtype))
        if self.class_mode == "input":
            return batch_x, batch_x.copy()
        if self.class_mode in ("sparse", "binary"):
            return batch_x, self.classes[index_array].astype(self.dtype)
        if self.class_mode == "categorical":
            return batch_x, to_categorical(self.classes[index_array], self.num_classes).astype(
                self.dtype
            )
        return batch_x


__all__ = [
    "DirectoryIterator",
    "ImageDataGenerator",
    "Iterator",
    "NumpyArrayIterator",
    "apply_affine_transform",
    "apply_brightness_shift",
    "apply_channel_shift",
    "array_to_img",
    "img_to_array",
    "load_img",
    "save_img",
    "to_categorical",
]
