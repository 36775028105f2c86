"""Zero-shot classification on an ImageNet-style folder against the Hugging Face model (same
weights): the release's eval transform, 'subset' templates, mean of unnormalised text features."""

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from evaluation import class_names, classification, run  # noqa: E402
from groupvit_jax import preprocessing, prompts  # noqa: E402
from references import segmentation as ref  # noqa: E402

CLASSES = ['golden_retriever', 'tabby_cat', 'sports_car']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('cls')
  hf, ours, path = ref.tiny_models(str(tmp / 'm'), seed=9)
  root = tmp / 'val'
  images = ref.synthetic_images(
    [(240, 300), (300, 240), (256, 256), (230, 400), (400, 260)] * 2, seed=4
  )
  for i, image in enumerate(images):
    d = root / CLASSES[i % 3]
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(d / f'{i:03d}.jpg', quality=95)
  return hf, ours, path, root


def _reference_accuracy(hf, ours, root, names):
  folder = classification.ImageFolder(root)
  tokens = ours.tokenize(prompts.build_prompts(names, 'subset'))
  text = ref.hf_class_embeddings(hf, tokens, len(names))
  hits1 = hits2 = 0
  for path, target in zip(folder.paths, folder.targets):
    with Image.open(path) as im:
      pixels = preprocessing.eval_transform(np.asarray(im.convert('RGB')), 224)
    x = torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
      out = hf.vision_model(x)
      emb = torch.nn.functional.normalize(hf.visual_projection(out.pooler_output), dim=-1)
    top = (emb @ text.T)[0].topk(2).indices.tolist()
    hits1 += top[0] == target
    hits2 += target in top
  n = len(folder)
  return 100.0 * hits1 / n, 100.0 * hits2 / n


def test_classification_matches_reference(setup):
  hf, ours, _, root = setup
  names = [c.replace('_', ' ') for c in sorted(CLASSES)]
  result = classification.evaluate_classification(ours, root, batch_size=4, topk=2)
  assert result['num_images'] == 10 and result['class_names'] == names
  top1, top2 = _reference_accuracy(hf, ours, root, names)
  assert result['top1'] == pytest.approx(top1) and result['top2'] == pytest.approx(top2)


def test_classification_via_run_cli(setup, tmp_path):
  _, _, path, root = setup
  names_file = tmp_path / 'names.txt'
  names_file.write_text('dog\ncat\ncar\n')
  out = tmp_path / 'cls.json'
  assert (
    run.main(
      [
        '--checkpoint',
        path,
        '--dataset',
        'imagenet_folder',
        '--data_dir',
        str(root),
        '--output',
        str(out),
        '--class_names',
        str(names_file),
        '--batch_size',
        '3',
        '--max_images',
        '7',
      ]
    )
    == 0
  )
  result = json.loads(out.read_text())
  assert result['num_images'] == 7 and result['class_names'] == ['dog', 'cat', 'car']
  assert 0 <= result['top1'] <= result['top3'] <= 100 and result['templates'] == 'subset'


def test_imagenet_wnid_folders_get_clip_names(tmp_path):
  for wnid in ('n01440764', 'n01443537'):
    (tmp_path / wnid).mkdir()
    Image.new('RGB', (8, 8)).save(tmp_path / wnid / 'a.jpg')
  folder = classification.ImageFolder(tmp_path)
  assert folder.default_class_names() == ['n01440764', 'n01443537']  # not 1000 folders: names as is
  assert len(class_names.IMAGENET_CLASSES) == 1000 and class_names.IMAGENET_CLASSES[:2] == (
    'tench',
    'goldfish',
  )
  assert len(prompts.TEMPLATE_SETS['subset']) == 7 and len(prompts.TEMPLATE_SETS['full']) == 80
