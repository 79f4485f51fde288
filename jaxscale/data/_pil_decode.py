"""Decoding image files with Pillow as Keras' `load_img` does, and a decoding worker process.

This file imports only NumPy and Pillow, so that `python _pil_decode.py` starts fast as a
worker of `jaxscale.data.image_files.ImageFileReader`: it reads pickled requests
`(paths, options)` on stdin and writes `("ok", uint8[B, H, W, C])` or `("error", message)` on
stdout, until stdin closes. A separate interpreter started on this file neither forks a
process that runs JAX's threads nor re-imports the user's main script (as multiprocessing's
spawn and forkserver would).
"""

from __future__ import annotations

import pickle
import sys

import numpy as np


def load_image(path, *, color_mode: str = "rgb", target_size=None,
               interpolation: str = "nearest", keep_aspect_ratio: bool = False) -> np.ndarray:
    """One image file as Keras' `load_img` + `img_to_array` read it, but uint8.

    Args:
      path: the file.
      color_mode: "grayscale", "rgb" or "rgba".
      target_size: (height, width) to resize to, or None to keep the file's size.
      interpolation: Pillow's filter for resizing, by Keras' name ("nearest", "bilinear",
        "bicubic", "hamming", "box", "lanczos").
      keep_aspect_ratio: crop the centre to the target's aspect ratio before resizing.

    Returns:
      uint8[H, W, C], C = 1, 3 or 4 by color mode. 16- and 32-bit grayscale images are
      reduced to 8 bits (value / 256, resp. clipped to 0..255); Keras keeps their values.
    """
    from PIL import Image
    with Image.open(path) as img:
        if color_mode == "grayscale":
            if img.mode not in ("L", "I;16", "I"):
                img = img.convert("L")
        elif color_mode == "rgba":
            if img.mode != "RGBA":
                img = img.convert("RGBA")
        elif color_mode == "rgb":
            if img.mode != "RGB":
                img = img.convert("RGB")
        else:
            raise ValueError('color_mode must be "grayscale", "rgb", or "rgba"')
        if target_size is not None:
            width_height = (int(target_size[1]), int(target_size[0]))
            if img.size != width_height:
                img = _resize(img, width_height, interpolation, keep_aspect_ratio)
        array = np.asarray(img)
    if array.dtype != np.uint8:  # 16/32-bit grayscale
        array = (array >> 8 if array.dtype == np.uint16 else np.clip(array, 0, 255)).astype(
            np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _resize(img, width_height, interpolation: str, keep_aspect_ratio: bool):
    from PIL import Image
    resample = getattr(Image.Resampling, interpolation.upper())
    if not keep_aspect_ratio:
        return img.resize(width_height, resample)
    # Keras' centre crop to the target aspect ratio (integer arithmetic as in load_img).
    width, height = img.size
    target_width, target_height = width_height
    crop_height = min(height, (width * target_height) // target_width)
    crop_width = min(width, (height * target_width) // target_height)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return img.resize(width_height, resample,
                      box=(left, top, left + crop_width, top + crop_height))


def decode_files(paths, options: dict, image_shape) -> np.ndarray:
    """Every file of `paths` through `load_image(**options)`: uint8[len(paths), *image_shape]."""
    out = np.empty((len(paths), *image_shape), np.uint8)
    for i, path in enumerate(paths):
        out[i] = load_image(path, **options)
    return out


def serve(requests, results) -> None:
    """The worker loop: one result per request, until `requests` ends."""
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        try:
            result = ("ok", decode_files(*request))
        except Exception as error:  # reported to the parent, which raises it
            result = ("error", f"{type(error).__name__}: {error}")
        pickle.dump(result, results, protocol=pickle.HIGHEST_PROTOCOL)
        results.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
