"""Mosaic training: several images tiled into one input, each caption matched to its own tile.

Not part of the released recipe (opt-in with `config.loss.mosaic.fraction > 0`). The released
losses see only the mean of the final groups, so nothing asks one group to describe its own pixels
rather than the whole image (benchmarks/emergence.md, "Measuring locality"). In a mosaic, the
embedding of tile t is the mean of the final groups weighted by how many of the tile's patches
each group took (the assignment actually used, so gradients reach the grouping too); it can only
match tile t's caption and not its neighbours' when groups hold the content of their own patches.
The same idea drives MixReorg (Cai et al., ICCV 2023), which mixes patches rather than tiles.

A random cyclic shift of each mosaic (whole patches, wrapping around) moves the tile borders, so
that groups cannot find tiles by position alone.

Ordering: the last `num_mosaic_examples` examples of a batch are tiled, `tiles` consecutive
examples per mosaic, row-major; their captions stay where they are, and the tile embeddings come
back in the same order, so the contrastive losses need no change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

# A mosaic group speaks for a tile in the best-group losses when this share of its patches lies
# inside the tile (`tile_groups`); the default of `config.loss.mosaic.min_tile_share`.
DEFAULT_MIN_TILE_SHARE = 0.9


def min_tile_share(mosaic: ml_collections.ConfigDict) -> float:
  """`mosaic.min_tile_share`, or its default for configs written before the option existed."""
  return float(mosaic.get('min_tile_share', DEFAULT_MIN_TILE_SHARE))


def tiles_per_mosaic(grid) -> int:
  rows, cols = (int(g) for g in grid)
  return rows * cols


def validate(mosaic: ml_collections.ConfigDict, batch_size: int) -> None:
  """Raises ValueError for settings that cannot build at least one mosaic of this batch."""
  fraction = float(mosaic.fraction)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'loss.mosaic.fraction must be in [0, 1], got {fraction}')
  if len(mosaic.grid) != 2 or min(int(g) for g in mosaic.grid) < 1:
    raise ValueError(f'loss.mosaic.grid must be (rows, cols) >= 1, got {tuple(mosaic.grid)}')
  share = min_tile_share(mosaic)
  if not 0.5 < share <= 1.0:
    raise ValueError(f'loss.mosaic.min_tile_share must be in (0.5, 1], got {share}')
  tiles = tiles_per_mosaic(mosaic.grid)
  if fraction > 0 and tiles < 2:
    raise ValueError('loss.mosaic.grid must hold at least 2 tiles')
  if fraction > 0 and num_mosaic_examples(batch_size, mosaic) == 0:
    raise ValueError(f'loss.mosaic.fraction={fraction} of a (micro-)batch of {batch_size} '
                     f'examples makes no mosaic of {tiles} tiles')


def num_mosaic_examples(batch_size: int, mosaic: ml_collections.ConfigDict) -> int:
  """How many examples of a batch of `batch_size` go into mosaics (a multiple of the tiles)."""
  tiles = tiles_per_mosaic(mosaic.grid)
  return int(float(mosaic.fraction) * batch_size) // tiles * tiles


def build_mosaics(images: jnp.ndarray, grid: tuple[int, int], patch_size: int,
                  shifts: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Tiles images into mosaics and marks which patches belong to which tile.

  Args:
    images: [M * T, H, W, 3], T = rows * cols consecutive images per mosaic (row-major).
    grid: (rows, cols).
    patch_size: the model's patch size; H and W must be multiples of it.
    shifts: int [M, 2] cyclic shift of each mosaic in patches (down, right), or None.
  Returns:
    mosaics [M, rows * H, cols * W, 3] and regions [M, (rows*H/p) * (cols*W/p), T] float32 one-hot
    (patch -> tile), patches in row-major order as the image encoder flattens them.
  """
  rows, cols = grid
  tiles = rows * cols
  n, h, w, c = images.shape
  if n % tiles:
    raise ValueError(f'{n} images do not fill mosaics of {tiles} tiles')
  if h % patch_size or w % patch_size:
    raise ValueError(f'image size {h}x{w} is not a multiple of the patch size {patch_size}')
  m = n // tiles
  mosaics = images.reshape(m, rows, cols, h, w, c).transpose(0, 1, 3, 2, 4, 5)
  mosaics = mosaics.reshape(m, rows * h, cols * w, c)
  ph, pw = h // patch_size, w // patch_size
  tile_of_patch = jnp.arange(tiles).reshape(rows, 1, cols, 1)
  tile_of_patch = jnp.broadcast_to(tile_of_patch, (rows, ph, cols, pw)).reshape(rows * ph,
                                                                               cols * pw)
  tile_of_patch = jnp.broadcast_to(tile_of_patch, (m,) + tile_of_patch.shape)
  if shifts is not None:
    roll = jax.vmap(lambda x, s: jnp.roll(x, (s[0], s[1]), axis=(0, 1)))
    mosaics = roll(mosaics, shifts * patch_size)
    tile_of_patch = roll(tile_of_patch, shifts)
  regions = jax.nn.one_hot(tile_of_patch.reshape(m, -1), tiles, dtype=jnp.float32)
  return mosaics, regions


