"""Inference on converted CLIP, DINO / timm ViT and MAE model directories.

clip = groupvit_jax.load_pretrained(CLIP_DIR)
z_img = clip.encode_image(uint8_images)          # [B, E], L2-normalised, CLIP's preprocessing
z_txt = clip.encode_text(['a photo of a dog.'])  # [N, E], L2-normalised
dino = groupvit_jax.load_pretrained(DINO_DIR)
out = dino.features(uint8_images)                # {'cls': [B, C], 'patches': [B, h, w, C]}

Each object keeps its variables on the first local device and caches one compiled function per
input shape; text runs in a few padded batch sizes, so vocabularies of any size compile a handful
of times.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from groupvit_jax import preprocessing, prompts
from groupvit_jax.models.clip import CLIP, CLIPConfig
from groupvit_jax.models.mae import MAE, MAEConfig, unpatchify
from groupvit_jax.models.vit import VisionTransformer, ViTConfig
from groupvit_jax.tokenizer import default_tokenizer


def _unit(x: jnp.ndarray) -> jnp.ndarray:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class _Tower:
  """What every tower shares: variables on one device, preprocessing and input checks."""

  kind: str

  def __init__(self, config, variables: dict[str, Any]):
    self.config = config
    self.variables = prompts.local_variables(variables)
    self.transform = preprocessing.TOWER_TRANSFORMS[self.kind]

  @property
  def vision_config(self) -> ViTConfig:
    raise NotImplementedError

  @property
  def image_size(self) -> int:
    """The training input size: `preprocess` crops to it."""
    return self.vision_config.image_size

  def preprocess(self, images, image_size: int | None = None) -> np.ndarray:
    """uint8 [B, H, W, 3] (or a list of images) -> float32 [B, S, S, 3] with the tower's own
    evaluation transform (`preprocessing.TOWER_TRANSFORMS`); S is `image_size` (default: the
    training size; other multiples of the patch size interpolate the position embedding)."""
    return self.transform.batch(images, image_size or self.image_size)

  def eval_transform(self, image) -> np.ndarray:
    """One uint8 image [H, W, 3] -> float32 [S, S, 3] at the training size."""
    return self.transform(image, self.image_size)

  def _pixels(self, images, preprocess: bool) -> jnp.ndarray:
    if preprocess:
      return jnp.asarray(self.preprocess(images))
    pixels = np.asarray(images)
    if pixels.ndim != 4 or pixels.shape[-1] != self.vision_config.in_channels:
      raise ValueError(
        f'pixels must be float [B, H, W, {self.vision_config.in_channels}], got {pixels.shape}'
      )
    if not np.issubdtype(pixels.dtype, np.floating):
      raise ValueError(
        f'preprocess=False expects normalised float pixels, got {pixels.dtype}; pass uint8 '
        'images with preprocess=True'
      )
    return jnp.asarray(pixels, jnp.float32)


class PretrainedCLIP(_Tower):
  """A converted CLIP: image and text embeddings, dense patch features, zero-shot classifiers."""

  kind = 'clip'

  def __init__(self, config: CLIPConfig, variables: dict[str, Any]):
    super().__init__(config, variables)
    self.model = CLIP(config)
    self._tokenizer = None

  @property
  def vision_config(self) -> ViTConfig:
    return self.config.vision

  @property
  def logit_scale(self) -> float:
    """exp(logit_scale): the inverse temperature of the image-text logits."""
    return float(np.exp(np.asarray(self.variables['params']['logit_scale'])))

  @functools.cached_property
  def _features_fn(self):
    def fn(variables, pixels, layer):
      return self.model.apply(variables, pixels, layer, method=CLIP.image_features)

    return jax.jit(fn, static_argnums=2)

  @functools.cached_property
  def _text_fn(self):
    return jax.jit(lambda v, t: self.model.apply(v, t, method=CLIP.encode_text))

  @functools.cached_property
  def image_embed_fn(self):
    """Traceable (variables, pixels [B, S, S, 3]) -> unnormalised image embeddings [B, E]."""
    model = self.model
    return lambda variables, pixels: model.apply(variables, pixels, method=CLIP.encode_image)

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      self._tokenizer = default_tokenizer()
    return self._tokenizer

  def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
    """Strings -> int32 [N, context_length] CLIP token ids (truncated, end-of-text kept)."""
    if self.config.text.vocab_size < self.tokenizer.vocab_size:
      # Ids past the embedding table would be clamped silently on the accelerator.
      raise ValueError(
        f'this CLIP has a {self.config.text.vocab_size}-token vocabulary, the CLIP BPE tokenizer '
        f'{self.tokenizer.vocab_size}: tokenize with its own tokenizer and call encode_tokens'
      )
    if isinstance(texts, str):
      texts = [texts]
    return self.tokenizer(list(texts), context_length=self.config.text.context_length)

  def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
    """int [N, L] token ids (L <= context_length; each row's end-of-text token is its largest
    id) -> L2-normalised text embeddings [N, E]."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] > self.config.text.context_length:
      raise ValueError(
        f'tokens must be [N, L<={self.config.text.context_length}], got {tokens.shape}'
      )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.text.vocab_size):
      raise ValueError(f'token ids must lie in [0, {self.config.text.vocab_size})')
    feats = prompts.run_in_buckets(lambda t: self._text_fn(self.variables, t), tokens)
    return feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)

  def image_features(
    self, images, preprocess: bool = True, layer: int | None = None
  ) -> dict[str, np.ndarray]:
    """`embedding` [B, E] (unnormalised), `cls` [B, W], `patches` [B, h, w, W] (after ln_post),
    `patch_embeddings` [B, h, w, E] (projected patches) and, with `layer`, `layer_tokens`
    [B, 1 + h*w, W]. images: uint8 with `preprocess`, else normalised float pixels."""
    out = self._features_fn(self.variables, self._pixels(images, preprocess), layer)
    return {k: np.asarray(v) for k, v in out.items()}

  def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
    """CLIP-normalised float pixels [B, H, W, 3] -> L2-normalised embeddings [B, E]."""
    pixels = self._pixels(pixels, preprocess=False)
    return np.asarray(_unit(self._features_fn(self.variables, pixels, None)['embedding']))

  def encode_image(self, images) -> np.ndarray:
    """uint8 RGB images [B, H, W, 3] (or a list) -> L2-normalised embeddings [B, E], with CLIP's
    preprocessing (bicubic short side, centre crop, CLIP mean/std)."""
    return self.encode_pixels(self.preprocess(images))

  def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
    """Strings -> L2-normalised embeddings [N, E]."""
    return self.encode_tokens(self.tokenize(texts))

  @property
  def naming_input_size(self) -> int:
    """The side whole images are resized to for image-level naming: the training size."""
    return self.config.vision.image_size

  def image_embeddings(self, images: np.ndarray) -> np.ndarray:
    """uint8 [B, S, S, 3] already at the model's input size (resized whole, not cropped) ->
    L2-normalised embeddings [B, E] (CLIP mean/std)."""
    pixels = preprocessing.normalize(
      np.asarray(images, np.uint8), preprocessing.CLIP_MEAN, preprocessing.CLIP_STD
    )
    return self.encode_pixels(pixels)

  def class_embeddings(
    self, class_names: Sequence[str], templates: prompts.Templates = 'simple'
  ) -> np.ndarray:
    """Zero-shot classifier [K, E]: each class's template embeddings L2-normalised, averaged and
    normalised again (OpenAI CLIP's ImageNet recipe)."""
    names = list(class_names)
    if not names:
      raise ValueError('no class names given')
    feats = self.encode_text(prompts.build_prompts(names, templates))
    return prompts.pool_templates(feats, len(names), normalize_each=True)

  def logits(self, images, texts: Sequence[str]) -> np.ndarray:
    """exp(logit_scale) * cosine (+ logit_bias) [B, N] of uint8 images and strings."""
    out = self.logit_scale * self.encode_image(images) @ self.encode_text(texts).T
    if self.config.logit_bias:
      out = out + float(np.asarray(self.variables['params']['logit_bias']))
    return out


