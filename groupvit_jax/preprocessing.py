"""Host-side image preprocessing (PIL, as the releases' torchvision transforms).

GroupViT's evaluation transform for 224 px inputs: Resize(256) on the short side with PIL
bilinear, CenterCrop(224), scale to [0, 1], ImageNet mean/std normalisation. The towers' own
transforms (`TOWER_TRANSFORMS`): OpenAI CLIP resizes the short side to the input size with PIL
bicubic, centre-crops and uses CLIP's mean/std; DINO's and MAE's evaluation transforms resize the
short side to 256/224 of the input size with PIL bicubic, centre-crop and use ImageNet's.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def to_pil(image) -> Image.Image:
  """uint8 [H, W, 3] array (or a PIL image) -> RGB PIL image. Rejects other layouts clearly."""
  if isinstance(image, Image.Image):
    return image.convert('RGB')
  arr = np.asarray(image)
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise ValueError(f'expected an RGB image [H, W, 3], got shape {arr.shape}')
  if arr.dtype != np.uint8:
    raise ValueError(f'expected uint8 pixels, got {arr.dtype}')
  return Image.fromarray(arr)


def resize_short_side(img: Image.Image, size: int, resample=Image.BILINEAR) -> Image.Image:
  """Resizes so the short side is `size`, long side int(size * long / short) (torchvision)."""
  w, h = img.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
  w, h = img.size
  if w < size or h < size:
    raise ValueError(f'image {w}x{h} is smaller than the crop {size}')
  top = int(round((h - size) / 2.0))
  left = int(round((w - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def resize_square(image, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [size, size, 3] (PIL bilinear, aspect not kept)."""
  img = Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), Image.BILINEAR)
  return np.asarray(img)


def normalize(pixels: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
  """uint8 [..., 3] -> float32 [..., 3] with the given mean/std (ImageNet's by default)."""
  return (pixels.astype(np.float32) / 255.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class Transform:
  """Short side to `resize_ratio` * size (PIL `resample`), centre crop to size, mean/std."""

  resize_ratio: float
  resample: int
  mean: np.ndarray
  std: np.ndarray

  def __call__(self, image, image_size: int) -> np.ndarray:
    """One image (uint8 [H, W, 3] or PIL) -> float32 [image_size, image_size, 3]."""
    img = resize_short_side(to_pil(image), int(self.resize_ratio * image_size), self.resample)
    return normalize(np.asarray(center_crop(img, image_size)), self.mean, self.std)

  def batch(self, images: np.ndarray | Sequence, image_size: int) -> np.ndarray:
    """uint8 [B, H, W, 3] (or a list of differently sized images) -> float32 [B, S, S, 3]."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
      images = images[None]
    return np.stack([self(im, image_size) for im in images])


TOWER_TRANSFORMS = {
  'clip': Transform(1.0, Image.BICUBIC, CLIP_MEAN, CLIP_STD),
  'vit': Transform(256 / 224, Image.BICUBIC, IMAGENET_MEAN, IMAGENET_STD),
  'mae': Transform(256 / 224, Image.BICUBIC, IMAGENET_MEAN, IMAGENET_STD),
}


def eval_transform(image, image_size: int = 224) -> np.ndarray:
  """One image (uint8 [H, W, 3] or PIL) -> float32 [image_size, image_size, 3] model input."""
  resize = int(256 / 224 * image_size)
  img = center_crop(resize_short_side(to_pil(image), resize), image_size)
  return normalize(np.asarray(img))


def eval_batch(images: np.ndarray | Sequence, image_size: int = 224) -> np.ndarray:
  """uint8 [B, H, W, 3] (or a list of differently sized images) -> float32 [B, S, S, 3]."""
  if isinstance(images, np.ndarray) and images.ndim == 3:
    images = images[None]
  return np.stack([eval_transform(im, image_size) for im in images])
