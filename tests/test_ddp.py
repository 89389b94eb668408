"""train.py, reward_train.py and dpo_train.py under torchrun: 2 CPU processes with the gloo
backend, as nanoGPT runs DDP. The ranks are forked by tests/forkserver.py with the environment
torchrun gives them (conftest.run_python; ~5 s less a launch); test_ddp_ranks_end_with_identical_weights
runs the real torchrun.

What is and is not equal between 2 ranks x accumulation k/2 and 1 process x accumulation k:
- For SFT examples and preference pairs everything is: the ranks split each epoch's micro-batches
  (common.EpochBatches), test_dpo_train_two_ranks_equal_one_process.
- In pretraining the data is not: rank r draws its batches from the global RNG seeded with seed + r
  (nanoGPT seeds each rank differently so the ranks do not train on the same batches), so a 2-rank
  run sees rank 0's k/2 batches plus rank 1's k/2, where one process sees k of seed's stream.
  Their loss curves differ; test_ddp_iteration_0_loss recomputes the 2-rank figure exactly.
- The arithmetic is: the gradient of an iteration is the mean over all k micro-batches either way
  (each rank averages its k/2, DDP averages the ranks). With data where every batch is the same
  sequence, the two runs give the same curve and weights up to float summation order.
"""
import csv
import json
import math
import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import GPT2Tokenizer, load_preference_pairs, preference_logps, state_sha256, stream_seed
from conftest import ROOT, SHARED, make_hf_gpt2, run_python
from model import GPT, GPTConfig

BLOCK, BATCH, SEED = 32, 4, 1337
SPEED = ('time_ms', 'tokens_per_s', 'mem/peak_gib')  # wall-clock columns: never equal between runs
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


def launch(script, args, cwd, nproc=2, check=True, fresh=False):
    """`script` with `args`, under torchrun with nproc CPU processes (nproc=1: plain python). The
    ranks are forked by the tests' fork server with torchrun's environment (conftest.run_python);
    fresh=True runs the real torchrun."""
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', f'--nproc_per_node={nproc}',
        '--master_addr=127.0.0.1', f'--master_port={free_port()}']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = run_python([*launcher, os.path.join(ROOT, script), *args], cwd=cwd, env=env,
                   capture_output=True, text=True, timeout=300, fresh=fresh)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def train(args, cwd, nproc=2, fresh=False):
    return launch('train.py', TINY + args, cwd, nproc, fresh=fresh)


def rank_hashes(stdout):
    """The sha256 prefixes of every rank's final weights, from the one line rank 0 prints."""
    lines = [l for l in stdout.splitlines() if l.startswith('DDP: parameter sha256 per rank:')]
    assert len(lines) == 1, stdout
    return lines[0].split(':')[-1].split()


def curve(out_dir, column='train/loss_step'):
    rows = list(csv.DictReader(open(os.path.join(out_dir, 'log.csv'))))
    return [(int(r['step']), float(r[column])) for r in rows if r[column]]


def test_ddp_ranks_end_with_identical_weights(workdir):
    out = str(workdir / 'out-ddp')
    p = train(['--dataset=chars', f'--out_dir={out}', '--dropout=0.1', '--max_iters=6', '--eval_interval=3'], workdir,
              fresh=True)  # the real torchrun (the other tests fork its ranks)
    hashes = rank_hashes(p.stdout)  # each rank hashes its own replica at the end; rank 0 prints them all
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=False)
    assert len(hashes) == 2 and hashes[0] == hashes[1] == state_sha256(ckpt['model'])[:16]
    assert ckpt['iter_num'] == 6
    # only rank 0 logs: one row per step, not one per rank
    steps = [s for s, _ in curve(out)]
    assert steps == list(range(6))
    assert p.stdout.count('saving checkpoint') == 2  # iterations 3 and 6, by rank 0 only
    # every rank's RNGs are in the checkpoint, and the ranks' streams differ (batches and dropout)
    states = ckpt['rank_states']
    assert len(states) == 2 and not torch.equal(states[0]['rng']['torch'], states[1]['rng']['torch'])
    assert torch.equal(states[0]['rng']['torch'], ckpt['rng']['torch'])


