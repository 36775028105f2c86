"""Spherical k-means on patch features: the grouping step of spatially-consistent grouping (SCG).

Every function is pure JAX with fixed shapes (M clusters, T iterations), so a batch of images runs
as one jitted call on the accelerator. The algorithm, which `kmeans_reference` repeats in float64
NumPy:

* Features are L2-normalised; similarity is the cosine (STEGO's choice for DINO features).
* Initialisation (deterministic, no random draw): the first centre is the patch most similar to
  the image's mean feature; each next centre is the patch whose best similarity to the centres
  chosen so far is lowest (farthest-point / maximin seeding). Ties go to the lowest patch index.
* T Lloyd iterations: each patch joins its most similar centre (lowest index on ties); each
  centre becomes the L2-normalised sum of its patches. A centre that received no patch keeps its
  previous value (so it is still a valid unit vector and stays empty or re-captures patches
  later); `valid` masks padding patches out of both steps.

Dataset-level centroids (`fit_centroids`) run the same algorithm over features pooled from many
images; `assign` then gives every image's patches the id of the nearest shared centroid, so
"region type k" means the same thing in every image.

High-resolution masks: for unit centroids c_k the nearest centroid of any feature f is
argmax_k <f, c_k>, and that is linear in f. Bilinearly upsampling the normalised features and
assigning them is therefore exactly argmax_k of the bilinearly upsampled score maps <f, c_k>
(`upsample_assign`): the same masks, at M channels per pixel instead of C.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """[..., C] -> [..., C] float32 with unit norm (zero rows stay zero)."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _init_centres(x: jnp.ndarray, valid: jnp.ndarray, num_clusters: int) -> jnp.ndarray:
  """Maximin seeding. x [N, C] unit rows, valid bool [N] -> centres [M, C]."""
  mean = jnp.sum(jnp.where(valid[:, None], x, 0.0), axis=0)
  sim_mean = jnp.where(valid, jnp.einsum('nc,c->n', x, mean, precision=HIGHEST), -jnp.inf)
  first = jnp.argmax(sim_mean)
  centres = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
  best = jnp.where(valid, jnp.einsum('nc,c->n', x, x[first], precision=HIGHEST), jnp.inf)

  def body(k, carry):
    centres, best = carry
    pick = jnp.argmin(best)
    centres = centres.at[k].set(x[pick])
    sim = jnp.einsum('nc,c->n', x, x[pick], precision=HIGHEST)
    best = jnp.where(valid, jnp.maximum(best, sim), jnp.inf)
    return centres, best

  centres, _ = jax.lax.fori_loop(1, num_clusters, body, (centres, best))
  return centres


