"""train.py under torchrun: 2 CPU processes with the gloo backend, as nanoGPT runs DDP.

What is and is not equal between 2 ranks x accumulation k/2 and 1 process x accumulation k:
- The data is not: rank r draws its batches from its own generator seeded with seed + r (nanoGPT
  seeds each rank differently so the ranks do not train on the same batches), so a 2-rank run
  sees rank 0's k/2 batches plus rank 1's k/2, where one process sees the first k of seed's stream.
  Their loss curves differ; test_ddp_iteration_0_loss recomputes the 2-rank figure exactly.
- The arithmetic is: the gradient of an iteration is the mean over all k micro-batches either way
  (each rank averages its k/2, DDP averages the ranks). With data where every batch is the same
  sequence, the two runs give the same curve and weights up to float summation order.
"""
import csv
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import state_sha256
from conftest import ROOT, SHARED
from model import GPT, GPTConfig

BLOCK, BATCH, SEED = 32, 4, 1337
TINY = ['--device=cpu', '--backend=gloo', '--compile=False', '--eval_iters=2', f'--block_size={BLOCK}',
        f'--batch_size={BATCH}', '--n_layer=2', '--n_head=2', '--n_embd=32', '--warmup_iters=2',
        '--learning_rate=1e-2', '--min_lr=1e-3', '--gradient_accumulation_steps=4']