def test_ddp_iteration_0_loss(workdir):
    """The logged loss of iteration 0 is the mean over rank 0's 2 batches and rank 1's 2: accumulation
    4 is split 2 + 2 across the ranks, and rank r draws from the global RNG seeded seed + r after its
    weight init, in nanoGPT's order (rank 0: the first batch, the eval's 2 x eval_iters, the next)."""
    out = str(workdir / 'out-ddp0')
    train(['--dataset=chars', f'--out_dir={out}', '--max_iters=1', '--eval_interval=1'], workdir)
    logged = curve(out)[0]
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, bias=False, vocab_size=65, dropout=0.0)
    torch.manual_seed(SEED)
    model = GPT(config)  # train.py's initialisation on rank 0, which DDP broadcasts
    data = np.fromfile(workdir / 'data' / 'chars' / 'train.bin', dtype=np.uint16).astype(np.int64)

    def draw():  # train.py's get_batch (train.bin and val.bin are the same here)
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        return torch.stack([torch.from_numpy(data[i:i + BLOCK]) for i in ix]), \
            torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK]) for i in ix])

    def rank_batches(rank, n, evaluates):
        torch.manual_seed(SEED + rank)
        GPT(config)  # every rank initialises a model (drawing from its stream) before DDP broadcasts rank 0's
        batches = [draw()]
        if evaluates:  # rank 0 evaluates at iteration 0: train and val, eval_iters=2 batches each
            [draw() for _ in range(4)]
        return batches + [draw() for _ in range(n - 1)]

    def loss(batches):
        with torch.no_grad():
            return np.mean([F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item() for x, y in batches])

    ddp = np.mean([loss(rank_batches(0, 2, True)), loss(rank_batches(1, 2, False))])
    one_process = loss(rank_batches(0, 4, True))  # what python train.py with accumulation 4 would log
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


# ----------------------------------------------------------------------------------------------
# reward_train.py and dpo_train.py: 2 ranks on yes/no preference pairs (chosen ' yes', rejected ' no')

PREF_ARGS = ['--device=cpu', '--backend=gloo', '--init_from=init', '--pref_data=pref.jsonl', '--pref_val_data=',
             '--val_fraction=0.2', '--block_size=16', '--batch_size=8', '--gradient_accumulation_steps=2',
             '--learning_rate=1e-2', '--min_lr=1e-3', '--warmup_iters=0', '--lr_decay_iters=6', '--max_iters=6',
             '--eval_interval=3', '--eval_iters=3']
WORDS = ['apple', 'banana', 'cherry', 'grape', 'lemon', 'mango', 'peach', 'pear', 'plum', 'kiwi',
         'chair', 'table', 'river', 'cloud', 'stone', 'shoe', 'lamp', 'door', 'road', 'book']


@pytest.fixture(scope='module')
def prefdir(tmp_path_factory):
    """pref.jsonl (100 pairs) and init/ (a tiny random GPT-2 with GPT-2's vocabulary, saved as this
    project's checkpoint so the subprocesses need not import transformers)."""
    from dataclasses import asdict
    d = tmp_path_factory.mktemp('ddp-pref')
    records = [{'prompt': f"Q: {w}{p}", 'chosen': ' yes', 'rejected': ' no'} for w in WORDS for p in '?!.:;']
    (d / 'pref.jsonl').write_text('\n'.join(json.dumps(r) for r in records))
    make_hf_gpt2(str(d / 'init-hf'), n_embd=16, vocab_size=50257, n_positions=16)
    model = GPT.from_pretrained(str(d / 'init-hf'))
    os.makedirs(d / 'init')
    torch.save({'model': model.state_dict(), 'model_args': asdict(model.config)}, d / 'init' / 'ckpt.pt')
    return d


def log_rows(out_dir):
    """{step: {metric: float}} of log.csv; also checks that no step was logged twice (one writer)."""
    rows = {}
    for r in csv.DictReader(open(os.path.join(out_dir, 'log.csv'))):
        values = {k: float(v) for k, v in r.items() if v and k != 'step'}
        twice = set(values) & set(rows.get(int(r['step']), {})) - {'lr', 'time_ms'}  # lr: eval and train rows
        assert not twice, f"step {r['step']}: {twice} logged twice"
        rows.setdefault(int(r['step']), {}).update(values)
    return rows


