"""Writes COCO-Object label maps from COCO instance annotations.

Usage::

  python -m evaluation.convert_coco_object --instances annotations/instances_val2017.json \
      --images val2017 --output coco_object

produces ``coco_object/annotations/val2017/<stem>_instanceTrainIds.png`` (8-bit grey PNGs) and, by
default, symlinks every image into ``coco_object/images/val2017/`` so that
:class:`evaluation.datasets.COCOObjectDataset` can read ``coco_object`` directly. Every image listed
in the JSON gets a label map, including images without annotations (all background).

Label values
------------
0 = background (everything that is not a thing instance: stuff and unannotated pixels), 1..K = the
JSON's categories sorted by category id (for COCO 2017 the 80 thing classes in the order of
``evaluation.class_names.COCO_OBJECT_CLASSES``), 255 = ignore (only produced with ``--crowd
ignore``).

Overlaps (``--overlap``)
------------------------
Instance masks can overlap. Masks are painted one after another, a later one overwriting:
``area`` (default) paints in decreasing mask area, ties by increasing annotation id, so the smaller
object wins an overlap (small objects usually lie in front of large ones, e.g. a cup on a table);
``id`` paints in increasing annotation id, the last annotation winning. Both are deterministic.

Crowd regions (``--crowd``)
---------------------------
``background`` (default) leaves ``iscrowd=1`` regions as background, as label maps built with the
COCO-Stuff tools' default (crowd annotations excluded, the pixels unlabeled) and then mapped by
GroupViT's conversion (unlabeled -> background) do; ``ignore`` writes 255 there (excluded from the
metrics); ``label`` gives them their category. Crowd regions are painted before all non-crowd
instances, so a non-crowd instance always wins an overlap with a crowd region.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from evaluation.class_names import COCO_OBJECT_CLASSES
from evaluation.datasets import COCO_LABEL_SUFFIX

__all__ = ['annotation_mask', 'category_label_map', 'instances_to_label', 'convert', 'main']

CROWD_CHOICES = ('background', 'ignore', 'label')
OVERLAP_CHOICES = ('area', 'id')
IMAGE_MODES = ('symlink', 'copy', 'none')


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
  """Decodes one COCO ``segmentation`` (polygons, uncompressed or compressed RLE) to bool ``[H,
  W]``."""
  from pycocotools import mask as mask_utils

  if isinstance(segmentation, list):
    if not segmentation:
      return np.zeros((height, width), bool)
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation, dict) and isinstance(segmentation.get('counts'), list):
    rle = mask_utils.frPyObjects(segmentation, height, width)
  elif isinstance(segmentation, dict):
    rle = dict(segmentation)
    if isinstance(rle['counts'], str):
      rle['counts'] = rle['counts'].encode('ascii')
  else:
    raise ValueError(f'unsupported segmentation of type {type(segmentation).__name__}')
  with warnings.catch_warnings():
    # pycocotools' Cython decoder trips numpy 2's __array__(copy=...) deprecation; harmless here.
    warnings.simplefilter('ignore', DeprecationWarning)
    m = mask_utils.decode(rle)
  if m.shape[:2] != (height, width):
    raise ValueError(f'segmentation decodes to {m.shape[:2]}, image is {(height, width)}')
  return m.astype(bool)


def category_label_map(categories: Sequence[dict]) -> dict[int, int]:
  """``{category_id: label}`` with labels 1..K in increasing category-id order."""
  ids = sorted(int(c['id']) for c in categories)
  if len(ids) > 254:
    raise ValueError(f'{len(ids)} categories do not fit in 8-bit labels (1..254)')
  return {cid: i + 1 for i, cid in enumerate(ids)}


def instances_to_label(
  annotations: Sequence[dict],
  height: int,
  width: int,
  cat_to_label: dict[int, int],
  crowd: str = 'background',
  overlap: str = 'area',
) -> np.ndarray:
  """Label map of one image from its instance annotations (rules in the module docstring).

  Args:
    annotations: the image's COCO annotation dicts.
    height, width: image size.
    cat_to_label: ``{category_id: label}`` (:func:`category_label_map`).
    crowd: ``background``, ``ignore`` or ``label``.
    overlap: ``area`` or ``id``.

  Returns:
    uint8 ``[height, width]``.
  """
  if crowd not in CROWD_CHOICES:
    raise ValueError(f'crowd must be one of {CROWD_CHOICES}, got {crowd!r}')
  if overlap not in OVERLAP_CHOICES:
    raise ValueError(f'overlap must be one of {OVERLAP_CHOICES}, got {overlap!r}')
  label = np.zeros((height, width), np.uint8)
  decoded = []
  for ann in annotations:
    is_crowd = bool(ann.get('iscrowd', 0))
    if is_crowd and crowd == 'background':
      continue
    cid = int(ann['category_id'])
    if cid not in cat_to_label:
      raise ValueError(f'annotation {ann.get("id")} has unknown category id {cid}')
    m = annotation_mask(ann['segmentation'], height, width)
    value = 255 if (is_crowd and crowd == 'ignore') else cat_to_label[cid]
    area = int(m.sum())
    ann_id = int(ann.get('id', 0))
    # Sort key: crowd first; then by the overlap rule; later entries overwrite earlier ones.
    key = (
      (0 if is_crowd else 1, -area, ann_id) if overlap == 'area' else (0 if is_crowd else 1, ann_id)
    )
    decoded.append((key, m, value))
  decoded.sort(key=lambda t: t[0])
  for _, m, value in decoded:
    label[m] = value
  return label


def _split_from_instances(path: Path) -> Optional[str]:
  m = re.match(r'instances_(.+)\.json$', path.name)
  return m.group(1) if m else None


def convert(
  instances: os.PathLike,
  output: os.PathLike,
  images: Optional[os.PathLike] = None,
  split: Optional[str] = None,
  image_mode: str = 'symlink',
  crowd: str = 'background',
  overlap: str = 'area',
  verbose: bool = True,
) -> int:
  """Writes ``output/annotations/{split}/<stem>_instanceTrainIds.png`` for every image of the JSON.

  Args:
    instances: COCO ``instances_*.json``.
    output: output root (gets ``annotations/{split}`` and, unless ``image_mode='none'``,
      ``images/{split}``).
    images: folder holding the split's images (required unless ``image_mode='none'``).
    split: split folder name (default: from ``instances_<split>.json``).
    image_mode: ``symlink`` / ``copy`` images into ``output/images/{split}``, or ``none``.
    crowd, overlap: see the module docstring.

  Returns:
    number of label maps written.
  """
  instances = Path(instances)
  if not instances.is_file():
    raise FileNotFoundError(f'instances file not found: {instances}')
  split = split or _split_from_instances(instances)
  if not split:
    raise ValueError(f'cannot infer the split from {instances.name}; pass --split')
  if image_mode not in IMAGE_MODES:
    raise ValueError(f'image_mode must be one of {IMAGE_MODES}, got {image_mode!r}')
  with open(instances, encoding='utf-8') as f:
    data = json.load(f)
  cats = data.get('categories', [])
  if not cats:
    raise ValueError(f'{instances} has no categories')
  cat_to_label = category_label_map(cats)
  names = [c['name'] for c in sorted(cats, key=lambda c: int(c['id']))]
  if tuple(names) != tuple(COCO_OBJECT_CLASSES[1:]) and verbose:
    print(
      f'note: the {len(names)} categories differ from the 80 COCO thing classes; labels follow the '
      "JSON's category-id order",
      file=sys.stderr,
    )

  output = Path(output)
  ann_dir = output / 'annotations' / split
  ann_dir.mkdir(parents=True, exist_ok=True)
  img_out = output / 'images' / split
  img_src = Path(images) if images is not None else None
  if image_mode != 'none':
    if img_src is None or not img_src.is_dir():
      raise FileNotFoundError(
        f'image folder not found: {img_src} (pass --images, or --image_mode none)'
      )
    missing = [
      im['file_name'] for im in data.get('images', []) if not (img_src / im['file_name']).is_file()
    ]
    if missing:
      shown = ', '.join(missing[:10]) + (
        f' (+{len(missing) - 10} more)' if len(missing) > 10 else ''
      )
      raise FileNotFoundError(
        f'{len(missing)} images of {instances.name} missing in {img_src}: {shown}'
      )
    same = img_out.exists() and img_out.resolve() == img_src.resolve()
    if not same:
      img_out.mkdir(parents=True, exist_ok=True)
    else:
      image_mode = 'none'

  by_image: dict[int, list[dict]] = {}
  for ann in data.get('annotations', []):
    by_image.setdefault(int(ann['image_id']), []).append(ann)

  count = 0
  image_list = sorted(data.get('images', []), key=lambda im: im['file_name'])
  for im in image_list:
    h, w = int(im['height']), int(im['width'])
    label = instances_to_label(by_image.get(int(im['id']), []), h, w, cat_to_label, crowd, overlap)
    stem = Path(im['file_name']).stem
    Image.fromarray(label).save(ann_dir / f'{stem}{COCO_LABEL_SUFFIX}')
    if image_mode != 'none':
      src = img_src / im['file_name']
      dst = img_out / Path(im['file_name']).name
      if not dst.exists():
        if image_mode == 'symlink':
          os.symlink(src.resolve(), dst)
        else:
          shutil.copy2(src, dst)
    count += 1
    if verbose and count % 500 == 0:
      print(f'{count}/{len(image_list)}', file=sys.stderr)
  if verbose:
    print(f'wrote {count} label maps to {ann_dir}', file=sys.stderr)
  return count


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--instances', required=True, help='COCO instances_<split>.json')
  parser.add_argument('--images', default=None, help="folder with the split's images")
  parser.add_argument('--output', required=True, help='output root')
  parser.add_argument(
    '--split', default=None, help='split folder name (default: from the JSON file name)'
  )
  parser.add_argument('--image_mode', choices=IMAGE_MODES, default='symlink')
  parser.add_argument('--crowd', choices=CROWD_CHOICES, default='background')
  parser.add_argument('--overlap', choices=OVERLAP_CHOICES, default='area')
  parser.add_argument('--quiet', action='store_true')
  args = parser.parse_args(argv)
  try:
    convert(
      args.instances,
      args.output,
      args.images,
      args.split,
      args.image_mode,
      args.crowd,
      args.overlap,
      verbose=not args.quiet,
    )
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
