"""The README's main job: a small GroupViT trained on the built-in synthetic shapes on 2 CPU cores.

A 2-stage GroupViT (64 px input, patch 8, width 128, 16 -> 4 groups) and a 2-layer text tower learn
from synthetic image-caption pairs alone (input_pipeline/synthetic_shapes.py); then the trainer's
evaluation segments the synthetic val split zero-shot with the category names as the vocabulary and
writes `eval/synthetic/mIoU` (metrics.jsonl), WORKDIR/eval_synthetic.json and the PNG grid
WORKDIR/eval_synthetic.png (image | stage-1 groups | stage-2 groups | prediction | ground truth).

Variants (options after the colon, several joined by '+', e.g. `:easy_group_max+soft`);
benchmarks/emergence.py runs them over seeds:

  configs/synthetic.py               hard assignment + multi-label loss (the release)
  soft               soft assignment (Table 1)
  no_multi_label     without the multi-label loss (Table 1); soft_no_multi_label = soft+no_multi_label
  1stage             one grouping stage, 4 groups, same depth (Table 3)
  vit                a plain ViT of the same depth and width, same loss and budget, segmented by
                     pixel-wise classification and k-means (Table 4)
  mosaic             not in the release: half of every batch tiled into 2-image mosaics, each
                     caption matched to the groups of its own tile (groupvit_jax/mosaic.py);
                     vit_mosaic = vit+mosaic; with group_max / easy_group_max, a tile's nouns
                     are scored by the best group lying inside the tile (a background spread
                     over both tiles speaks for neither)
  group_max          not in the release: the multi-label loss scores an image against a noun by its
                     best-matching final group
  group_max_all      the same for the image-text loss too
  easy_group_max     group_max on the easiest scenes, captions naming the background, background
                     threshold 0.95
  fine               a 16 x 16 token grid (patch 4; the release's is 14 x 14, this recipe's 8 x 8)
  zoom               the release's scale practice brought to this recipe: training crops down to a
                     quarter of the image (the release: 0.08) and evaluation at 3x the training
                     resolution (the release: 448 px for 224; 3x was best on one seed)

The generator's difficulty knobs are `config.data.synthetic.*` (see SyntheticConfig). This recipe
uses 1-3 objects a little larger than the generator's defaults, milder caption noise and no colour
words, because a model trained from scratch for ~25 CPU minutes does not get past chance on the
default captions (measured; see benchmarks/emergence.md).
"""

import ml_collections

from groupvit_jax.config_lib import base_config, model_config

OPTIONS = ('soft', 'no_multi_label', '1stage', 'vit', 'mosaic', 'group_max', 'group_max_all',
           'easy_group_max', 'fine', 'zoom')
ALIASES = {'soft_no_multi_label': ('soft', 'no_multi_label'), 'vit_mosaic': ('vit', 'mosaic')}
# Options that change the same thing (the architecture) and so cannot be combined.
EXCLUSIVE = (('1stage', 'vit'), ('soft', 'vit'))


def parse_variant(arg: str | None) -> frozenset[str]:
  """The set of options named by ``arg`` ('' or None: the recipe itself; 'a+b': options a and b)."""
  options = set()
  for name in filter(None, (arg or '').split('+')):
    if name not in OPTIONS and name not in ALIASES:
      raise ValueError(f'unknown variant {name!r} in {arg!r}; valid: '
                       f'{sorted(OPTIONS + tuple(ALIASES))}, joined by "+"')
    options.update(ALIASES.get(name, (name,)))
  for a, b in EXCLUSIVE:
    if a in options and b in options:
      raise ValueError(f'variant {arg!r}: {a!r} and {b!r} cannot be combined')
  return frozenset(options)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = parse_variant(arg)
  image = dict(image_size=64, patch_size=8, width=128, num_heads=4, depths=(2, 2, 1),
               num_group_tokens=(16, 4, 0), num_output_groups=(16, 4), drop_path_rate=0.0)
  if 'soft' in options:
    image['hard_assignment'] = False
  if '1stage' in options:
    image.update(depths=(3, 2), num_group_tokens=(4, 0), num_output_groups=(4,))
  if 'vit' in options:
    image.update(depths=(5,), num_group_tokens=(0,), num_output_groups=())
  if 'fine' in options:
    image['patch_size'] = 4
  config = base_config()
  config.model = model_config(
      image=image, text=dict(width=128, num_layers=2, num_heads=4, context_length=32),
      projection_dim=128, projection_hidden_dim=512, multi_label='no_multi_label' not in options)

  config.data.train = ('synthetic',)
  config.data.image_size = 64
  # Objects must stay in view (the caption names them): mild crops, no flips (captions say
  # "on the left"), no RandAugment or erasing.
  config.data.crop_scale = (0.8, 1.0)
  if 'zoom' in options:
    # Objects seen up to twice as large in training, so their names hold on the 3x evaluation
    # grid, where the groups follow the outlines more closely (benchmarks/emergence.md, "Zoom").
    config.data.crop_scale = (0.25, 1.0)
  config.data.hflip_prob = 0.0
  config.data.randaugment = ''
  config.data.random_erasing.prob = 0.0
  config.data.text.context_length = 32
  config.data.text.templates = 'simple'  # the evaluation's prompt: "a photo of a {}."
  synth = config.data.synthetic
  synth.max_objects = 3
  synth.size_range = (0.2, 0.35)
  synth.background_strength = 0.3
  synth.p_distractor_words = 0.1
  synth.p_canonical_name = 0.8
  # No colour words: with them the image-text loss settles on colour matching (a shortcut that
  # never names a shape); without them it has to use the shapes (benchmarks/emergence.md).
  synth.p_colour_word = 0.0
  synth.caption_styles = (('sentence', 0.6), ('list', 0.3), ('count', 0.1))

  if 'mosaic' in options:
    config.loss.mosaic.fraction = 0.5
  if options & {'group_max', 'group_max_all', 'easy_group_max'}:
    config.loss.multi_label_pooling = 'max'
  if 'group_max_all' in options:
    config.loss.image_text_pooling = 'max'
  if 'easy_group_max' in options:
    # The easiest scenes (one upright object, brighter than its background; colour still says
    # nothing about the shape), every caption naming the background, and the background
    # threshold the release uses for VOC and COCO-Object (benchmarks/emergence.md, "Best-group
    # losses").
    synth.object_polarity = 'lighter'
    synth.max_objects = 1
    synth.rotation = False
    synth.p_background_words = 1.0
  config.global_batch_size = 64
  config.total_steps = 1500
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.optimizer.base_lr = 1e-3
  config.optimizer.warmup_lr = 1e-5
  config.optimizer.min_lr = 1e-5
  config.optimizer.warmup_steps = 50
  config.optimizer.scale_lr_by_batch = False

  config.eval.every_steps = 500
  config.eval.datasets = ('synthetic',)
  config.eval.max_images = 200
  config.eval.synthetic_seed = 1  # val stream; training uses the train stream of config.seed
  config.eval.kmeans_clusters = 4  # as many clusters as GroupViT's final groups
  if 'easy_group_max' in options:
    config.eval.threshold = 0.95
  if 'zoom' in options:
    config.eval.synthetic_scale = 3.0
  return config