def test_reward_train_ddp(prefdir):
    """Both ranks end bit-identical although they train on different pairs with different dropout
    masks: the gradients are all-reduced (regression: the reward forward called model.trunk(), which
    DDP does not see, so no gradient would be synchronised). Only rank 0 writes, once per step."""
    out = prefdir / 'out-reward'
    p = launch('reward_train.py', PREF_ARGS + [f'--out_dir={out}', '--dropout=0.1', '--chosen_lm_coef=0.1',
                                               '--norm_samples=16'], prefdir)
    hashes = rank_hashes(p.stdout)
    ckpt = torch.load(out / 'ckpt.pt', weights_only=False)
    assert len(hashes) == 2 and hashes[0] == hashes[1] == state_sha256(ckpt['model'])[:16]
    assert ckpt['iter_num'] == 6 and ckpt['reward_std'] > 0  # rank 0 normalised after training
    states = ckpt['rank_states']  # every rank's RNGs, and they differ (seed + rank)
    assert len(states) == 2 and not torch.equal(states[0]['rng']['torch'], states[1]['rng']['torch'])
    assert sorted(os.listdir(out)) == ['best.pt', 'ckpt.pt', 'log.csv']
    assert p.stdout.count('iter 0:') == 1 and p.stdout.count('reward mean') == len(os.listdir(out)) - 1
    rows = log_rows(out)
    assert sorted(s for s, r in rows.items() if 'train/loss' in r) == list(range(6))
    assert all(math.isfinite(v) for r in rows.values() for v in r.values())
    assert rows[0]['val/accuracy'] == 0.5 and rows[6]['val/accuracy'] > 0.5  # zero head ties, then it learns


def test_dpo_train_ddp_cached_reference(prefdir):
    """The ranks share the reference's forward passes and rank 0 writes the cache: it equals the
    log-probs of one process. The ranks split each epoch (rank r takes micro-batches r, r + 2, ...
    of seed 1337's epoch-0 order) and the logged metrics are means over both ranks' pairs: at iteration 0
    logps/chosen is the initial policy's mean over the order's first 8 pairs, 4 from each rank."""
    out = prefdir / 'out-dpo'
    p = launch('dpo_train.py', PREF_ARGS + [f'--out_dir={out}', '--precompute_ref_logps=True', '--batch_size=4'],
               prefdir)
    hashes = rank_hashes(p.stdout)
    ckpt = torch.load(out / 'ckpt.pt', weights_only=False)
    assert hashes[0] == hashes[1] == state_sha256(ckpt['model'])[:16]
    assert sorted(os.listdir(out)) == ['best.pt', 'ckpt.pt', 'log.csv'] and p.stdout.count('iter 0:') == 1
    pairs, _ = load_preference_pairs(str(prefdir / 'pref.jsonl'), 'train', GPT2Tokenizer(), 16, 'left')
    init = GPT.from_pretrained(str(prefdir / 'init')).eval()
    with torch.no_grad():
        online = torch.stack(preference_logps(init, pairs, 50256, 'cpu'), 1)  # (100, 2)
    cache_files = list((prefdir / '.cache').glob('pref.jsonl.ref_logps.*.pt'))
    assert len(cache_files) == 1
    torch.testing.assert_close(torch.load(cache_files[0], weights_only=True)['logps'], online, atol=1e-5, rtol=0)
    rows = log_rows(out)
    assert sorted(s for s, r in rows.items() if 'loss' in r) == list(range(6))
    assert rows[0]['loss'] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference on both ranks
    # dpo_train's split (val: the first 20 of a seed-1337 permutation) and each rank's first micro-batch
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(1337)).tolist()
    train_logps = online[perm[20:], 0]
    order = torch.randperm(80, generator=torch.Generator().manual_seed(stream_seed(1337, 'epoch', 0)))
    first = [order[:4], order[4:8]]  # rank 0's first micro-batch, rank 1's
    assert rows[0]['logps/chosen'] == pytest.approx(train_logps[torch.cat(first)].mean().item(), abs=1e-5)
    assert abs(rows[0]['logps/chosen'] - train_logps[first[0]].mean().item()) > 1e-4  # not rank 0's alone
    assert rows[6]['val/rewards/margins'] > 0 and all(math.isfinite(v) for r in rows.values() for v in r.values())


