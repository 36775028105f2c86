"""How fast a training run stops on SIGTERM (a preemption notice), and what it saves.

Starts the trainer (``python -m groupvit_jax.main``) on a recipe in a fresh temporary workdir,
waits for the log line of step ``--after-step``, sleeps ``--wait`` seconds, sends SIGTERM and
prints the seconds until the process exits, the step it saved and its exit code; also the
images/s the run logged. Cloud preemption grace periods are tens of seconds, so the time to exit
is the number that matters; it should be about one training step plus the checkpoint write.

    python benchmarks/stop_latency.py              # configs/synthetic_groupvit.py, 50 + 20 s
    python benchmarks/stop_latency.py --config configs/tiny.py --after-step 20 --wait 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(config: str, after_step: int, wait: float, overrides: list[str]) -> dict:
  """Runs one stop; returns ``{'exit_s', 'saved_step', 'returncode', 'images_per_s'}``."""
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [
      sys.executable,
      '-m',
      'groupvit_jax.main',
      f'--config={config}',
      f'--workdir={workdir}',
      '--config.total_steps=1000000',
      '--config.eval.every_steps=0',
      f'--config.log_every_steps={after_step}',
      '--config.checkpoint_every_steps=1000000',
    ]
    cmd += [f'--config.{kv}' for kv in overrides]
    print('[stop_latency] ' + ' '.join(cmd), flush=True)
    proc = subprocess.Popen(
      cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in proc.stdout:
      seen.append(line)
      if line.startswith(f'step {after_step}/'):
        break
    else:
      raise RuntimeError('the run ended before step %d:\n%s' % (after_step, ''.join(seen[-20:])))
    time.sleep(wait)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    code = proc.wait()
    exit_s = time.time() - t0
    saved = re.findall(r'saved step (\d+)', rest)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rates = [json.loads(line).get('images_per_s') for line in f]
    rates = [r for r in rates if r is not None]
  return {
    'exit_s': round(exit_s, 1),
    'saved_step': int(saved[-1]) if saved else None,
    'returncode': code,
    'images_per_s': [round(r, 1) for r in rates],
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/synthetic_groupvit.py')
  parser.add_argument(
    '--after-step',
    type=int,
    default=50,
    help="send SIGTERM after this step's log line (also the log interval)",
  )
  parser.add_argument('--wait', type=float, default=20.0, help='seconds after that line')
  parser.add_argument(
    '--set', action='append', default=[], metavar='KEY=VALUE', help='config override (repeatable)'
  )
  args = parser.parse_args(argv)
  result = measure(args.config, args.after_step, args.wait, args.set)
  print(
    'command: python benchmarks/stop_latency.py '
    f'{" ".join(argv if argv is not None else sys.argv[1:])}'
  )
  print(
    f'SIGTERM {args.wait:.0f} s after the step-{args.after_step} log line: exited '
    f'{result["exit_s"]} s later (code {result["returncode"]}), saved step '
    f'{result["saved_step"]}; logged images/s {result["images_per_s"]}'
  )


if __name__ == '__main__':
  main()