class NamedByCLIP:
  """Text side of a model whose groups or regions a CLIP names (SCG's recogniser, ZeroSeg's
  teacher): `tokenize`, `encode_text`, `class_embeddings` of `self._clip` (a PretrainedCLIP)."""

  _clip: PretrainedCLIP

  def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
    return self._clip.tokenize(texts)

  def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
    """Strings -> L2-normalised CLIP text embeddings [N, E]."""
    return self._clip.encode_text(texts)

  def class_embeddings(
    self, class_names: Sequence[str], templates: prompts.Templates = 'simple'
  ) -> np.ndarray:
    """Zero-shot classifier [K, E] from the CLIP (OpenAI's recipe: each template embedding
    normalised, averaged, normalised)."""
    return self._clip.class_embeddings(class_names, templates)


class PretrainedViT(_Tower):
  """A converted DINO / timm ViT: class token and patch features (final norm applied)."""

  kind = 'vit'

  def __init__(self, config: ViTConfig, variables: dict[str, Any]):
    super().__init__(config, variables)
    self.model = VisionTransformer(config)

  @property
  def vision_config(self) -> ViTConfig:
    return self.config

  def _apply_features(self, variables, pixels, layer):
    return self.model.apply(variables, pixels, layer)

  @functools.cached_property
  def _features_fn(self):
    return jax.jit(self._apply_features, static_argnums=2)

  def features(
    self, images, preprocess: bool = True, layer: int | None = None
  ) -> dict[str, np.ndarray]:
    """`cls` [B, C] and `patches` [B, h, w, C] (final norm applied) and, with `layer`,
    `layer_tokens` [B, 1 + h*w, C] (block `layer`'s output, negative from the end, before the
    final norm). images: uint8 [B, H, W, 3] (or a list) with `preprocess`, else normalised float
    pixels [B, H, W, 3] with H, W multiples of the patch size."""
    out = self._features_fn(self.variables, self._pixels(images, preprocess), layer)
    return {k: np.asarray(v) for k, v in out.items()}