def test_dpo_train_two_ranks_equal_one_process(prefdir):
    """The ranks split each epoch's micro-batches (rank r takes r, r + 2, ...), so 2 ranks x
    accumulation 2 train on exactly the 4 micro-batches that 1 process x accumulation 4 does: the
    same logged metrics at every step and the same weights, up to float summation order. 80 pairs
    in micro-batches of 6 end each epoch with a short one of 2 (rank 1's 7th): it weighs by its
    pairs in both, the ranks' pair counts summed by one all-reduce (common.accumulation_weights)."""
    args = PREF_ARGS + ['--precompute_ref_logps=True', '--batch_size=6', '--gradient_accumulation_steps=4']
    launch('dpo_train.py', args + ['--out_dir=out-dpo-2ranks'], prefdir)
    launch('dpo_train.py', args + ['--out_dir=out-dpo-1proc'], prefdir, nproc=1)
    two, one = log_rows(prefdir / 'out-dpo-2ranks'), log_rows(prefdir / 'out-dpo-1proc')
    assert two.keys() == one.keys() and len(two) == 7
    for step in one:
        assert two[step].keys() == one[step].keys()
        for k in one[step]:
            if k not in SPEED:
                assert two[step][k] == pytest.approx(one[step][k], abs=1e-5), (step, k)
    assert one[5]['loss'] < one[0]['loss'] - 0.05  # it trained
    w2, w1 = (torch.load(prefdir / d / 'ckpt.pt', weights_only=False)['model'] for d in ('out-dpo-2ranks', 'out-dpo-1proc'))
    for k in w1:  # Adam's g / sqrt(v) magnifies summation-order rounding where gradients are ~0: 1e-4 = 1% of lr
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=0)


def test_dpo_train_ddp_lora_reference_is_the_adapters_off_policy(prefdir):
    """LoRA under DDP: only the adapters are DDP's parameters (the frozen base has requires_grad
    False), the reference is the unwrapped policy with its adapters off, on line."""
    out = prefdir / 'out-dpo-lora'
    p = launch('dpo_train.py', PREF_ARGS + [f'--out_dir={out}', '--lora_rank=4', '--lora_targets=attn,mlp',
                                            '--dropout=0.1', '--lora_dropout=0.1'], prefdir)
    assert p.stdout.count('the policy with its LoRA adapters disabled (no copy)') == 1
    hashes = rank_hashes(p.stdout)
    sd = torch.load(out / 'ckpt.pt', weights_only=False)['model']
    assert hashes[0] == hashes[1] == state_sha256(sd)[:16]
    base = torch.load(prefdir / 'init' / 'ckpt.pt', weights_only=False)['model']
    assert all(torch.equal(sd[k], base[k]) for k in base)  # the frozen base (= the reference) never moved
    assert any(k.endswith('lora_B') and sd[k].abs().sum() > 0 for k in sd)
    assert log_rows(out)[0]['loss'] > 0


def test_dpo_train_ddp_resume_continues_every_rank_exactly(prefdir):
    """Each rank restores its own RNGs and pair order from the checkpoint's rank_states (as train.py),
    so an interrupted 2-rank run continues the straight one's curve bit for bit, dropout included.
    The reference log-probs come from the cache (at the latest from the first run): rank 0 reads it
    and sends it to the other rank."""
    args = PREF_ARGS + ['--dropout=0.1', '--precompute_ref_logps=True']
    straight, resumed = prefdir / 'out-dpo-straight', prefdir / 'out-dpo-resumed'
    launch('dpo_train.py', args + [f'--out_dir={straight}'], prefdir)
    launch('dpo_train.py', args + [f'--out_dir={resumed}', '--max_iters=3'], prefdir)
    p = launch('dpo_train.py', args + [f'--out_dir={resumed}', '--init_from=resume'], prefdir)
    assert p.stdout.count('reference log-probs of 100 pairs loaded from') == 1
    drop_time = lambda rows: {s: {k: v for k, v in r.items() if k not in SPEED} for s, r in rows.items()}
    assert drop_time(log_rows(resumed)) == drop_time(log_rows(straight))
    sd_a = torch.load(straight / 'ckpt.pt', weights_only=False)['model']
    sd_b = torch.load(resumed / 'ckpt.pt', weights_only=False)['model']
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


@pytest.mark.parametrize('script', ['reward_train.py', 'dpo_train.py'])
def test_accumulation_not_divisible_by_ranks_is_an_error(prefdir, script):
    p = launch(script, PREF_ARGS + ['--gradient_accumulation_steps=3'], prefdir, check=False)
    assert p.returncode != 0
    assert 'error: gradient_accumulation_steps=3 is not divisible by the 2 DDP processes' in p.stderr


@pytest.mark.parametrize('script', ['ppo_train.py'])
def test_scripts_without_ddp_refuse_torchrun(workdir, script):
    """No DDP there: under torchrun every copy would train alone and write the same out_dir."""
    env = dict(os.environ, RANK='0', LOCAL_RANK='0', WORLD_SIZE='2')  # what torchrun sets
    p = run_python([sys.executable, os.path.join(ROOT, script)], cwd=workdir, env=env,
                   capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [f'error: {script} runs in one process (only train.py, reward_train.py '
                                             'and dpo_train.py have DDP): start it with python, not torchrun']
