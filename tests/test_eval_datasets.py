"""Tests of evaluation.class_names, evaluation.datasets and evaluation.convert_coco_object."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation import class_names as cn
from evaluation import convert_coco_object as conv
from evaluation import datasets as D

REPO_ROOT = Path(__file__).resolve().parents[1]
VOC_SAMPLE = REPO_ROOT.parent / 'shared' / 'data' / 'voc_sample' / 'VOC2012'


# ----------------------------------------------------------------------------------------- helpers


def _palette():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, size=768).tolist()


def _save_palette_png(arr, path):
  arr = np.ascontiguousarray(arr, dtype=np.uint8)
  img = Image.frombytes('P', (arr.shape[1], arr.shape[0]), arr.tobytes())
  img.putpalette(_palette())
  img.save(path)


def _rgb(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3)).astype(np.uint8)


def _make_voc(root, with_variants=True):
  """VOCdevkit/VOC2012 with an RGB, a grayscale and a CMYK JPEG and palette labels."""
  base = root / 'VOCdevkit' / 'VOC2012'
  (base / 'JPEGImages').mkdir(parents=True)
  (base / 'SegmentationClass').mkdir()
  (base / 'ImageSets' / 'Segmentation').mkdir(parents=True)
  labels = {}
  specs = [
    ('2007_000001', (12, 16), 'RGB'),
    ('2007_000002', (10, 14), 'L'),
    ('2007_000003', (9, 11), 'CMYK'),
  ]
  for i, (name, (h, w), mode) in enumerate(specs):
    img = Image.fromarray(_rgb(h, w, i))
    if with_variants:
      img = img.convert(mode)
    img.save(base / 'JPEGImages' / f'{name}.jpg', quality=95)
    lab = np.zeros((h, w), np.uint8)
    lab[2:6, 3:9] = 3 + i
    lab[0, :] = 255
    _save_palette_png(lab, base / 'SegmentationClass' / f'{name}.png')
    labels[name] = lab
  (base / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('2007_000001\n2007_000002\n\n')
  (base / 'ImageSets' / 'Segmentation' / 'train.txt').write_text('2007_000003\n')
  return base, labels


# ------------------------------------------------------------------------------------- class names


def test_specs():
  voc = cn.get_spec('voc')
  assert voc.num_classes == 21 and voc.class_names[0] == 'background'
  assert voc.class_names[11] == 'diningtable' and voc.prompt_names[11] == 'table'
  assert voc.prompt_names[16] == 'plant' and voc.prompt_names[20] == 'monitor'
  assert voc.prompt_names[1] == 'aeroplane'
  assert (voc.background_threshold, voc.paper_background_threshold) == (0.95, 0.9)
  ctx = cn.get_spec('pascal_context')
  assert ctx.num_classes == 60 and ctx.class_names[0] == 'background'
  assert ctx.class_names[1:] == tuple(sorted(ctx.class_names[1:]))  # mmseg's alphabetical order
  assert ctx.prompt_names[ctx.class_names.index('pottedplant')] == 'plant'
  assert (ctx.background_threshold, ctx.paper_background_threshold) == (0.35, 0.5)
  coco = cn.get_spec('COCO-Object')
  assert (
    coco.num_classes == 81
    and coco.class_names[1] == 'person'
    and coco.class_names[80] == 'toothbrush'
  )
  assert coco.background_threshold == 0.95 and coco.ignore_index == 255
  assert len(cn.COCO_THING_CATEGORY_IDS) == 80 and cn.COCO_THING_CATEGORY_IDS[-1] == 90
  with pytest.raises(KeyError, match='unknown dataset'):
    cn.get_spec('ade20k')


# --------------------------------------------------------------------------------------------- VOC


def test_voc_reader(tmp_path):
  base, labels = _make_voc(tmp_path)
  for root in (tmp_path / 'VOCdevkit', base, tmp_path):
    ds = D.VOCDataset(root, 'val')
    assert len(ds) == 2 and ds.names == ['2007_000001', '2007_000002']
  samples = list(ds)
  for s in samples:
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
    assert s.image.shape[:2] == s.label.shape
    np.testing.assert_array_equal(s.label, labels[s.name])  # palette indices, not colours
  grey = samples[1].image  # grayscale JPEG -> three equal channels
  np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
  train = D.VOCDataset(base, 'train')
  s = train[0]
  assert s.image.shape == (9, 11, 3) and s.image.dtype == np.uint8  # CMYK JPEG converted
  ds.check_sizes()
  assert isinstance(D.build_dataset('voc', base), D.VOCDataset)


def test_voc_errors(tmp_path):
  base, _ = _make_voc(tmp_path)
  with pytest.raises(FileNotFoundError, match='no VOC 2012 folder'):
    D.VOCDataset(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match=r"split 'test'.*available splits: train, val"):
    D.VOCDataset(base, 'test')
  (base / 'SegmentationClass' / '2007_000002.png').unlink()
  with pytest.raises(FileNotFoundError, match='labels missing.*2007_000002'):
    D.VOCDataset(base, 'val')
  _save_palette_png(np.zeros((5, 5), np.uint8), base / 'SegmentationClass' / '2007_000002.png')
  ds = D.VOCDataset(base, 'val')
  with pytest.raises(ValueError, match='2007_000002.png is 5x5'):
    ds[1]
  with pytest.raises(ValueError, match='2007_000002'):
    ds.check_sizes()
  (base / 'JPEGImages' / '2007_000001.jpg').unlink()
  with pytest.raises(FileNotFoundError, match='images missing.*2007_000001'):
    D.VOCDataset(base, 'val')


def test_read_label_modes(tmp_path):
  arr = np.array([[0, 1, 2], [59, 255, 7]], np.uint8)
  Image.fromarray(arr).save(tmp_path / 'grey.png')
  np.testing.assert_array_equal(D.read_label(tmp_path / 'grey.png'), arr)
  Image.fromarray(arr.astype(np.uint16) * 3).save(tmp_path / 'wide.png')
  wide = D.read_label(tmp_path / 'wide.png')
  assert wide.dtype == np.int32 and wide[1, 1] == 765
  Image.fromarray(np.stack([arr] * 3, -1)).save(tmp_path / 'grey_rgb.png')
  np.testing.assert_array_equal(D.read_label(tmp_path / 'grey_rgb.png'), arr)
  colour = np.zeros((2, 3, 3), np.uint8)
  colour[0, 0] = (128, 0, 0)
  Image.fromarray(colour).save(tmp_path / 'colour.png')
  with pytest.raises(ValueError, match='colour RGB'):
    D.read_label(tmp_path / 'colour.png')


@pytest.mark.skipif(not VOC_SAMPLE.is_dir(), reason='shared VOC sample not present')
def test_real_voc_sample():
  for split in ('val', 'train'):
    ds = D.VOCDataset(VOC_SAMPLE, split)
    assert len(ds) > 0
    for s in ds:
      assert s.image.dtype == np.uint8 and s.image.shape[2] == 3
      assert s.label.shape == s.image.shape[:2]
      values = set(np.unique(s.label).tolist())
      assert values <= set(range(21)) | {255}, (s.name, values)
      assert values - {0, 255}, f'{s.name}: no object class (palette read as colours?)'


# ----------------------------------------------------------------------------------------- Context


def test_context_reader(tmp_path):
  base = tmp_path / 'VOCdevkit' / 'VOC2010'
  (base / 'JPEGImages').mkdir(parents=True)
  (base / 'SegmentationClassContext').mkdir()
  (base / 'ImageSets' / 'SegmentationContext').mkdir(parents=True)
  lab = (np.arange(8 * 10).reshape(8, 10) % 60).astype(np.uint8)
  Image.fromarray(_rgb(8, 10)).save(base / 'JPEGImages' / '2008_000001.jpg')
  Image.fromarray(lab).save(base / 'SegmentationClassContext' / '2008_000001.png')
  (base / 'ImageSets' / 'SegmentationContext' / 'val.txt').write_text('2008_000001\n')
  ds = D.PascalContextDataset(tmp_path / 'VOCdevkit', 'val')
  assert len(ds) == 1 and ds.class_names == cn.CONTEXT_CLASSES
  s = ds[0]
  np.testing.assert_array_equal(s.label, lab)  # no zero-label reduction
  assert s.image.shape == (8, 10, 3)
  with pytest.raises(FileNotFoundError, match="split 'train'"):
    D.PascalContextDataset(base, 'train')
  with pytest.raises(FileNotFoundError, match='PASCAL Context'):
    D.PascalContextDataset(tmp_path / 'empty')


# ------------------------------------------------------------------------------------- COCO-Object


def _coco_json(tmp_path):
  cats = [
    {'id': cid, 'name': name, 'supercategory': 'x'}
    for cid, name in zip(cn.COCO_THING_CATEGORY_IDS, cn.COCO_OBJECT_CLASSES[1:])
  ]
  images = [
    {'id': 1, 'file_name': '000000000001.jpg', 'height': 20, 'width': 30},
    {'id': 2, 'file_name': '000000000002.jpg', 'height': 10, 'width': 12},
  ]

  def box(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]

  anns = [
    # a large "dining table" (id 67 -> label 61) and a small "cup" (id 47 -> label 42) on top of it
    {'id': 10, 'image_id': 1, 'category_id': 67, 'iscrowd': 0, 'segmentation': box(2, 2, 26, 16)},
    {'id': 5, 'image_id': 1, 'category_id': 47, 'iscrowd': 0, 'segmentation': box(4, 4, 10, 10)},
    # a crowd of people (id 1 -> label 1), uncompressed RLE, rows 17..19 of the first 4 columns
    {
      'id': 11,
      'image_id': 1,
      'category_id': 1,
      'iscrowd': 1,
      'segmentation': {'size': [20, 30], 'counts': [17, 3, 17, 3, 17, 3, 17, 3, 20 * 26]},
    },
  ]
  path = tmp_path / 'instances_val2017.json'
  path.write_text(json.dumps({'images': images, 'annotations': anns, 'categories': cats}))
  img_dir = tmp_path / 'val2017'
  img_dir.mkdir()
  for im in images:
    Image.fromarray(_rgb(im['height'], im['width'])).convert('L').save(img_dir / im['file_name'])
  return path, img_dir


def test_coco_object_convert_and_read(tmp_path):
  instances, img_dir = _coco_json(tmp_path)
  out = tmp_path / 'coco_object'
  assert (
    conv.main(
      ['--instances', str(instances), '--images', str(img_dir), '--output', str(out), '--quiet']
    )
    == 0
  )
  ds = D.COCOObjectDataset(out, 'val2017')
  assert ds.names == ['000000000001', '000000000002']
  s = ds[0]
  assert s.image.shape == (20, 30, 3)
  cup = cn.COCO_OBJECT_CLASSES.index('cup')
  table = cn.COCO_OBJECT_CLASSES.index('dining table')
  assert (cup, table) == (42, 61)
  assert s.label[6, 6] == cup  # smaller instance wins the overlap
  assert s.label[14, 20] == table
  assert s.label[0, 0] == 0 and s.label[18, 1] == 0  # default: crowd stays background
  assert set(np.unique(ds[1].label).tolist()) == {0}  # image without annotations
  assert (out / 'images' / 'val2017' / '000000000001.jpg').is_symlink()


def test_coco_object_conversion_options(tmp_path):
  data = json.loads(_coco_json(tmp_path)[0].read_text())
  cat_to_label = conv.category_label_map(data['categories'])
  anns = [a for a in data['annotations'] if a['image_id'] == 1]
  by_id = conv.instances_to_label(anns, 20, 30, cat_to_label, crowd='ignore', overlap='id')
  assert by_id[6, 6] == 61  # ann 10 (table) painted after ann 5 (cup)
  assert by_id[18, 1] == 255 and by_id[18, 5] == 0
  labelled = conv.instances_to_label(anns, 20, 30, cat_to_label, crowd='label')
  assert labelled[18, 1] == 1 and labelled[6, 6] == 42


def test_coco_object_errors_and_module_cli(tmp_path):
  instances, img_dir = _coco_json(tmp_path)
  with pytest.raises(FileNotFoundError, match='images/val2017'):
    D.COCOObjectDataset(tmp_path / 'missing')
  out = tmp_path / 'o'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'evaluation.convert_coco_object',
      '--instances',
      str(instances),
      '--images',
      str(img_dir),
      '--output',
      str(out),
      '--image_mode',
      'copy',
      '--quiet',
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert not (out / 'images' / 'val2017' / '000000000002.jpg').is_symlink()
  (out / 'annotations' / 'val2017' / '000000000002_instanceTrainIds.png').unlink()
  with pytest.raises(FileNotFoundError, match='000000000002'):
    D.COCOObjectDataset(out)
  (img_dir / '000000000001.jpg').unlink()
  assert (
    conv.main(
      [
        '--instances',
        str(instances),
        '--images',
        str(img_dir),
        '--output',
        str(tmp_path / 'o2'),
        '--quiet',
      ]
    )
    == 2
  )


# ------------------------------------------------------------------------------------------ folder


def test_folder_reader(tmp_path):
  root = tmp_path / 'mine'
  (root / 'images').mkdir(parents=True)
  (root / 'labels').mkdir()
  (root / 'classes.txt').write_text('background\nsky\n\ntree\n')
  Image.fromarray(_rgb(6, 7)).save(root / 'images' / 'b.jpg')
  Image.fromarray(_rgb(5, 4)).convert('P').save(root / 'images' / 'a.png')  # palette image
  Image.fromarray(np.ones((6, 7), np.uint8)).save(root / 'labels' / 'b.png')
  Image.fromarray(np.full((5, 4), 2, np.uint8)).save(root / 'labels' / 'a.png')
  ds = D.build_dataset('folder', root)
  assert ds.class_names == ('background', 'sky', 'tree')
  assert ds.names == ['a', 'b']
  a = ds[0]
  assert a.image.shape == (5, 4, 3) and a.label.shape == (5, 4) and a.label[0, 0] == 2

  (root / 'labels' / 'a.png').unlink()
  with pytest.raises(FileNotFoundError, match='labels missing.*a'):
    D.FolderDataset(root)
  Image.fromarray(np.ones((3, 3), np.uint8)).save(root / 'labels' / 'a.png')
  with pytest.raises(ValueError, match=r'a: label .*a\.png is 3x3'):
    D.FolderDataset(root)[0]


def test_folder_without_labels_and_errors(tmp_path):
  root = tmp_path / 'f'
  (root / 'images').mkdir(parents=True)
  Image.fromarray(_rgb(4, 4)).save(root / 'images' / 'x.jpg')
  with pytest.raises(FileNotFoundError, match='classes.txt'):
    D.FolderDataset(root)
  (root / 'classes.txt').write_text('a\nb\n')
  with pytest.raises(FileNotFoundError, match='label folder'):
    D.FolderDataset(root)
  ds = D.FolderDataset(root, require_labels=False)
  assert ds[0].label is None and len(ds) == 1
  Image.fromarray(_rgb(4, 4)).save(root / 'images' / 'x.png')
  with pytest.raises(ValueError, match='share a file stem'):
    D.FolderDataset(root, require_labels=False)
  with pytest.raises(FileNotFoundError, match='dataset folder not found'):
    D.FolderDataset(tmp_path / 'nope')
