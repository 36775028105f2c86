"""ZeroSeg on ImageNet-1k images alone (the paper's recipe): a ViT-B/16 MAE student, mask ratio 0.6,
distilled from a frozen CLIP's embeddings of 1x1..4x4 grid views of the centre crop.

Paper: 80 epochs with 20 of warm-up, AdamW, base lr 1.5e-4 (x batch / 256, as MAE), batch 4096,
224 px, a CLIP ViT-L/14 teacher. From the MAE release where the paper is silent: betas
(0.9, 0.95), weight decay 0.05, warm-up from 0, cosine to 0, no gradient clipping, sin-cos
position embeddings kept fixed, norm_pix_loss. Ours: the choices documented in
groupvit_jax/models/zeroseg.py and groupvit_jax/zeroseg_losses.py (all defaults of
`config.zeroseg`), bfloat16 matmuls with float32 norms, softmaxes and losses.

First cache the teacher's views (once; resumable, one process per host):

    python -m input_pipeline.prepare_teacher --teacher CLIP_L14_DIR \
      --source tfds:imagenet2012:train --tfds_data_dir TFDS_DIR --output CACHE

then train:

    python -m groupvit_jax.main --config=configs/zeroseg_in1k.py --workdir=RUN \
      --config.zeroseg.teacher_dir=CLIP_L14_DIR --config.data.teacher_cache=CACHE \
      --config.data.tfds_data_dir=TFDS_DIR

`--config.zeroseg.init_from=MAE_DIR` starts encoder and decoder from a converted MAE
(`python -m groupvit_jax.convert --source mae_pretrain_vit_base_full.pth --output MAE_DIR`).
Ablations: `--config.zeroseg.grids='(1, 3)'` with the same `data.teacher_grids` (Table 3),
`--config.zeroseg.weights.matching=0` (Table 4), `--config.zeroseg.model.mae.mask_ratio=0.4`
(Table 5).
"""

import ml_collections

from groupvit_jax.main import base_config

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base_config()
  config.method = 'zeroseg'
  z = config.zeroseg
  z.teacher = 'cache'
  z.model.mae.encoder.dtype = 'bfloat16'

  data = config.data
  data.train = ('tfds:imagenet2012:train',)
  data.captions = False
  data.crop = 'center'  # the cached views are of the centre crop
  data.hflip_prob = 0.0
  data.randaugment = ''
  data.random_erasing.prob = 0.0
  data.image_size = 224
  data.teacher_grids = z.grids

  config.global_batch_size = 4096
  steps_per_epoch = IMAGENET_TRAIN_IMAGES // config.global_batch_size
  config.total_steps = 80 * steps_per_epoch
  opt = config.optimizer
  opt.warmup_steps = 20 * steps_per_epoch
  # The trainer scales by batch / 4096: 2.4e-3 * batch / 4096 = 1.5e-4 * batch / 256.
  opt.base_lr = 1.5e-4 * 4096 / 256
  opt.scale_lr_by_batch = True
  opt.warmup_lr = 0.0
  opt.min_lr = 0.0
  opt.b1, opt.b2 = 0.9, 0.95
  opt.weight_decay = 0.05
  opt.clip_grad_norm = 0.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.eval.threshold = 0.95  # the paper's VOC threshold, when config.eval.datasets names VOC
  return config