def write_dataset(d, name, ids):
    os.makedirs(d / 'data' / name)
    ids.astype(np.uint16).tofile(d / 'data' / name / 'train.bin')
    ids.astype(np.uint16).tofile(d / 'data' / name / 'val.bin')
    import pickle
    with open(d / 'data' / name / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': 65}, f)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """data/chars: 40k characters of Shakespeare; data/one: block_size + 1 of them, so that every
    batch is the same sequence whatever generator draws it."""
    d = tmp_path_factory.mktemp('ddp')
    full = open(os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')).read()
    stoi = {c: i for i, c in enumerate(sorted(set(full)))}  # the 65 characters
    ids = np.array([stoi[c] for c in full[:40_000]])
    write_dataset(d, 'chars', ids)
    write_dataset(d, 'one', ids[:BLOCK + 1])
    return d


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def train(args, cwd, nproc=2):
    """train.py with `args`, under torchrun with nproc CPU processes (nproc=1: plain python)."""
    launch = [sys.executable] if nproc == 1 else [
        sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', f'--nproc_per_node={nproc}',
        '--master_addr=127.0.0.1', f'--master_port={free_port()}']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.run([*launch, os.path.join(ROOT, 'train.py'), *TINY, *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise AssertionError(f"train.py failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def curve(out_dir, column='train/loss_step'):
    rows = list(csv.DictReader(open(os.path.join(out_dir, 'log.csv'))))
    return [(int(r['step']), float(r[column])) for r in rows if r[column]]


def test_ddp_ranks_end_with_identical_weights(workdir):
    out = str(workdir / 'out-ddp')
    p = train(['--dataset=chars', f'--out_dir={out}', '--dropout=0.1', '--max_iters=6', '--eval_interval=3'], workdir)
    # each rank hashes its own replica at the end; rank 0 prints them all
    line = [l for l in p.stdout.splitlines() if l.startswith('DDP: parameter sha256 per rank:')]
    assert len(line) == 1, p.stdout
    hashes = line[0].split(':')[-1].split()
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=False)
    assert len(hashes) == 2 and hashes[0] == hashes[1] == state_sha256(ckpt['model'])[:16]
    assert ckpt['iter_num'] == 6
    # only rank 0 logs: one row per step, not one per rank
    steps = [s for s, _ in curve(out)]
    assert steps == list(range(6))
    assert p.stdout.count('saving checkpoint') == 2  # iterations 3 and 6, by rank 0 only
    # every rank's RNGs are in the checkpoint, and the ranks' batch generators differ
    states = ckpt['rank_states']
    assert len(states) == 2 and not torch.equal(states[0]['train_gen'], states[1]['train_gen'])
    assert torch.equal(states[0]['train_gen'], ckpt['train_gen'])


def test_ddp_iteration_0_loss(workdir):
    """The logged loss of iteration 0 is the mean over rank 0's 2 batches (seed) and rank 1's 2
    (seed + 1): accumulation 4 is split 2 + 2 across the ranks, and the ranks see different data."""
    out = str(workdir / 'out-ddp0')
    train(['--dataset=chars', f'--out_dir={out}', '--max_iters=1', '--eval_interval=1'], workdir)
    logged = curve(out)[0]
    torch.manual_seed(SEED)  # train.py's initialisation on rank 0, which DDP broadcasts
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, bias=False, vocab_size=65, dropout=0.0))
    data = np.fromfile(workdir / 'data' / 'chars' / 'train.bin', dtype=np.uint16).astype(np.int64)

    def batch_losses(seed, n):
        gen, out = torch.Generator().manual_seed(seed), []
        for _ in range(n):  # train.py's get_batch
            ix = torch.randint(len(data) - BLOCK, (BATCH,), generator=gen)
            x = torch.stack([torch.from_numpy(data[i:i + BLOCK]) for i in ix])
            y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK]) for i in ix])
            with torch.no_grad():
                logits, _ = model(x)
            out.append(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
        return out

    ddp = np.mean(batch_losses(SEED, 2) + batch_losses(SEED + 1, 2))
    one_process = np.mean(batch_losses(SEED, 4))  # what python train.py with accumulation 4 would log
    assert logged == (0, pytest.approx(ddp, abs=1e-5))
    assert abs(ddp - one_process) > 1e-4  # different data, so not the single-process figure


def test_two_ranks_equal_one_process_on_identical_batches(workdir):
    """2 ranks x 2 micro-batches = 1 process x 4 when every batch is the same: the same losses and
    weights, to float rounding (the sums run in another order)."""
    args = ['--dataset=one', '--max_iters=5', '--eval_interval=5']
    one, two = str(workdir / 'out-one'), str(workdir / 'out-two')
    train(args + [f'--out_dir={one}'], workdir, nproc=1)
    train(args + [f'--out_dir={two}'], workdir, nproc=2)
    a, b = curve(one), curve(two)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(5))
    assert a[-1][1] < a[0][1] - 0.5  # it trains
    np.testing.assert_allclose([l for _, l in b], [l for _, l in a], rtol=1e-5)
    sd_a = torch.load(os.path.join(one, 'ckpt.pt'), weights_only=False)['model']
    sd_b = torch.load(os.path.join(two, 'ckpt.pt'), weights_only=False)['model']
    for k in sd_a:
        torch.testing.assert_close(sd_b[k], sd_a[k], atol=1e-5, rtol=1e-4)


def test_ddp_resume_continues_every_rank_exactly(workdir):
    """Regression: a resumed DDP run set every rank's batch generator to rank 0's saved state, so
    after a resume all ranks trained on the same batches. Now each rank restores its own."""
    args = ['--dataset=chars', '--dropout=0.1', '--eval_interval=3', '--lr_decay_iters=6']
    straight, resumed = str(workdir / 'out-straight'), str(workdir / 'out-resumed')
    train(args + [f'--out_dir={straight}', '--max_iters=6'], workdir)
    train(args + [f'--out_dir={resumed}', '--max_iters=3'], workdir)
    train(args + [f'--out_dir={resumed}', '--max_iters=6', '--init_from=resume'], workdir)
    a, b = curve(straight), curve(resumed)
    assert [s for s, _ in b] == list(range(6))
    assert a == b  # bit-identical, dropout included
    sd_a = torch.load(os.path.join(straight, 'ckpt.pt'), weights_only=False)['model']
    sd_b = torch.load(os.path.join(resumed, 'ckpt.pt'), weights_only=False)['model']
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


@pytest.mark.parametrize('script', ['reward_train.py', 'dpo_train.py', 'ppo_train.py'])
def test_scripts_without_ddp_refuse_torchrun(workdir, script):
    """They have no DDP: under torchrun every copy would train alone and write the same out_dir."""
    env = dict(os.environ, RANK='0', LOCAL_RANK='0', WORLD_SIZE='2')  # what torchrun sets
    p = subprocess.run([sys.executable, os.path.join(ROOT, script)], cwd=workdir, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [f'error: {script} runs in one process (only train.py has DDP): '
                                             'start it with python, not torchrun']
