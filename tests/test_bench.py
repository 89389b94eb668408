"""bench.py --scripts on CPU: the real training scripts, in one process, on a tiny random GPT-2 and
synthetic data (nothing downloaded), read back into one table. (--plan is in test_memory.py.)"""
import math
import os
import sys

from common import Logger
from conftest import ROOT, load_definitions, run_python


def bench(*args):  # PyTorch's default threads: on 2 cores faster than one (27 -> 17 s here)
    return run_python([sys.executable, 'bench.py', '--scripts', *args], cwd=ROOT,
                      capture_output=True, text=True, timeout=600)


def test_scripts_table_on_cpu():
    """A row per entry with a finite positive step time and tokens/s and the planner's prediction;
    --cap_gb is CUDA only (a note on CPU, not an error); the cached/online DPO ratio is printed."""
    p = bench('--only=pretrain,dpo,dpo_cached', '--iters=2', '--warmup=1', '--cap_gb=24')
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert 'note: --cap_gb applies on CUDA only; ignored on cpu' in p.stdout
    lines = p.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('entry'))
    assert lines[header].split() == ['entry', 'script', 'step', 'ms', 'tokens/s', 'MFU', 'peak', 'GiB',
                                     'predicted', 'meas/pred', 'status']
    rows = {line.split()[0]: line.split() for line in lines[header + 1:header + 4]}
    assert list(rows) == ['pretrain', 'dpo', 'dpo_cached']
    for name, (_, script, step_ms, tokens_per_s, mfu, peak, predicted, ratio, status) in rows.items():
        assert script == ('train.py' if name == 'pretrain' else 'dpo_train.py')
        assert math.isfinite(float(step_ms)) and float(step_ms) > 0
        assert math.isfinite(float(tokens_per_s)) and float(tokens_per_s) > 0
        assert 0 < float(predicted) < 5  # GiB: a 4-layer, 64-wide GPT-2 with its 50257-token vocabulary
        assert (mfu, peak, ratio, status) == ('-', '-', '-', 'ok')  # measured memory and MFU: CUDA only
    assert any(line.startswith('DPO cached/online reference (step time ratio)') for line in lines)


def test_scripts_unknown_entry_is_one_clear_line():
    p = bench('--only=pretrain,dpoo')
    assert p.returncode == 1
    assert p.stderr.strip() == ("error: --only: unknown entries dpoo; choose among "
                                "pretrain, sft, reward, dpo, dpo_cached, ppo, trl")


def test_scripts_bad_counts_are_one_clear_line():
    """Refused before any work: threads=-1 was a RuntimeError traceback from torch.set_num_threads,
    repeats=0 printed every entry 'ok' with no numbers, iters=-3 ran with eval_interval=-1."""
    for flag, message in (('--threads=-1', 'threads=-1 must be >= 0'), ('--repeats=0', 'repeats=0 must be >= 1'),
                          ('--iters=-3', 'iters=-3 must be >= 0'), ('--warmup=-1', 'warmup=-1 must be >= 0'),
                          ('--cap_gb=-2', 'cap_gb=-2.0 must be >= 0')):
        p = bench('--only=reward', flag)
        assert p.returncode == 1 and p.stderr.strip() == f"error: {message}", (flag, p.stdout[-2000:], p.stderr[-2000:])


def test_default_mode_bad_counts_are_one_clear_line():
    for flag, message in (('--threads=-1', 'threads=-1 must be >= 0'), ('--repeats=0', 'repeats=0 must be >= 1'),
                          ('--iters=0', 'iters=0 must be >= 1'), ('--warmup=-1', 'warmup=-1 must be >= 0')):
        p = run_python([sys.executable, 'bench.py', flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and p.stderr.strip() == f"error: {message}", (flag, p.stdout[-2000:], p.stderr[-2000:])


def test_scripts_trl_alone_is_one_clear_line():
    p = bench('--only=trl')  # it printed an empty table: trl is timed next to dpo/dpo_cached only
    assert p.returncode == 1 and p.stderr.strip().startswith("error: --only=trl times TRL's DPOTrainer"), p.stderr


def test_default_mode_refuses_sampling_longer_than_block_size():
    """A prompt plus new tokens past block_size: one line before any work (HF's generate crashed
    after the training timing, and ours would have timed its no-cache path)."""
    p = run_python([sys.executable, 'bench.py', '--block_size=128'], cwd=ROOT, capture_output=True, text=True,
                   timeout=120)
    assert p.returncode == 1 and p.stderr.strip() == ('error: gen_prompt_len + gen_tokens = 192 must fit '
                                                      'block_size=128'), p.stderr[-2000:]


def test_default_mode_ours_vs_hf_runs():
    """The default mode on a 1-layer model: both rows and the same training loss. Regression:
    GPT.configure_optimizers(hf_model) raised AttributeError (no param_groups on HF's model), so
    `python bench.py` failed before printing anything."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = run_python([sys.executable, 'bench.py', '--n_layer=1', '--n_head=2', '--n_embd=64', '--block_size=32',
                        '--repeats=1', '--gen_tokens=8', '--gen_prompt_len=16', '--threads=1'], cwd=ROOT,
                   capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    losses = next(line for line in p.stdout.splitlines() if line.startswith('train loss after the last step'))
    ours, hf = (float(x.split()[-1]) for x in losses.split(':', 1)[1].split(','))
    assert abs(ours - hf) < 1e-4
    assert 'greedy tokens identical: 100.0%' in p.stdout
    assert any(line.startswith('train tokens/s') for line in p.stdout.splitlines())
    assert any(line.startswith('sample tokens/s') for line in p.stdout.splitlines())


def test_logged_speed_medians_after_warmup(tmp_path):
    """logged_speed reads a script's log.csv (common.read_log): the medians of time_ms and
    tokens_per_s over the iterations after the first `warmup`; eval rows (no time_ms, possibly the
    same step as a train row) do not count; None without a log, without a row, or with no
    iteration left."""
    logged_speed = load_definitions(os.path.join(ROOT, 'bench.py'), 'logged_speed').logged_speed
    log = Logger(str(tmp_path / 'run' / 'log.csv'))
    assert logged_speed(str(tmp_path / 'run'), 0) is None  # the header only: stopped before its first iteration
    for step, ms, tokens_per_s in [(0, 90.0, 10.0), (1, 10.0, 300.0), (2, 20.0, 200.0), (3, 40.0, 50.0)]:
        if step % 2 == 0:
            log.log({'val/loss': 2.0, 'lr': 1e-3}, step)  # an eval row, as train.py logs before its step
        log.log({'train/loss_step': 2.0, 'time_ms': ms, 'tokens_per_s': tokens_per_s}, step)
    assert logged_speed(str(tmp_path / 'run'), 1) == (20.0, 200.0, 3)  # step 0 (warmup) left out
    assert logged_speed(str(tmp_path / 'run'), 0) == (30.0, 125.0, 4)
    assert logged_speed(str(tmp_path / 'run'), 4) is None
    assert logged_speed(str(tmp_path / 'nowhere'), 0) is None
