"""An independent PyTorch implementation of the released zero-shot segmentation protocol, driven by
a Hugging Face ``GroupViTModel``, plus checks of its host-side pieces.

Written from the release's ``GroupViTSegInference.encode_decode`` / ``get_attn_maps``, mmseg 0.x's
``EncoderDecoder.slide_inference`` / ``whole_inference`` / ``inference`` / ``aug_test`` and
``mmcv.imrescale`` / ``imnormalize``, eager and one window at a time as the release runs. Used by
the segmentation tests (agreement with ``groupvit_jax.segmenter``) and ``benchmarks/eval.py``.

Hugging Face differences handled here: its ``logit_scale`` is not clamped (the release clamps
``exp`` at 100); its projection head is applied to ``[N, C]`` rows (its BatchNorm1d would read a
``[B, G, C]`` input's group axis as channels); position embeddings are interpolated through the
embeddings' ``interpolate_pos_encoding`` switch.
"""

from __future__ import annotations

import math

import numpy as np

_MEAN = (123.675, 116.28, 103.53)
_STD = (58.395, 57.12, 57.375)


def _torch():
  import torch

  return torch


# --------------------------------------------------------------------------------------------------
# mmcv pieces
# --------------------------------------------------------------------------------------------------


def imrescale_size(h: int, w: int, scale=(2048, 448)) -> tuple[int, int]:
  """mmcv.rescale_size for keep_ratio resizing: returns (new_h, new_w)."""
  max_long, max_short = max(scale), min(scale)
  factor = min(max_long / max(h, w), max_short / min(h, w))
  return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def _linear_coeffs(src: int, dst: int, clamp: bool):
  """OpenCV's INTER_LINEAR fixed-point coefficients for one axis: (i0, i1, c0, c1) int64 arrays.

  Source position ``(d + 0.5) * (src / dst) - 0.5`` in float32, integer part and fraction;
  ``saturate_cast<short>(w * 2048)`` rounds half to even. Horizontally OpenCV clamps both the
  position and the fraction at the borders; vertically only the row indices.
  """
  pos = ((np.arange(dst) + 0.5) * (1.0 / (dst / src)) - 0.5).astype(np.float32)
  base = np.floor(pos).astype(np.int64)
  frac = (pos - base.astype(np.float32)).astype(np.float32)
  if clamp:
    frac = np.where((base < 0) | (base >= src - 1), np.float32(0), frac).astype(np.float32)
    base = np.clip(base, 0, src - 1)
  c0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int64)
  c1 = np.rint(frac * np.float32(2048)).astype(np.int64)
  return np.clip(base, 0, src - 1), np.clip(base + 1, 0, src - 1), c0, c1


