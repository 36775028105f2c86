"""The README's main job: the method and recipe the built-in benchmark's measurements select.

That is SCG on the `default` scenes (docs/emergence.md, section 12): a CLIP trained here with a
tenth of its scenes background-only (configs/synthetic_clip.py, 1,500 steps, about 15 minutes on 2
cores, trained first into WORKDIR/clip or reused from there) is both SCG's grouper (k-means on its
patch tokens, two regions) and its recogniser; each region is named by its own region token under
token masking, among the one foreground class the whole image ranks first and the background
words (`scg.image_top_k=1`, our extension). No SCG training (the paper's "no fine-tuning" row):
the run evaluates and exports. `--config.seed` seeds the CLIP's training; the val stream is
`eval.synthetic_seed`.

It writes what every run writes: WORKDIR/metrics.jsonl, WORKDIR/eval_synthetic.json (`mIoU`, the
vocabulary background rule; `other_background_rules` has the threshold rule),
WORKDIR/eval_synthetic.png (the regions and their names) and the model directory WORKDIR/model
(an SCG model: `groupvit_jax.load_pretrained`, notebooks/inspect_groups.ipynb).

Arguments (`--config=configs/synthetic.py:key=value`): those of configs/synthetic_scg.py, with
this recipe's choices as defaults.
"""

import importlib.util
import os

import ml_collections

_SCG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'synthetic_scg.py')
# The measured choice (docs/emergence.md, section 12).
DEFAULTS = 'image_top_k=1,naming=noun,grouper_layer=-2'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location('synthetic_scg_recipe', _SCG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  # parse_arg lets a later key replace an earlier one: the user's arguments win over ours.
  return module.get_config(DEFAULTS + (f',{arg}' if arg else ''))
