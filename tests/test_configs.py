"""Every recipe in configs/ loads, validates and builds its model."""

import importlib.util

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from groupvit_jax.checkpoints.store import abstract_variables
from groupvit_jax.config_lib import build_model_config, model_config, parse_arg
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
  if config.method == 'scg':  # its towers are model directories given on the command line
    from groupvit_jax import scg_losses
    from groupvit_jax.models.scg import SCGConfig

    keys = ('num_regions', 'kmeans_iters', 'grouper_layer', 'masking', 'image_top_k', 'naming')
    SCGConfig(**{k: config.scg[k] for k in keys}).validate()
    assert config.scg.direction in scg_losses.DIRECTIONS
    return
  if config.method == 'zeroseg':  # its teacher is a model directory given on the command line
    from groupvit_jax import teacher_views, zeroseg_losses
    from groupvit_jax.models import zeroseg
    from groupvit_jax.models.clip import CLIPConfig

    model = {**config.zeroseg.model.to_dict(), 'teacher': CLIPConfig().to_dict()}
    cfg = zeroseg.ZeroSegConfig.from_dict(model)
    params = jax.eval_shape(lambda: zeroseg.init_params(cfg, jax.random.key(0)))
    assert jax.tree.leaves(params) and cfg.encoder.image_size == config.data.image_size
    teacher_views.check_grids(config.zeroseg.grids)
    assert set(config.zeroseg.weights) == set(zeroseg_losses.TERMS)
    return
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


