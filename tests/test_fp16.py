"""The float16 code path (a CUDA GPU without bf16, where dtype='auto' picks float16) on the CPU:
common.setup_device is patched to answer float16 with CPU autocast, and torch.amp.GradScaler (which
common.grad_scaler builds) to give an enabled GradScaler that records its calls. The scripts run in-process (runpy) so the patches
reach them."""
import json
import os
import runpy
import sys

import pytest
import torch

import common
from conftest import ROOT, make_hf_gpt2
from test_reward import synthetic_pairs


class SpyScaler(torch.amp.GradScaler):
    """An enabled CPU GradScaler that appends the name of each call (and of grad clipping) to `calls`."""

    def __init__(self, calls):
        super().__init__('cpu', enabled=True)
        self.calls = calls

    def scale(self, outputs):
        self.calls.append('scale')
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls.append('unscale_')
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append('step')
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append('update')
        return super().update(new_scale)


@pytest.fixture
def float16(monkeypatch):
    """Call float16() to switch the float16 path on; returns the list of the scaler's calls."""
    calls = []

    def on():
        monkeypatch.setattr(common, 'setup_device',
                            lambda device, dtype: ('cpu', 'cpu', 'float16', torch.autocast('cpu', dtype=torch.float16)))
        # the real common.grad_scaler (its resume logic included) builds the spy instead of a disabled CPU scaler
        monkeypatch.setattr(torch.amp, 'GradScaler', lambda *args, **kwargs: SpyScaler(calls))
        clip = torch.nn.utils.clip_grad_norm_
        monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', lambda *a, **k: calls.append('clip') or clip(*a, **k))
        return calls
    return on


def run_script(monkeypatch, script, args):
    monkeypatch.setattr(sys, 'argv', [script, *args])
    runpy.run_path(os.path.join(ROOT, script), run_name='__main__')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('fp16')
    make_hf_gpt2(str(d / 'hf'), vocab_size=50257, n_positions=64, n_embd=32)
    (d / 'pref.jsonl').write_text('\n'.join(json.dumps(r) for r in synthetic_pairs(16)))
    sft = [{'prompt': r['prompt'], 'response': r['chosen']} for r in synthetic_pairs(16)]
    (d / 'sft.jsonl').write_text('\n'.join(json.dumps(r) for r in sft))
    (d / 'prompts.jsonl').write_text('\n'.join(json.dumps({'prompt': f'Once upon a time {i}'}) for i in range(8)))
    (d / 'rewards.py').write_text('def length(prompts, responses):\n    return [len(r) / 10 for r in responses]\n')
    return d


def script_args(script, d):
    common_args = [f'--init_from={d / "hf"}', '--device=cpu', '--block_size=64', '--eval_interval=2', '--eval_iters=1']
    if script == 'train.py':
        return common_args + [f'--sft_data={d / "sft.jsonl"}', '--batch_size=4', '--gradient_accumulation_steps=2',
                              '--compile=False', '--warmup_iters=0', '--lr_decay_iters=4', '--val_fraction=0.25']
    return common_args + [f'--pref_data={d / "pref.jsonl"}', '--pref_val_data=', '--batch_size=4',
                          '--gradient_accumulation_steps=2'] + (['--norm_samples=4'] if script == 'reward_train.py' else [])


@pytest.mark.parametrize('script', ['train.py', 'reward_train.py', 'dpo_train.py'])
def test_a_bf16_or_fp32_checkpoint_resumes_under_float16(data, tmp_path, monkeypatch, float16, script):
    """A checkpoint written without loss scaling (fp32, bf16, CPU: the disabled GradScaler's state is
    {}) resumes under float16 (another GPU, dtype='auto'), with a fresh scaler; it was GradScaler's
    RuntimeError 'The source state dict is empty'. Then each step goes scale, unscale_, clip, step, update."""
    monkeypatch.chdir(tmp_path)
    out = f'--out_dir={tmp_path / "out"}'
    run_script(monkeypatch, script, script_args(script, data) + [out, '--max_iters=2'])
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=False)['scaler'] == {}
    calls = float16()
    run_script(monkeypatch, script, script_args(script, data) + [out, '--max_iters=4', '--init_from=resume'])
    assert calls == ['scale', 'scale', 'unscale_', 'clip', 'step', 'update'] * 2
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=False)['scaler']['scale'] == 2.0 ** 16


def test_ppo_scales_the_loss_under_float16(data, tmp_path, monkeypatch, float16):
    """ppo_train.py under float16 scales the loss (without a GradScaler, fp16 gradients underflow to 0
    silently), unscales before clipping, and keeps the scaler in its checkpoint for an exact resume."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(data))
    calls = float16()
    args = [f'--init_from={data / "hf"}', f'--prompt_data={data / "prompts.jsonl"}', '--reward_fn=rewards:length',
            '--device=cpu', '--block_size=64', '--max_new_tokens=4', '--batch_size=4', '--mini_batch_size=2',
            '--ppo_epochs=1', '--max_iters=2', '--eval_interval=1', '--sample_interval=0', f'--out_dir={tmp_path / "out"}']
    run_script(monkeypatch, 'ppo_train.py', args)
    assert calls == ['scale', 'unscale_', 'clip', 'step', 'update'] * 4
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=False)['scaler']['scale'] == 2.0 ** 16
    run_script(monkeypatch, 'ppo_train.py', args + ['--max_iters=3', '--init_from=resume'])
    assert calls[20:] == ['scale', 'unscale_', 'clip', 'step', 'update'] * 2