def random_shifts(rng: jax.Array, num_mosaics: int, grid: tuple[int, int],
                  patch_grid: tuple[int, int]) -> jnp.ndarray:
  """int32 [M, 2]: uniform cyclic shifts over the whole mosaic, in patches.

  patch_grid: (h, w) patches of one tile.
  """
  limits = jnp.array([grid[0] * patch_grid[0], grid[1] * patch_grid[1]], jnp.int32)
  return jax.random.randint(rng, (num_mosaics, 2), 0, limits)


def tile_counts(regions: jnp.ndarray, patch_to_token: jnp.ndarray) -> jnp.ndarray:
  """How many patches of each region every token holds.

  Args:
    regions: [B, N, T] patch -> region weights; patch_to_token: [B, N, S] patch -> token map.
  Returns:
    [B, T, S] float32 (fractional where the maps are soft).
  """
  return jnp.einsum('bnt,bns->bts', regions.astype(jnp.float32),
                    patch_to_token.astype(jnp.float32), precision='highest')


def region_pool(tokens: jnp.ndarray, regions: jnp.ndarray,
                patch_to_token: jnp.ndarray | None = None) -> jnp.ndarray:
  """Mean of the tokens covering each region, weighted by their share of the region's patches.

  Counting each group once per tile instead (its fraction inside the tile, normalised over the
  groups present) was tried: a group with almost no patches then divides by almost nothing, and
  the straight-through gradients reached norms of 1e5-1e7 and stopped training (benchmarks/
  emergence.md, "The mosaic objective").

  Args:
    tokens: [B, S, C] final tokens (groups, or patches for a model without grouping).
    regions: [B, N, T] patch -> region weights (one-hot rows from `build_mosaics`).
    patch_to_token: [B, N, S] patch -> token map (composed assignments, rows summing to 1), or
      None when the tokens are the N patches themselves.
  Returns:
    [B, T, C] float32.
  """
  if patch_to_token is None:
    weights = jnp.swapaxes(regions.astype(jnp.float32), 1, 2)  # [B, T, N]
  else:
    weights = tile_counts(regions, patch_to_token)
  weights = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-6)
  return jnp.einsum('bts,bsc->btc', weights, tokens.astype(jnp.float32), precision='highest')


def tile_groups(regions: jnp.ndarray, patch_to_token: jnp.ndarray, min_share: float
                ) -> jnp.ndarray:
  """Which final groups of a mosaic may speak for each tile in the best-group losses.

  A group belongs to tile t when at least `min_share` of its patches lie in t; a group spread
  over several tiles (typically a background running across them) then belongs to none, so a
  caption can only be matched by groups that hold its own tile's pixels. A tile left without
  any group keeps the group with the largest share of it, so every tile has a candidate.

  Args:
    regions: [M, N, T] patch -> tile one-hot (`build_mosaics`).
    patch_to_token: [M, N, S] hard patch -> final group map (rows one-hot).
    min_share: in (0.5, 1]; above one half, a group belongs to at most one tile.
  Returns:
    bool [M, T, S].
  """
  counts = tile_counts(regions, patch_to_token)  # patches of group s in tile t
  share = counts / jnp.maximum(jnp.sum(counts, axis=1, keepdims=True), 1.0)
  owned = (share >= min_share) & (counts > 0)
  fallback = jax.nn.one_hot(jnp.argmax(counts, axis=-1), counts.shape[-1], dtype=bool)
  return owned | (fallback & ~jnp.any(owned, axis=-1, keepdims=True))
