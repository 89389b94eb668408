"""ppo_train.py with LoRA and dropout, end to end on a tiny random GPT-2 (CPU, seconds): a LoRA SFT
checkpoint as init_from stays the reference, and no dropout makes each rollout's first ratio 1."""
import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from conftest import ROOT, make_hf_gpt2
from model import GPT

REWARDS = 'def length_mod_3(prompts, responses):\n    return [float(len(r) % 3) for r in responses]\n'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp('ppo_lora')
    make_hf_gpt2(str(d / 'hf'), vocab_size=50257, n_positions=64, n_embd=32)
    return d


def lora_checkpoint(tiny, name, lora_dropout=0.0):
    """A checkpoint of this project with TRAINED LoRA adapters (lora_B != 0), as train.py writes
    for config/sft_gpt2large_lora.py, the init_from of config/ppo_gpt2large.py and grpo_gpt2large.py."""
    m = GPT.from_pretrained(str(tiny / 'hf'), lora_rank=4, lora_alpha=8.0, lora_dropout=lora_dropout)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith('lora_B'):
                p.normal_(0, 0.3)
    os.makedirs(tiny / name, exist_ok=True)
    torch.save({'model': m.state_dict(), 'model_args': asdict(m.config)}, tiny / name / 'ckpt.pt')
    return m, str(tiny / name)


def run_ppo(tmp_path, args):
    (tmp_path / 'rewards.py').write_text(REWARDS)
    (tmp_path / 'prompts.jsonl').write_text('\n'.join(json.dumps({'prompt': f'Once upon a time {i}'}) for i in range(64)))
    base = ['--prompt_data=prompts.jsonl', '--reward_fn=rewards:length_mod_3', '--device=cpu', '--block_size=64',
            '--max_new_tokens=8', '--temperature=1.0', '--missing_eos_penalty=0.0', '--kl_coef=0.01',
            '--sample_interval=0', '--out_dir=out', '--batch_size=8']
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'ppo_train.py'), *base, *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    return list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))


@pytest.mark.parametrize('ref_dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('rank', [4, 2])
def test_lora_ppo_from_a_lora_sft_checkpoint_keeps_it_as_the_reference(tiny, tmp_path, ref_dtype, rank):
    """LoRA PPO's reference is the policy with its adapters disabled. When init_from already has
    trained adapters (the documented pipeline sft_gpt2large_lora -> ppo_gpt2large), disabling them
    gave the BASE model, not the SFT policy: the KL to the reference was not 0 before any update
    (iteration 0 stopped with 'KL to the reference is 1.62e+00', or, with ref_dtype='bfloat16',
    which skipped that check, PPO silently penalised the distance to the pre-SFT base).
    Expected: the KL of iteration 0 is exactly 0 (reference = init_from's function), with PPO's own
    lora_rank equal to or different from the checkpoint's."""
    sft, path = lora_checkpoint(tiny, 'sft_lora')
    rows = run_ppo(tmp_path, [f'--init_from={path}', f'--lora_rank={rank}', '--lora_alpha=8.0', f'--ref_dtype={ref_dtype}',
                              '--mini_batch_size=4', '--learning_rate=1e-3', '--max_iters=1', '--eval_interval=1'])
    assert float(rows[0]['objective/kl']) == 0.0
    # the trained policy's adapters-off model is the SFT policy (its adapters merged), not the base
    policy, _ = GPT.from_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))
    ids = torch.randint(50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), policy.disable_adapters():
        torch.testing.assert_close(policy.eval()(ids)[0], sft.eval()(ids)[0], atol=1e-4, rtol=0)


def test_ppo_update_has_no_dropout_so_each_rollouts_first_ratio_is_1(tiny, tmp_path):
    """The PPO epochs ran in train mode (policy.train()), so LoRA dropout was active in the update
    but not in the rollout that computed old_logp: with one mini-batch step per rollout (weights
    unchanged since old_logp) the ratio must be exactly 1, but was not. Shown with an init_from
    whose adapters carry lora_dropout=0.5 (here before the fix: iteration 0 stopped on 'first PPO
    ratio is ..., not 1'); with --lora_rank=4 --lora_dropout=0.5 the same happened silently from
    iteration 1 on (ratio_max 1.094, approxkl 5.5e-4 at iteration 1 with learning_rate=1e-2)."""
    _, path = lora_checkpoint(tiny, 'sft_lora_dropout', lora_dropout=0.5)
    rows = run_ppo(tmp_path, [f'--init_from={path}', '--mini_batch_size=8', '--ppo_epochs=1', '--learning_rate=1e-2',
                              '--max_iters=3', '--eval_interval=3'])
    assert float(rows[-1]['objective/kl']) != 0.0  # the policy moved
    for r in rows:
        assert float(r['policy/ratio_max']) == 1.0 and float(r['policy/approxkl']) == 0.0, r


def test_ppo_refuses_lora_dropout(tiny, tmp_path):
    (tmp_path / 'rewards.py').write_text(REWARDS)
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'ppo_train.py'), f'--init_from={tiny / "hf"}',
                        '--reward_fn=rewards:length_mod_3', '--lora_rank=4', '--lora_dropout=0.5', '--device=cpu'],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and 'lora_dropout=0.5: PPO runs without dropout' in p.stderr, p.stderr[-1500:]
