"""SCG region adaptation on CC12M (the paper's recipe): only the 27 region tokens and the
temperature of a frozen CLIP are trained, with the noun->region loss, while a frozen DINO groups.

Paper: batch 2048, AdamW lr 5e-4, weight decay 0.01, 5 epochs, 224 px. Ours where it is silent:
a linear warm-up over the first 500 steps from 5e-6, cosine to 5e-6, gradient clipping at 5 (the
trainer's default), K = 3 noun prompts per caption (GroupViT's noun path and templates), CLIP's own
temperature as the start. Give the two converted model directories and the shards:

    python -m groupvit_jax.main --config=configs/scg_cc12m.py --workdir=RUN \
      --config.scg.clip_dir=CLIP_DIR --config.scg.grouper_dir=DINO_DIR \
      --config.data.train='("webdataset:/data/cc12m/{000000..001943}.tar",)'

The CLIP's text context length (77 for OpenAI CLIPs) must equal data.text.context_length.
"""

import ml_collections

from groupvit_jax.main import base_config

CC12M_PAIRS = 11_156_203  # the shards the GroupViT recipe counts (main.RELEASED_SHARDS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base_config()
  config.method = 'scg'
  config.model.dtype = 'bfloat16'  # the towers' matmuls; norms, softmaxes and the loss in float32
  config.data.train = (
    'webdataset:local_data/gcc12m_shards/gcc-conceptual-12m-{000000..001943}.tar',
  )
  config.data.image_size = 224
  config.data.text.context_length = 77
  config.global_batch_size = 2048
  config.total_steps = 5 * CC12M_PAIRS // config.global_batch_size
  config.optimizer.base_lr = 5e-4
  config.optimizer.warmup_lr = 5e-6
  config.optimizer.min_lr = 5e-6
  config.optimizer.warmup_steps = 500
  config.optimizer.weight_decay = 0.01
  config.optimizer.scale_lr_by_batch = False
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  return config
