"""Readers of the zero-shot segmentation benchmarks, without mmsegmentation.

Each reader is a sequence of :class:`Sample` (``len()``, indexing, iteration) with
``image``: uint8 ``[H, W, 3]`` RGB and ``label``: integer ``[H, W]`` class ids (uint8, or int32 for
16-bit label PNGs), ``ignore_index`` (255) marking pixels excluded from the metrics.

Layouts
-------
* VOC 2012 (:class:`VOCDataset`): ``VOCdevkit/VOC2012`` (or that folder itself, or its parent
  ``VOCdevkit``) with ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs: the palette
  *index* is the class id, 255 = boundary/ignore) and ``ImageSets/Segmentation/{split}.txt``.
* PASCAL Context (:class:`PascalContextDataset`), mmsegmentation-converted: ``VOC2010/JPEGImages``,
  ``VOC2010/SegmentationClassContext/*.png`` (0 = background, 1..59, 255 = ignore; the 60-class
  setting has no zero-label reduction) and ``VOC2010/ImageSets/SegmentationContext/{split}.txt``.
* COCO-Object (:class:`COCOObjectDataset`), mmsegmentation-style: ``images/{split}/*.jpg`` and
  ``annotations/{split}/<stem>_instanceTrainIds.png`` (0 = background, 1..80 = things); see
  :mod:`evaluation.convert_coco_object` to produce the labels from COCO instance JSON.
* A generic folder (:class:`FolderDataset`): ``images/*.{jpg,jpeg,png}``, ``labels/<stem>.png``,
  ``classes.txt`` (one class name per line, line ``i`` = label value ``i``).

Images are decoded with Pillow and converted to RGB whatever their mode (grayscale, CMYK and palette
JPEGs exist in VOC). EXIF orientation is deliberately *not* applied: the annotations of these
benchmarks are aligned with the stored pixel grid. A label whose size differs from its image raises
``ValueError`` naming both files.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from evaluation import class_names as cn

__all__ = [
  'Sample',
  'SegmentationDataset',
  'VOCDataset',
  'PascalContextDataset',
  'COCOObjectDataset',
  'FolderDataset',
  'build_dataset',
  'read_image',
  'read_label',
  'read_class_names',
]

PathLike = Union[str, os.PathLike]
_IMAGE_EXTS = ('.jpg', '.jpeg', '.png')
_MAX_LISTED = 10


@dataclasses.dataclass
class Sample:
  """One evaluation example.

  Attributes:
    name: file stem (e.g. ``2007_000129``), unique within the dataset.
    image: uint8 ``[H, W, 3]`` RGB.
    label: integer ``[H, W]`` class ids (uint8 or int32), or ``None`` for an unlabelled folder.
  """

  name: str
  image: np.ndarray
  label: Optional[np.ndarray]


def read_image(path: PathLike) -> np.ndarray:
  """Decodes an image file to uint8 ``[H, W, 3]`` RGB (any Pillow mode is converted; no EXIF
  rotation)."""
  with Image.open(path) as img:
    if img.mode != 'RGB':
      img = img.convert('RGB')
    return np.asarray(img, dtype=np.uint8).copy()


def read_label(path: PathLike) -> np.ndarray:
  """Reads a label PNG as class ids ``[H, W]``.

  Palette (``P``) PNGs give their palette *indices*, grey (``L``) PNGs their values, 16-bit PNGs
  int32 values. An RGB(A) label is accepted only when its channels are identical (a grey map saved
  as RGB); a colour-coded map raises ``ValueError`` since colours are not class ids.

  Returns:
    uint8 ``[H, W]`` (int32 for 16-bit/32-bit inputs).
  """
  with Image.open(path) as img:
    mode = img.mode
    if mode in ('P', 'L'):
      return np.asarray(img, dtype=np.uint8).copy()
    if mode == '1':
      return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith('I'):
      return np.asarray(img).astype(np.int32)
    if mode in ('RGB', 'RGBA'):
      arr = np.asarray(img)[..., :3]
      if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        return arr[..., 0].copy()
      raise ValueError(
        f'label {path} is a colour {mode} image; expected a palette (P) or grey (L) PNG whose '
        'pixel values/palette indices are class ids'
      )
    raise ValueError(f'label {path} has unsupported PIL mode {mode!r}')


def _image_size(path: PathLike) -> tuple[int, int]:
  with Image.open(path) as img:
    return img.size  # (W, H)


def _listed(items: Sequence[str]) -> str:
  shown = ', '.join(items[:_MAX_LISTED])
  more = f' (+{len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else ''
  return shown + more


def _require_dir(path: Path, what: str) -> Path:
  if not path.is_dir():
    raise FileNotFoundError(f'{what} folder not found: {path}')
  return path


def _read_split(path: Path, split: str) -> list[str]:
  if not path.is_file():
    available = sorted(p.stem for p in path.parent.glob('*.txt')) if path.parent.is_dir() else []
    raise FileNotFoundError(
      f'split file for split {split!r} not found: {path}'
      + (f' (available splits: {", ".join(available)})' if available else '')
    )
  names = [line.strip().split()[0] for line in path.read_text().splitlines() if line.strip()]
  if not names:
    raise ValueError(f'split file {path} lists no images')
  return names


def _files_by_name(folder: Path) -> set[str]:
  return {e.name for e in os.scandir(folder) if e.is_file() or e.is_symlink()}


class SampleSequence:
  """Sequence protocol over ``self.names``: subclasses implement ``_load(index) -> Sample``."""

  names: list[str]

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index: int) -> Sample:
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(index)
    return self._load(index)

  def __iter__(self) -> Iterator[Sample]:
    for i in range(len(self)):
      yield self[i]

  def _load(self, index: int) -> Sample:
    raise NotImplementedError


class SegmentationDataset(SampleSequence):
  """A list of (image file, label file) pairs read lazily; a sequence of :class:`Sample`.

  Attributes:
    names: ``N`` sample names (file stems).
    image_paths: ``N`` image paths.
    label_paths: ``N`` label paths, or ``None`` when the dataset has no labels.
    class_names: class names, index = label value.
    ignore_index: label value to ignore in metrics.
  """

  def __init__(
    self,
    names: Sequence[str],
    image_paths: Sequence[Path],
    label_paths: Optional[Sequence[Path]],
    class_names: Sequence[str],
    ignore_index: int = 255,
    spec: Optional[cn.DatasetSpec] = None,
  ):
    if label_paths is not None and len(label_paths) != len(image_paths):
      raise ValueError('image and label lists differ in length')
    self.names = list(names)
    self.image_paths = [Path(p) for p in image_paths]
    self.label_paths = None if label_paths is None else [Path(p) for p in label_paths]
    self.class_names = tuple(class_names)
    self.ignore_index = ignore_index
    self.spec = spec

  @staticmethod
  def _check_present(names: Sequence[str], folder: Path, suffix: str, what: str) -> list[Path]:
    present = _files_by_name(folder)
    missing = [n for n in names if n + suffix not in present]
    if missing:
      raise FileNotFoundError(
        f'{len(missing)} of {len(names)} {what} missing in {folder} (expected <name>{suffix}): '
        f'{_listed(missing)}'
      )
    return [folder / (n + suffix) for n in names]

  def _load(self, index: int) -> Sample:
    image_path = self.image_paths[index]
    image = read_image(image_path)
    label = None
    if self.label_paths is not None:
      label_path = self.label_paths[index]
      label = read_label(label_path)
      if label.shape != image.shape[:2]:
        raise ValueError(
          f'{self.names[index]}: label {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but '
          f'image {image_path} is {image.shape[1]}x{image.shape[0]}'
        )
    return Sample(self.names[index], image, label)

  def check_sizes(self) -> None:
    """Compares every image's size with its label's from the file headers (no decoding).

    Raises:
      ValueError: listing every mismatched sample.
    """
    if self.label_paths is None:
      return
    bad = []
    for name, ip, lp in zip(self.names, self.image_paths, self.label_paths):
      isz, lsz = _image_size(ip), _image_size(lp)
      if isz != lsz:
        bad.append(f'{name} (image {ip} {isz[0]}x{isz[1]}, label {lp} {lsz[0]}x{lsz[1]})')
    if bad:
      raise ValueError(f'{len(bad)} label(s) differ in size from their image: {_listed(bad)}')

  def __repr__(self) -> str:
    return f'{type(self).__name__}({len(self)} samples, {len(self.class_names)} classes)'


def _find_root(root: Path, subdirs: Sequence[str], marker: str, what: str) -> Path:
  """First of ``root/<sub>`` (``''`` = root itself) that contains folder ``marker``."""
  root = Path(root)
  tried = []
  for sub in subdirs:
    cand = root / sub if sub else root
    tried.append(str(cand))
    if (cand / marker).is_dir():
      return cand
  raise FileNotFoundError(
    f'no {what} found: none of {", ".join(tried)} contains a {marker}/ folder'
  )


class VOCDataset(SegmentationDataset):
  """PASCAL VOC 2012 segmentation (21 classes, background = 0, 255 = ignore).

  Args:
    root: ``VOCdevkit``, ``VOCdevkit/VOC2012`` or any folder directly containing ``JPEGImages``.
    split: name of ``ImageSets/Segmentation/{split}.txt`` (``val``, ``train``, ``trainval``).
  """

  def __init__(self, root: PathLike, split: str = 'val'):
    base = _find_root(
      Path(root), ('', 'VOC2012', 'VOCdevkit/VOC2012'), 'JPEGImages', 'VOC 2012 folder'
    )
    img_dir = base / 'JPEGImages'
    ann_dir = _require_dir(base / 'SegmentationClass', 'VOC label (SegmentationClass)')
    names = _read_split(base / 'ImageSets' / 'Segmentation' / f'{split}.txt', split)
    images = self._check_present(names, img_dir, '.jpg', 'images')
    labels = self._check_present(names, ann_dir, '.png', 'labels')
    spec = cn.get_spec('voc')
    super().__init__(names, images, labels, spec.class_names, spec.ignore_index, spec)
    self.root, self.split = base, split


class PascalContextDataset(SegmentationDataset):
  """PASCAL Context, 60-class setting, in mmsegmentation's converted layout.

  Labels are read as stored: 0 = background, 1..59 = ``CONTEXT_CLASSES[1:]``, 255 = ignore (no
  zero-label reduction: background is a scored class here, as in GroupViT's evaluation).

  Args:
    root: ``VOCdevkit``, ``VOCdevkit/VOC2010`` or any folder directly containing ``JPEGImages`` and
      ``SegmentationClassContext``.
    split: name of ``ImageSets/SegmentationContext/{split}.txt`` (``train`` or ``val``).
  """

  def __init__(self, root: PathLike, split: str = 'val'):
    base = _find_root(
      Path(root),
      ('', 'VOC2010', 'VOCdevkit/VOC2010'),
      'SegmentationClassContext',
      'PASCAL Context folder (mmseg-converted)',
    )
    img_dir = _require_dir(base / 'JPEGImages', 'PASCAL Context image (JPEGImages)')
    ann_dir = base / 'SegmentationClassContext'
    names = _read_split(base / 'ImageSets' / 'SegmentationContext' / f'{split}.txt', split)
    images = self._check_present(names, img_dir, '.jpg', 'images')
    labels = self._check_present(names, ann_dir, '.png', 'labels')
    spec = cn.get_spec('context')
    super().__init__(names, images, labels, spec.class_names, spec.ignore_index, spec)
    self.root, self.split = base, split


COCO_LABEL_SUFFIX = '_instanceTrainIds.png'


class COCOObjectDataset(SegmentationDataset):
  """COCO-Object (background + 80 things), mmsegmentation-style layout.

  Every ``images/{split}/*.jpg`` must have ``annotations/{split}/<stem>_instanceTrainIds.png``.

  Args:
    root: folder containing ``images/`` and ``annotations/``.
    split: sub-folder name, e.g. ``val2017``.
  """

  def __init__(self, root: PathLike, split: str = 'val2017'):
    root = Path(root)
    img_dir = _require_dir(root / 'images' / split, 'COCO-Object image')
    ann_dir = _require_dir(root / 'annotations' / split, 'COCO-Object label')
    names = sorted(Path(n).stem for n in _files_by_name(img_dir) if n.lower().endswith('.jpg'))
    if not names:
      raise FileNotFoundError(f'no .jpg images in {img_dir}')
    images = self._check_present(names, img_dir, '.jpg', 'images')
    labels = self._check_present(names, ann_dir, COCO_LABEL_SUFFIX, 'labels')
    spec = cn.get_spec('coco_object')
    super().__init__(names, images, labels, spec.class_names, spec.ignore_index, spec)
    self.root, self.split = root, split


def read_class_names(path: PathLike) -> list[str]:
  """Class names from a text file, one per line (blank lines skipped, surrounding spaces
  stripped)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'class-name file not found: {path}')
  names = [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
  if not names:
    raise ValueError(f'class-name file {path} is empty')
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    raise ValueError(f'class-name file {path} repeats: {", ".join(dup)}')
  return names


class FolderDataset(SegmentationDataset):
  """A plain folder: ``images/*.{jpg,jpeg,png}``, ``labels/<stem>.png``, ``classes.txt``.

  Args:
    root: the folder.
    class_names: overrides ``classes.txt`` when given.
    require_labels: if ``False`` and ``labels/`` is absent, samples have ``label=None`` (inference
      only). When ``labels/`` exists every image must have a label.
    ignore_index: label value to ignore.
  """

  def __init__(
    self,
    root: PathLike,
    class_names: Optional[Sequence[str]] = None,
    require_labels: bool = True,
    ignore_index: int = 255,
  ):
    root = _require_dir(Path(root), 'dataset')
    img_dir = _require_dir(root / 'images', 'image')
    if class_names is None:
      class_names = read_class_names(root / 'classes.txt')
    by_stem: dict[str, str] = {}
    dups = []
    for fname in sorted(_files_by_name(img_dir)):
      stem, ext = os.path.splitext(fname)
      if ext.lower() not in _IMAGE_EXTS:
        continue
      if stem in by_stem:
        dups.append(f'{by_stem[stem]} / {fname}')
      by_stem[stem] = fname
    if dups:
      raise ValueError(f'several images share a file stem in {img_dir}: {_listed(dups)}')
    if not by_stem:
      raise FileNotFoundError(f'no images ({", ".join(_IMAGE_EXTS)}) in {img_dir}')
    names = sorted(by_stem)
    images = [img_dir / by_stem[n] for n in names]
    label_dir = root / 'labels'
    if label_dir.is_dir():
      labels = self._check_present(names, label_dir, '.png', 'labels')
    elif require_labels:
      raise FileNotFoundError(
        f'label folder not found: {label_dir} (pass require_labels=False to read images only)'
      )
    else:
      labels = None
    super().__init__(names, images, labels, class_names, ignore_index)
    self.root = root


def build_dataset(
  name: str, root: PathLike, split: Optional[str] = None, **kwargs
) -> SegmentationDataset:
  """Reader by dataset name.

  Args:
    name: ``voc``, ``context``, ``coco_object`` (aliases of :func:`evaluation.class_names.get_spec`)
      or
      ``folder``.
    root: dataset root as each reader documents.
    split: split name (defaults: ``val`` for VOC/Context, ``val2017`` for COCO-Object; ignored for a
      folder).
    **kwargs: passed to the reader (e.g. ``class_names`` for a folder).
  """
  if name.strip().lower() == 'folder':
    return FolderDataset(root, **kwargs)
  canonical = cn.get_spec(name).name
  if canonical == 'voc':
    return VOCDataset(root, split or 'val', **kwargs)
  if canonical == 'context':
    return PascalContextDataset(root, split or 'val', **kwargs)
  return COCOObjectDataset(root, split or 'val2017', **kwargs)