class PretrainedMAE(PretrainedViT):
  """A converted MAE: encoder features as `PretrainedViT`, and with a decoder, reconstructions."""

  kind = 'mae'

  def __init__(self, config: MAEConfig, variables: dict[str, Any]):
    _Tower.__init__(self, config, variables)
    self.model = MAE(config)

  @property
  def vision_config(self) -> ViTConfig:
    return self.config.encoder

  def _apply_features(self, variables, pixels, layer):
    return self.model.apply(variables, pixels, layer, method=MAE.encode)

  @functools.cached_property
  def _reconstruct_fn(self):
    return jax.jit(lambda v, pixels, noise: self.model.apply(v, pixels, noise))

  def reconstruct(
    self, images, noise: np.ndarray | None = None, seed: int = 0, preprocess: bool = True
  ) -> dict[str, np.ndarray]:
    """Masks `mask_ratio` of the patches and predicts them.

    Args:
      images: uint8 [B, H, W, 3] with `preprocess`, else normalised float pixels at the training
        size.
      noise: float [B, N] whose argsort picks the kept patches (as the MAE release and Hugging
        Face ViTMAE); default: uniform noise from `seed`.
    Returns:
      `mask` [B, N] (1 = removed), `ids_restore` [B, N], `logits` [B, N, p*p*3] (the decoder's
      output, in normalised-patch units with norm_pix_loss), `loss` [] and `reconstruction`
      [B, H, W, 3] (the logits unpatchified).
    """
    if not self.config.decoder_depth:
      raise ValueError('this MAE has no decoder (an encoder-only checkpoint): use features()')
    pixels = self._pixels(images, preprocess)
    n = (pixels.shape[1] // self.vision_config.patch_size) * (
      pixels.shape[2] // self.vision_config.patch_size
    )
    if noise is None:
      noise = jax.random.uniform(jax.random.key(seed), (pixels.shape[0], n))
    out = self._reconstruct_fn(self.variables, pixels, jnp.asarray(noise, jnp.float32))
    p = self.vision_config.patch_size
    grid = (pixels.shape[1] // p, pixels.shape[2] // p)
    out = {k: np.asarray(v) for k, v in out.items() if k != 'latent'}
    out['reconstruction'] = np.asarray(unpatchify(jnp.asarray(out['logits']), p, grid))
    return out


TOWER_CLASSES = {'clip': PretrainedCLIP, 'vit': PretrainedViT, 'mae': PretrainedMAE}