def cv2_resize_linear(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
  """cv2.resize(img, (new_w, new_h), INTER_LINEAR) for uint8 [H, W, 3]: OpenCV itself when it is
  installed, else a torch port of its fixed-point arithmetic."""
  try:
    import cv2  # noqa: F401

    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
  except ImportError:
    pass
  torch = _torch()
  h, w = img.shape[:2]
  if (h, w) == (new_h, new_w):
    return img.copy()
  xi0, xi1, xc0, xc1 = (torch.from_numpy(v) for v in _linear_coeffs(w, new_w, clamp=True))
  yi0, yi1, yc0, yc1 = (torch.from_numpy(v) for v in _linear_coeffs(h, new_h, clamp=False))
  src = torch.from_numpy(img.astype(np.int64))
  horiz = src[:, xi0] * xc0[None, :, None] + src[:, xi1] * xc1[None, :, None]
  top = torch.div(
    yc0[:, None, None] * torch.div(horiz[yi0], 16, rounding_mode='floor'),
    65536,
    rounding_mode='floor',
  )
  bottom = torch.div(
    yc1[:, None, None] * torch.div(horiz[yi1], 16, rounding_mode='floor'),
    65536,
    rounding_mode='floor',
  )
  return torch.div(top + bottom + 2, 4, rounding_mode='floor').numpy().astype(np.uint8)


def imnormalize(img: np.ndarray):
  """uint8 RGB [H, W, 3] -> float32 tensor [1, 3, H, W] as mmcv.imnormalize (x - mean) * (1 /
  std)."""
  torch = _torch()
  x = torch.from_numpy(img.astype(np.float32))
  mean = torch.tensor(np.array(_MEAN, np.float32))
  stdinv = torch.tensor((1.0 / np.array(_STD, np.float64)).astype(np.float32))
  x = (x - mean) * stdinv
  return x.permute(2, 0, 1)[None].contiguous()


# --------------------------------------------------------------------------------------------------
# The released segmentation head on a Hugging Face model
# --------------------------------------------------------------------------------------------------


def hf_class_embeddings(hf, tokens: np.ndarray, num_classes: int):
  """Mean of unnormalised projected text features over templates, then L2-normalised: [K, D]."""
  torch = _torch()
  with torch.no_grad():
    out = hf.get_text_features(input_ids=torch.from_numpy(tokens.astype(np.int64)))
  out = out if torch.is_tensor(out) else out.pooler_output
  out = out.reshape(num_classes, -1, out.shape[-1]).mean(1)
  return torch.nn.functional.normalize(out, dim=-1)


class ReleasedSegmentation:
  """GroupViTSegInference + mmseg EncoderDecoder test path, in eager PyTorch, batch size 1.

  Args:
    hf: a transformers GroupViTModel (eval mode).
    text_embedding: [K, D] L2-normalised class embeddings (no background prompt).
    bg_thresh: background threshold, or None for no background channel.
  """

  def __init__(
    self,
    hf,
    text_embedding,
    bg_thresh=None,
    mode='slide',
    crop=448,
    stride=224,
    img_scale=(2048, 448),
    ratios=(1.0,),
    flip=False,
  ):
    self.hf = hf
    self.text = text_embedding
    self.with_bg = bg_thresh is not None
    self.bg_thresh = bg_thresh
    self.mode = mode
    self.crop, self.stride = crop, stride
    self.img_scale, self.ratios, self.flip = img_scale, ratios, flip
    self.patch = hf.config.vision_config.patch_size

  # --- GroupViTSegInference ----------------------------------------------------------------
  def _vision(self, img):
    torch = _torch()
    emb = self.hf.vision_model.embeddings
    original = emb.forward
    emb.forward = lambda pixels, **kw: original(pixels, interpolate_pos_encoding=True)
    try:
      with torch.no_grad():
        return self.hf.vision_model(img, output_attentions=True, return_dict=True)
    finally:
      emb.forward = original

  def _project(self, x):
    shape = x.shape
    return self.hf.visual_projection(x.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)

  def attn_map(self, img, out):
    """Last stage's composed soft map resized to the input: [H, W, G] (release's get_attn_maps
    with rescale=True, including its feature-grid recovery from the image size)."""
    torch = _torch()
    F = torch.nn.functional
    prev = None
    for a in out.attentions:  # [B, G, N] soft assignment
      a = a.permute(0, 2, 1)
      prev = a if prev is None else prev @ a
    h, w = img.shape[-2:]
    n = prev.shape[1]
    scale = (h * w // n) ** 0.5
    if h > w:
      wf = w // int(np.round(scale))
      hf_ = n // wf
    else:
      hf_ = h // int(np.round(scale))
      wf = n // hf_
    assert hf_ * wf == n
    m = prev.reshape(1, hf_, wf, -1).permute(0, 3, 1, 2)
    m = F.interpolate(m, size=(h, w), mode='bilinear', align_corners=False)
    return m[0].permute(1, 2, 0)

  def encode_decode(self, img):
    """[1, 3, h, w] normalised -> [1, C, h, w] window logits."""
    torch = _torch()
    F = torch.nn.functional
    out = self._vision(img)
    attn = self.attn_map(img, out)
    with torch.no_grad():
      grouped = F.normalize(self._project(out.last_hidden_state)[0], dim=-1)  # [G, D]
      avg = F.normalize(self._project(out.pooler_output), dim=-1)  # [1, D]
    onehot = F.one_hot(attn.argmax(dim=-1), num_classes=attn.shape[-1]).to(attn.dtype)
    k = self.text.shape[0]
    offset = 1 if self.with_bg else 0
    logit_scale = torch.clamp(self.hf.logit_scale.detach().exp(), max=100)
    group_aff = (grouped @ self.text.T) * logit_scale
    pre = F.softmax(group_aff, dim=-1)
    avg_aff = F.softmax((avg @ self.text.T) * logit_scale, dim=-1)
    mask = torch.zeros_like(avg_aff)
    top = avg_aff.topk(dim=-1, k=min(5, k))
    mask.scatter_add_(dim=-1, index=top.indices, src=torch.ones_like(top.values))
    group_aff = group_aff.masked_fill(~mask.bool(), float('-inf'))
    group_aff = F.softmax(group_aff, dim=-1) * pre
    logits = torch.zeros(k + offset, *attn.shape[:2], dtype=img.dtype)
    scores = onehot @ group_aff
    logits[offset:] = scores.permute(2, 0, 1)
    if self.with_bg:
      thresh = min(self.bg_thresh, group_aff.max().item())
      logits[0, scores.max(dim=-1).values < thresh] = 1
    return logits[None]

  # --- mmseg EncoderDecoder ----------------------------------------------------------------
  def slide_inference(self, img):
    torch = _torch()
    F = torch.nn.functional
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - self.crop + self.stride - 1, 0) // self.stride + 1
    w_grids = max(w_img - self.crop + self.stride - 1, 0) // self.stride + 1
    preds = None
    count = torch.zeros(1, 1, h_img, w_img)
    for hi in range(h_grids):
      for wi in range(w_grids):
        y1, x1 = hi * self.stride, wi * self.stride
        y2, x2 = min(y1 + self.crop, h_img), min(x1 + self.crop, w_img)
        y1, x1 = max(y2 - self.crop, 0), max(x2 - self.crop, 0)
        crop_logit = self.encode_decode(img[:, :, y1:y2, x1:x2])
        if preds is None:
          preds = torch.zeros(1, crop_logit.shape[1], h_img, w_img)
        preds += F.pad(crop_logit, (x1, w_img - x2, y1, h_img - y2))
        count[:, :, y1:y2, x1:x2] += 1
    assert (count == 0).sum() == 0
    return preds / count

  def inference(self, image: np.ndarray, ratio: float, flip: bool):
    torch = _torch()
    F = torch.nn.functional
    h, w = image.shape[:2]
    scale = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))
    nh, nw = imrescale_size(h, w, scale)
    canvas = cv2_resize_linear(image, nh, nw)
    if flip:
      canvas = np.ascontiguousarray(canvas[:, ::-1])
    img = imnormalize(canvas)
    logits = self.slide_inference(img) if self.mode == 'slide' else self.encode_decode(img)
    logits = F.interpolate(logits, size=(h, w), mode='bilinear', align_corners=False)
    out = F.softmax(logits, dim=1)
    if flip:
      out = out.flip(dims=(3,))
    return out

  def predict(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int64 [H, W] (aug_test: mean of the views' softmax outputs)."""
    total, n = None, 0
    for r in self.ratios:
      for f in (False, True) if self.flip else (False,):
        out = self.inference(image, r, f)
        total = out if total is None else total + out
        n += 1
    return (total / n).argmax(dim=1)[0].numpy()


# --------------------------------------------------------------------------------------------------
# Tiny random models shared by the segmentation tests
# --------------------------------------------------------------------------------------------------

TINY_VISION = dict(
  hidden_size=64,
  intermediate_size=128,
  num_attention_heads=2,
  depths=[1, 1, 1],
  num_group_tokens=[64, 8, 0],
  num_output_groups=[64, 8, 8],
  image_size=224,
  patch_size=16,
)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=1, num_hidden_layers=1)


def tiny_models(
  directory,
  seed: int = 0,
  vision=None,
  text=None,
  projection_dim: int = 32,
  logit_scale: float = math.log(50.0),
):
  """(HF GroupViTModel with random weights, our Pretrained converted from it, model dir)."""
  import os

  from groupvit_jax import load_pretrained
  from groupvit_jax.convert import convert
  from references import hf_groupvit

  hf = hf_groupvit.random_hf_model(
    seed=seed,
    vision=vision or TINY_VISION,
    text=text or TINY_TEXT,
    projection_dim=projection_dim,
    projection_intermediate_dim=2 * projection_dim,
    logit_scale_init_value=logit_scale,
  )
  src, out = os.path.join(directory, 'hf'), os.path.join(directory, 'ours')
  hf.save_pretrained(src)
  convert(src, out)
  return hf, load_pretrained(out), out


def synthetic_images(sizes, seed: int = 0):
  """Smooth synthetic uint8 images of the given (h, w) sizes with a few distinct regions."""
  rng = np.random.default_rng(seed)
  out = []
  for i, (h, w) in enumerate(sizes):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy, xx = yy / h, xx / w
    img = np.stack(
      [
        np.sin(5 * xx + i) * 0.5 + 0.5,
        np.cos(4 * yy - i) * 0.5 + 0.5,
        ((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.08).astype(np.float64),
      ],
      -1,
    )
    img = img * 0.85 + 0.15 * rng.random((h, w, 3))
    out.append((img.clip(0, 1) * 255).astype(np.uint8))
  return out