def _flat(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _changed(a, b):
  """The keys whose values differ between two ConfigDicts (flattened)."""
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  return {k for k in fa if fa[k] != fb[k]}


def test_parse_arg_converts_to_the_defaults_types():
  defaults = dict(flag=False, n=2, lr=1e-3, name='a', sizes=(1, 2))
  assert parse_arg(None, **defaults).to_dict() == defaults
  assert parse_arg('', **defaults).to_dict() == defaults
  out = parse_arg('flag=True,n=3,lr=0.5,name=b c,sizes=(4, 5, 6)', **defaults)
  assert out.to_dict() == dict(flag=True, n=3, lr=0.5, name='b c', sizes=(4, 5, 6))
  assert isinstance(out.lr, float) and isinstance(out.n, int)
  for text, value in (
    ('True', True),
    ('true', True),
    ('1', True),
    ('False', False),
    ('false', False),
    ('0', False),
  ):
    assert parse_arg(f'flag={text}', flag=not value).flag is value
  assert parse_arg('lr=2', lr=1.0).lr == 2.0 and isinstance(parse_arg('lr=2', lr=1.0).lr, float)
  assert parse_arg(' n = 4 , ', n=1).n == 4


@pytest.mark.parametrize(
  'arg,message',
  [
    ('nn=3', r"unknown config argument 'nn'; valid keys: \['flag', 'n', 'sizes'\]"),
    ('n=three', r"n='three' is not a int .*valid keys: \['flag', 'n', 'sizes'\]"),
    ('n=1.5', 'n=.*is not a int'),
    ('flag=yes', r"flag='yes' is not a bool"),
    ('sizes=3', 'sizes=.*is not a tuple'),
    ('sizes=(1,', 'sizes=.*is not a tuple'),
    ('n', 'is not key=value'),
  ],
)
def test_parse_arg_rejects_unknown_keys_and_bad_values(arg, message):
  with pytest.raises(ValueError, match=message):
    parse_arg(arg, flag=False, n=2, sizes=(1, 2))


# What each argument of configs/synthetic_groupvit.py may change, relative to the recipe it is
# applied to.
_ARCHITECTURE = {
  'model.image.depths',
  'model.image.num_group_tokens',
  'model.image.num_output_groups',
}
SYNTHETIC_ARGS = {
  'assignment=soft': {'model.image.hard_assignment'},
  'multi_label=False': {'model.multi_label'},
  'stages=1': _ARCHITECTURE,
  'arch=vit': _ARCHITECTURE,
  'group_max=True': {'loss.multi_label_pooling'},
  'scenes=hard': {
    'data.synthetic.object_polarity',
    'data.synthetic.max_objects',
    'data.synthetic.rotation',
    'data.synthetic.p_background_words',
    'eval.threshold',
  },
  'scenes=easy': {'data.synthetic.background_strength'},
}


_GROUP_MAX = 'group_max=True'


@pytest.mark.parametrize(
  'arg,base',
  [(a, '') for a in sorted(SYNTHETIC_ARGS)]
  + [
    (a, _GROUP_MAX)
    for a in sorted(SYNTHETIC_ARGS)
    if a not in _GROUP_MAX and a != 'multi_label=False'
  ],
)
def test_synthetic_arguments_change_only_what_they_should(arg, base):
  ref = load('synthetic_groupvit', base or None)
  config = load('synthetic_groupvit', f'{base},{arg}' if base else arg)
  assert _changed(config, ref) == SYNTHETIC_ARGS[arg]
  model, ref_model = build_model_config(config), build_model_config(ref)
  assert sum(model.image.depths) == sum(ref_model.image.depths)
  assert model.image.width == ref_model.image.width
  assert model.image.num_grouping_stages == {'stages=1': 1, 'arch=vit': 0}.get(arg, 2)
  assert model.image.hard_assignment == (arg != 'assignment=soft')
  assert model.multi_label == (arg != 'multi_label=False')


def test_synthetic_arguments_combine():
  # The defaults spelled out change nothing.
  explicit = 'assignment=hard,multi_label=True,stages=2,arch=groupvit,group_max=False'
  assert (
    _changed(load('synthetic_groupvit', explicit + ',scenes=default'), load('synthetic_groupvit'))
    == set()
  )
  config = load('synthetic_groupvit', _GROUP_MAX + ',assignment=soft,multi_label=True')
  assert _changed(config, load('synthetic_groupvit', _GROUP_MAX)) == {'model.image.hard_assignment'}
  config = load('synthetic_groupvit', 'assignment=soft,multi_label=False')
  assert not config.model.image.hard_assignment and not config.model.multi_label


@pytest.mark.parametrize(
  'arg,message',
  [
    ('sfot=True', "unknown config argument 'sfot'; valid keys"),
    ('group_max=True,scenes=easy,sfot=1', "unknown config argument 'sfot'"),
    ('multi_label=maybe', "multi_label='maybe' is not a bool"),
    ('stages=two', "stages='two' is not a int"),
    ('stages=3', 'stages=3: expected one of'),
    ('assignment=sfot', "assignment='sfot': expected one of"),
    ('scenes=harder', "scenes='harder': expected one of"),
    ('arch=resnet', "arch='resnet': expected one of"),
    ('arch=vit,stages=1', 'arch=vit has no grouping'),
    ('arch=vit,assignment=soft', 'arch=vit has no grouping'),
    ('assignment=soft,multi_label=False,arch=vit', 'arch=vit has no grouping'),
    ('group_max=True,multi_label=False', 'group_max=True .* needs multi_label=True'),
  ],
)
def test_synthetic_bad_arguments(arg, message):
  with pytest.raises(ValueError, match=message):
    load('synthetic_groupvit', arg)


def test_synthetic_group_max_recipe():
  """The best-group recipe: the release's model on the default scenes (one upright object,
  captions that name the background), the best-group multi-label loss and the release's VOC
  background threshold; `scenes=hard` is the research scenes without a threshold."""
  base, config = (
    load('synthetic_groupvit', 'scenes=hard'),
    load('synthetic_groupvit', 'group_max=True'),
  )
  assert build_model_config(config) == build_model_config(base)
  synth = config.data.synthetic
  assert (synth.object_polarity, synth.max_objects, synth.rotation, synth.p_background_words) == (
    'lighter',
    1,
    False,
    1.0,
  )
  assert config.loss.multi_label_pooling == 'max' and base.loss.multi_label_pooling == 'mean'
  assert config.eval.threshold == 0.95 and base.eval.threshold is None
  assert 'image_text_pooling' not in config.loss and 'mosaic' not in config.loss


def test_synthetic_argument_on_the_command_line():
  """`--config=FILE:a=b,c=d` hands the whole text after ':' to get_config."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'recipe', flag_values=fv, lock_config=True)
  fv(['prog', f'--config={REPO / "configs" / "synthetic_groupvit.py"}:group_max=True,scenes=easy'])
  assert fv.config.to_dict() == load('synthetic_groupvit', 'group_max=True,scenes=easy').to_dict()
  assert fv.config.loss.multi_label_pooling == 'max' and fv.config.eval.threshold == 0.95


def test_model_config_rejects_unknown_keys():
  with pytest.raises(KeyError, match='unknown model.image key'):
    model_config(image=dict(widht=3))
  with pytest.raises(KeyError, match='unknown model key'):
    model_config(imagee=dict(width=3))


def test_main_job_is_the_measured_scg_recipe():
  """The README's command trains the background-only CLIP first and runs SCG with the measured
  choices (docs/emergence.md, section 12); the SCG recipe's arguments still apply on top."""
  main = load('synthetic')
  scg = load('synthetic_scg', 'image_top_k=1,naming=noun,grouper_layer=-2')
  assert main.to_dict() == scg.to_dict()
  assert main.method == 'scg' and main.total_steps == 0
  assert main.scg.num_regions == 2 and main.eval.background_rules[0] == 'vocabulary'
  (_, clip_recipe, subdir), _ = main.prerequisites
  assert subdir == 'clip' and 'background_only=0.1' in clip_recipe and 'steps=1500' in clip_recipe
  assert (main.scg.masking, main.scg.naming, main.scg.grouper_layer) == ('context', 'noun', -2)
  assert load('synthetic', 'masking=tokens,grouper_layer=final').scg.grouper_layer is None
  with pytest.raises(ValueError, match='grouper_layer'):
    load('synthetic', 'grouper_layer=last')
  with pytest.raises(ValueError, match='unknown config argument'):
    load('synthetic', 'group_max=True')
