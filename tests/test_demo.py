"""The one-command demo (demo.py), shrunk with --quick=True: every stage runs one of the project's
scripts and leaves its output; the evaluation has one row per policy; a second run skips every
stage that has its output."""
import csv
import json
import os
import subprocess
import sys

from conftest import ROOT, SHARED

INPUT = os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')


def test_demo_pipeline_end_to_end(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'demo.py'), '--quick=True', '--envelope_seeds=1', f'--input_txt={INPUT}']
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = tmp_path / 'out-demo'
    for path in ['pretrain/ckpt.pt', 'reward/best.pt', 'dpo_beta0.1/ckpt.pt', 'dpo_beta0.5/ckpt.pt',
                 'ppo/ckpt.pt', 'grpo/ckpt.pt', 'ppo/log.csv', 'prompts_train.jsonl']:
        assert (out / path).is_file(), path
    pairs = [json.loads(line) for line in open(out / 'pairs.jsonl')]
    assert pairs and all(p['chosen'] != p['rejected'] and p['chosen_reward'] >= p['rejected_reward'] for p in pairs)
    rows = list(csv.DictReader(open(out / 'eval.csv')))
    assert [r['policy'] for r in rows] == ['pretrained', 'dpo beta=0.1', 'dpo beta=0.5', 'ppo', 'grpo']
    assert float(rows[0]['kl']) == 0.0  # the reference against itself
    for r in rows:
        assert int(r['n']) == 16 and float(r['kl_se']) >= 0 and 0 <= float(r['eos_rate']) <= 1
    for algo, metric in [('ppo', 'true_reward/median'), ('grpo', 'objective/kl/max'), ('dpo', 'rewards/margins/min')]:
        rows = list(csv.DictReader(open(out / f'envelope_{algo}.csv')))
        assert rows and metric in rows[0] and (all if algo != 'dpo' else any)(r[metric] != '' for r in rows)
        # (DPO logs its train metrics every log_interval steps; its eval-only steps have them empty)
    # a second run: every stage is skipped, only the evaluation runs again
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count('exists, skipped') == 8, p.stdout  # data, pretrain, pairs, reward, 2 x DPO, PPO, GRPO
    assert p.stdout.count('$ ') == 0, p.stdout  # and the envelope's runs are not repeated