def _lloyd(
  x: jnp.ndarray, valid: jnp.ndarray, centres: jnp.ndarray, iters: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """x [N, C], valid [N], centres [M, C] -> (centres [M, C], assignment int32 [N])."""
  m = centres.shape[0]

  def assign_to(c):
    return jnp.argmax(jnp.einsum('nc,mc->nm', x, c, precision=HIGHEST), axis=-1).astype(jnp.int32)

  def body(_, c):
    ids = assign_to(c)
    onehot = jax.nn.one_hot(ids, m, dtype=x.dtype) * valid[:, None]
    sums = jnp.einsum('nm,nc->mc', onehot, x, precision=HIGHEST)
    counts = jnp.sum(onehot, axis=0)
    return jnp.where(counts[:, None] > 0, l2_normalize(sums), c)

  centres = jax.lax.fori_loop(0, iters, body, centres)
  return centres, assign_to(centres)


def kmeans(
  features: jnp.ndarray,
  num_clusters: int,
  iters: int = 20,
  valid: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-image spherical k-means (see the module docstring for the exact algorithm).

  Args:
    features: [B, N, C] patch features (any scale: normalised here).
    num_clusters: M (at most N).
    iters: Lloyd iterations T.
    valid: optional bool [B, N]; False rows (padding) join no cluster.
  Returns:
    (centroids [B, M, C] float32 unit rows, assignment int32 [B, N]; padding rows get the id of
    their nearest centre too, but never moved one).
  """
  if features.ndim != 3:
    raise ValueError(f'features must be [B, N, C], got {features.shape}')
  if not 1 <= num_clusters <= features.shape[1]:
    raise ValueError(f'num_clusters must be in [1, {features.shape[1]}], got {num_clusters}')
  x = l2_normalize(features)
  if valid is None:
    valid = jnp.ones(x.shape[:2], bool)

  def one(xi, vi):
    return _lloyd(xi, vi, _init_centres(xi, vi, num_clusters), iters)

  return jax.vmap(one)(x, valid)


def assign(features: jnp.ndarray, centroids: jnp.ndarray) -> jnp.ndarray:
  """Nearest centroid by cosine: features [B, N, C], centroids [M, C] or [B, M, C] -> int32
  [B, N]."""
  return jnp.argmax(scores(features, centroids), axis=-1).astype(jnp.int32)


def scores(features: jnp.ndarray, centroids: jnp.ndarray) -> jnp.ndarray:
  """Cosine of every patch to every centroid: [B, ..., C] x ([M, C] or [B, M, C]) -> [B, ..., M].

  Centroids are normalised here; features too (the argmax does not depend on it, the values do).
  """
  x = l2_normalize(features)
  c = l2_normalize(centroids)
  if c.ndim == 2:
    return jnp.einsum('b...c,mc->b...m', x, c, precision=HIGHEST)
  return jnp.einsum('b...c,bmc->b...m', x, c, precision=HIGHEST)


def upsample_assign(score_maps: jnp.ndarray, rh: jnp.ndarray, rw: jnp.ndarray) -> jnp.ndarray:
  """High-resolution region ids from low-resolution score maps.

  Args:
    score_maps: [B, h, w, M] cosines of patches to centroids (`scores`).
    rh: [Ho, h] or [B, Ho, h] row resize matrix (bilinear: `ops.resize.resize_matrix`).
    rw: [Wo, w] or [B, Wo, w] column resize matrix.
  Returns:
    int32 [B, Ho, Wo]: equal to assigning the bilinearly upsampled normalised features.
  """
  eq_h = 'oh,bhwm->bowm' if rh.ndim == 2 else 'boh,bhwm->bowm'
  eq_w = 'pw,bowm->bopm' if rw.ndim == 2 else 'bpw,bowm->bopm'
  maps = jnp.einsum(eq_h, rh, score_maps, precision=HIGHEST)
  maps = jnp.einsum(eq_w, rw, maps, precision=HIGHEST)
  return jnp.argmax(maps, axis=-1).astype(jnp.int32)


def fit_centroids(
  features: np.ndarray | jnp.ndarray, num_clusters: int, iters: int = 50
) -> np.ndarray:
  """Dataset-level centroids: the same algorithm over pooled patch features.

  Args:
    features: [P, C] patch features gathered from many images (e.g. every patch of a few hundred
      images, or a uniform sample of them).
    num_clusters: M.
    iters: Lloyd iterations.
  Returns:
    float32 [M, C] unit centroids.
  """
  x = jnp.asarray(features, jnp.float32)
  if x.ndim != 2 or x.shape[0] < num_clusters:
    raise ValueError(f'features must be [P >= {num_clusters}, C], got {tuple(x.shape)}')
  centres, _ = jax.jit(kmeans, static_argnums=(1, 2))(x[None], num_clusters, iters)
  return np.asarray(centres[0])


def kmeans_reference(
  features: np.ndarray, num_clusters: int, iters: int = 20
) -> tuple[np.ndarray, np.ndarray]:
  """float64 NumPy spherical k-means with the same seeding and updates, for one image.

  features [N, C] -> (centroids [M, C] float64, assignment int64 [N]).
  """
  x = np.asarray(features, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  first = int(np.argmax(x @ x.sum(0)))
  chosen = [first]
  best = x @ x[first]
  for _ in range(1, num_clusters):
    pick = int(np.argmin(best))
    chosen.append(pick)
    best = np.maximum(best, x @ x[pick])
  c = x[chosen].copy()
  for _ in range(iters):
    ids = np.argmax(x @ c.T, axis=1)
    for k in range(num_clusters):
      members = x[ids == k]
      if len(members):
        s = members.sum(0)
        c[k] = s / max(np.linalg.norm(s), 1e-12)
  return c, np.argmax(x @ c.T, axis=1)
