"""Every recipe in configs/ loads, validates and builds its model."""

import importlib.util

import jax
import pytest

from groupvit_jax.checkpoints.store import abstract_variables
from groupvit_jax.config_lib import build_model_config, model_config
from tests.conftest import REPO

CONFIG_FILES = sorted(p.stem for p in (REPO / 'configs').glob('*.py') if p.stem != '__init__')


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, REPO / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_every_config_builds_its_model(name):
  config = load(name)
  variables = abstract_variables(build_model_config(config))
  assert jax.tree.leaves(variables['params'])


def test_released_parameter_count():
  params = abstract_variables(build_model_config(load('groupvit_gcc_yfcc')))['params']
  assert sum(x.size for x in jax.tree.leaves(params)) == 55_726_610
  image = sum(x.size for x in jax.tree.leaves(params['img_encoder']))
  text = sum(x.size for x in jax.tree.leaves(params['text_encoder']))
  assert round(image / 1e6, 1) == 28.8 and round(text / 1e6, 1) == 22.1


def test_expected_recipes_exist():
  assert {'groupvit_gcc_yfcc', 'groupvit_1stage', 'tiny'} <= set(CONFIG_FILES)
  one = build_model_config(load('groupvit_1stage'))
  assert one.image.num_group_tokens == (64, 0) and one.image.num_output_groups == (8,)
  assert not one.image.pre_assign_attention


@pytest.mark.parametrize('variant', ['soft', 'no_multi_label', 'soft_no_multi_label', '1stage', 'vit',
                                     'mosaic', 'vit_mosaic', 'group_max', 'group_max_all', 'fine',
                                     'easy_group_max+soft', 'easy_group_max+1stage+fine',
                                     'easy_group_max+vit', 'easy_group_max+zoom+soft',
                                     'easy_group_max+zoom+vit', 'easy_group_max+zoom+mosaic'])
def test_synthetic_ablation_variants(variant):
  options = set(variant.replace('soft_no_multi_label', 'soft+no_multi_label')
                .replace('vit_mosaic', 'vit+mosaic').split('+'))
  # The recipe the ablation is of: its scenes, losses and resolutions.
  scenes = '+'.join(o for o in ('easy_group_max', 'zoom') if o in options)
  base, config = load('synthetic', scenes or None), load('synthetic', variant)
  model, ref = build_model_config(config), build_model_config(base)
  assert sum(model.image.depths) == sum(ref.image.depths) and model.image.width == ref.image.width
  assert model.image.hard_assignment == ('soft' not in options)
  assert model.multi_label == ('no_multi_label' not in options)
  assert model.image.num_grouping_stages == (1 if '1stage' in options else
                                             0 if 'vit' in options else 2)
  assert model.image.patch_size == (4 if 'fine' in options else 8)
  assert config.loss.mosaic.fraction == (0.5 if 'mosaic' in options else 0.0)
  assert config.loss.multi_label_pooling == (
      'max' if options & {'group_max', 'group_max_all', 'easy_group_max'} else 'mean')
  assert config.loss.image_text_pooling == ('max' if 'group_max_all' in options else 'mean')
  # Only the model (and the objective) differs from the scenes' recipe: same data, budget and
  # evaluation.
  for key in ('data', 'total_steps', 'global_batch_size', 'optimizer', 'eval'):
    assert config[key].to_dict() == base[key].to_dict() if hasattr(config[key], 'to_dict') else (
        config[key] == base[key])


@pytest.mark.parametrize('variant,message', [('sfot', 'unknown variant'),
                                             ('easy_group_max+sfot', 'unknown variant'),
                                             ('vit+1stage', 'cannot be combined'),
                                             ('soft_no_multi_label+vit', 'cannot be combined')])
def test_synthetic_bad_variants(variant, message):
  with pytest.raises(ValueError, match=message):
    load('synthetic', variant)


def test_easy_group_max_recipe():
  """The best-group recipe: the release's model, the easiest scenes, captions that name the
  background, the best-group multi-label loss and the release's VOC background threshold."""
  base, config = load('synthetic'), load('synthetic', 'easy_group_max')
  assert build_model_config(config) == build_model_config(base)
  synth = config.data.synthetic
  assert (synth.object_polarity, synth.max_objects, synth.rotation,
          synth.p_background_words) == ('lighter', 1, False, 1.0)
  assert config.loss.multi_label_pooling == 'max' and config.loss.image_text_pooling == 'mean'
  assert config.eval.threshold == 0.95 and base.eval.threshold is None
  for key in ('total_steps', 'global_batch_size', 'optimizer'):
    assert config[key] == base[key]


def test_zoom_recipe():
  """`zoom` changes only the training crops and the evaluation resolution, and the evaluation
  size stays a multiple of the patch size of every model it is combined with."""
  base, config = load('synthetic', 'easy_group_max'), load('synthetic', 'easy_group_max+zoom')
  assert config.data.crop_scale == (0.25, 1.0) and base.data.crop_scale == (0.8, 1.0)
  assert config.eval.synthetic_scale == 3.0 and base.eval.synthetic_scale == 1.0
  config.data.crop_scale, config.eval.synthetic_scale = base.data.crop_scale, 1.0
  assert config.to_dict() == base.to_dict()
  for variant in ('zoom', 'zoom+fine', 'zoom+vit'):
    c = load('synthetic', variant)
    size = c.data.image_size * c.eval.synthetic_scale
    assert size % build_model_config(c).image.patch_size == 0


def test_model_config_rejects_unknown_keys():
  with pytest.raises(KeyError, match='unknown model.image key'):
    model_config(image=dict(widht=3))
  with pytest.raises(KeyError, match='unknown model key'):
    model_config(imagee=dict(width=3))
