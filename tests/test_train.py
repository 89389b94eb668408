"""train.py and sample.py run end to end in subprocesses on a tiny char-level data set."""
import csv
import hashlib
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED, make_hf_gpt2, run_python
from model import GPT, GPTConfig

TINY = ['--dataset=tiny', '--device=cpu', '--compile=False', '--eval_iters=4', '--block_size=32',
        '--batch_size=8', '--n_layer=2', '--n_head=2', '--n_embd=32', '--gradient_accumulation_steps=2',
        '--warmup_iters=2', '--learning_rate=1e-2', '--min_lr=1e-3']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A directory with data/tiny/{train,val}.bin and meta.pkl (char-level Shakespeare, 200k chars)."""
    d = tmp_path_factory.mktemp('train')
    full = open(os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')).read()
    chars = sorted(set(full))  # the 65 characters of the whole text
    text = full[:200_000]
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    os.makedirs(d / 'data' / 'tiny')
    ids[:180_000].tofile(d / 'data' / 'tiny' / 'train.bin')
    ids[180_000:].tofile(d / 'data' / 'tiny' / 'val.bin')
    with open(d / 'data' / 'tiny' / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': stoi}, f)
    return d


def run(script, args, cwd, check=True, fresh=False):
    p = run_python([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd,
                   capture_output=True, text=True, timeout=300, fresh=fresh)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p


def losses(out_dir, column='train/loss_step'):
    rows = csv.DictReader(open(os.path.join(out_dir, 'log.csv')))
    return {int(r['step']): float(r[column]) for r in rows if r[column]}


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_train_learns_and_saves(workdir):
    out = str(workdir / 'out-learn')
    run('train.py', TINY + [f'--out_dir={out}', '--max_iters=60', '--lr_decay_iters=60', '--eval_interval=30'], workdir)
    curve = losses(out)
    assert len(curve) == 60 and all(np.isfinite(list(curve.values())))
    assert np.mean([curve[i] for i in range(55, 60)]) < curve[0] - 0.8  # from ln(65) = 4.17 to ~3.1
    val = losses(out, 'val/loss')
    assert set(val) == {0, 30, 60} and val[60] < val[0]
    # the saved weights are trained weights, not the initialisation
    torch.manual_seed(1337)
    init = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=65))
    trained, ckpt = GPT.from_checkpoint(out)
    assert ckpt['iter_num'] == 60 and ckpt['config']['max_iters'] == 60
    assert ckpt['model_args']['vocab_size'] == 65
    assert not torch.equal(init.lm_head.weight, trained.lm_head.weight)
    assert os.path.isfile(os.path.join(out, 'best.pt'))


def test_resume_continues_the_identical_loss_curve(workdir):
    args = TINY + ['--dropout=0.1', '--lr_decay_iters=20', '--eval_interval=10']
    straight, resumed = str(workdir / 'out-straight'), str(workdir / 'out-resumed')
    run('train.py', args + [f'--out_dir={straight}', '--max_iters=20'], workdir)
    run('train.py', args + [f'--out_dir={resumed}', '--max_iters=10'], workdir)  # "interrupted" at 10
    # a new interpreter (a new hash seed) for the resumed part: forked runs would all share one
    run('train.py', args + [f'--out_dir={resumed}', '--max_iters=20', '--init_from=resume'], workdir, fresh=True)
    a, b = losses(straight), losses(resumed)
    assert sorted(b) == list(range(20))  # the CSV holds one curve, not overlapping pieces
    assert a == b  # bit-identical, dropout included
    sd_a = torch.load(os.path.join(straight, 'ckpt.pt'), weights_only=False)['model']
    sd_b = torch.load(os.path.join(resumed, 'ckpt.pt'), weights_only=False)['model']
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_batches_come_in_nanogpts_order(workdir):
    """One global stream seeded `seed` draws the weight init, then the first batch, then each eval's
    eval_iters train and val batches, then the training batches, each iteration's first prefetched
    during the previous iteration's last micro-step, before the eval (karpathy/nanoGPT's train.py),
    so a run prints nanoGPT's losses. learning_rate=0 keeps the weights at their init, so each logged
    loss is the init model's on the batches recomputed here."""
    out = str(workdir / 'out-order')
    run('train.py', TINY + [f'--out_dir={out}', '--max_iters=2', '--eval_interval=1', '--eval_iters=2',
                            '--learning_rate=0.0', '--min_lr=0.0'], workdir)
    torch.manual_seed(1337)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=65))
    data = {split: np.fromfile(workdir / 'data' / 'tiny' / f'{split}.bin', dtype=np.uint16).astype(np.int64)
            for split in ('train', 'val')}

    def loss(split):  # the loss of the init model on the next batch of the stream (train.py's get_batch)
        ix = torch.randint(len(data[split]) - 32, (8,))
        x = torch.stack([torch.from_numpy(data[split][i:i + 32]) for i in ix])
        y = torch.stack([torch.from_numpy(data[split][i + 1:i + 33]) for i in ix])
        with torch.no_grad():
            return model(x, y)[1].item()

    first = loss('train')
    expected_train, expected_val = {}, {}
    for it in range(3):
        evals = {split: np.mean([loss(split) for _ in range(2)]) for split in ('train', 'val')}
        expected_val[it] = evals['val']
        if it < 2:  # accumulation 2: this iteration's first (prefetched) batch, then its second
            second = loss('train')
            expected_train[it], first = (first + second) / 2, loss('train')
    logged_train, logged_val = losses(out), losses(out, 'val/loss')
    assert sorted(logged_train) == [0, 1] and sorted(logged_val) == [0, 1, 2]
    for it in expected_train:
        assert logged_train[it] == pytest.approx(expected_train[it], abs=1e-4), it
    for it in expected_val:
        assert logged_val[it] == pytest.approx(expected_val[it], abs=1e-4), it


def test_a_checkpoint_of_the_older_train_py_resumes_with_a_note(workdir):
    """A pretraining checkpoint of train.py before 2026-11-28 (its batches came from their own generator,
    saved as 'train_gen') resumes, with a note that the batches differ from the run it continues."""
    out = str(workdir / 'out-older')
    run('train.py', TINY + [f'--out_dir={out}', '--max_iters=2', '--eval_interval=2'], workdir)
    path = os.path.join(out, 'ckpt.pt')
    ckpt = torch.load(path, weights_only=False)
    ckpt['train_gen'] = torch.Generator().get_state()
    torch.save(ckpt, path)
    p = run('train.py', TINY + [f'--out_dir={out}', '--max_iters=3', '--eval_interval=3', '--init_from=resume'], workdir)
    assert 'note: the checkpoint is from an older train.py: the resumed run draws other batches' in p.stdout
    assert torch.load(path, weights_only=False)['iter_num'] == 3


def test_eval_only_of_a_resumed_checkpoint_evaluates_once_and_trains_nothing(workdir):
    """eval_only=True evaluates at the start and exits, also with init_from='resume' at an iteration
    that is not a multiple of eval_interval (nanoGPT's `iter_num == 0 and eval_only` test never fires
    there: the run went on training and overwrote ckpt.pt)."""
    out = str(workdir / 'out-evalonly')
    run('train.py', TINY + [f'--out_dir={out}', '--max_iters=4', '--eval_interval=2'], workdir)
    before = sha(os.path.join(out, 'ckpt.pt'))
    p = run('train.py', TINY + [f'--out_dir={out}', '--init_from=resume', '--eval_only=True', '--max_iters=10',
                                '--eval_interval=3'], workdir)
    assert 'step 4: train loss' in p.stdout and 'iter 4:' not in p.stdout, p.stdout
    assert sha(os.path.join(out, 'ckpt.pt')) == before
    assert max(losses(out)) == 3  # no training step was logged after the resume
    # eval_only leaves the run's log.csv alone (it rewrote it: from the resumed step on, or all of it)
    log_before = sha(os.path.join(out, 'log.csv'))
    for args in (['--init_from=resume'], ['--init_from=scratch']):
        p = run('train.py', TINY + [f'--out_dir={out}', '--eval_only=True', *args], workdir)
        assert 'train loss' in p.stdout and sha(os.path.join(out, 'log.csv')) == log_before, args


def test_nan_loss_stops_and_keeps_the_checkpoint(workdir):
    out = str(workdir / 'out-nan')
    run('train.py', TINY + [f'--out_dir={out}', '--max_iters=4', '--eval_interval=2'], workdir)
    before = sha(os.path.join(out, 'ckpt.pt'))
    p = run('train.py', TINY + [f'--out_dir={out}', '--max_iters=40', '--init_from=resume', '--eval_interval=2',
                                '--learning_rate=1e30', '--decay_lr=False'], workdir, check=False)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1].startswith('error: loss is nan at iteration')
    assert sha(os.path.join(out, 'ckpt.pt')) == before


def test_finetune_from_hf_directory(workdir):
    hf_dir = str(workdir / 'hf')
    make_hf_gpt2(hf_dir, n_positions=64)  # vocab 101 >= the data's 65
    out = str(workdir / 'out-ft')
    run('train.py', TINY + [f'--out_dir={out}', f'--init_from={hf_dir}', '--max_iters=4', '--eval_interval=2'], workdir)
    model, ckpt = GPT.from_checkpoint(out)
    assert model.config.vocab_size == 101 and model.config.block_size == 32  # cropped from 64
    assert model.config.bias is True


@pytest.mark.parametrize('args, message', [
    (['--dataset=missing'], 'error: data/missing/train.bin not found: run python data/missing/prepare.py first'),
    (['--max_iter=3'], "error: command line: unknown config key 'max_iter'; did you mean max_iters"),
    (['--batch_size=big'], 'error: command line: batch_size must be int'),
    (['--init_from=no/such/dir'], "error: 'no/such/dir' is neither a directory nor one of gpt2"),
    (['--init_from=resume', '--out_dir=out-none'], 'error: checkpoint out-none/ckpt.pt not found'),
    (['config/nope.py'], 'error: config file config/nope.py not found'),
    (['--out_dir=data/tiny/meta.pkl'], 'error: out_dir data/tiny/meta.pkl is a file, not a directory'),
    (['--out_dir=data/tiny/meta.pkl/run'], 'error: out_dir data/tiny/meta.pkl/run cannot be created: Not a directory'),
])
def test_bad_input_is_one_clear_line(workdir, args, message):
    p = run('train.py', TINY + args, workdir, check=False)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), p.stderr


def test_broken_files_are_one_clear_line(workdir):
    """A checkpoint that cannot be read (garbage, cut off; on resume or as init_from, with the memory
    planner on), a config file that raises, a .bin cut mid-token, GPT-2 BPE data (no meta.pkl) for
    a char-level model: one error line naming the file, not a traceback. A user config in
    ./config that reads a default (min_lr = learning_rate / 10) leaves the planner's search for an
    out_dir's config alone."""
    def error(args):
        p = run('train.py', TINY + args, workdir, check=False)
        err = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(err) == 1, p.stderr[-2000:]
        return err[0]

    run('train.py', TINY + ['--out_dir=out-good', '--max_iters=2', '--eval_interval=2'], workdir)
    good = (workdir / 'out-good' / 'ckpt.pt').read_bytes()
    for name, data in (('garbage', b'hello\n'), ('cut', good[:5000])):
        os.makedirs(workdir / f'out-{name}', exist_ok=True)
        (workdir / f'out-{name}' / 'ckpt.pt').write_bytes(data)
        assert error([f'--out_dir=out-{name}', '--init_from=resume']).startswith(
            f'error: checkpoint out-{name}/ckpt.pt could not be read: ')
        assert error([f'--out_dir=out-x', f'--init_from=out-{name}/ckpt.pt']).startswith(
            f'error: checkpoint out-{name}/ckpt.pt could not be read: ')
    (workdir / 'typo_cfg.py').write_text("max_iters = 100\nlr_decay_iters = max_iter\n")
    assert error(['typo_cfg.py']) == "error: typo_cfg.py, line 2: NameError: name 'max_iter' is not defined"
    os.makedirs(workdir / 'data' / 'odd', exist_ok=True)
    for f in ('train.bin', 'meta.pkl'):
        (workdir / 'data' / 'odd' / f).write_bytes((workdir / 'data' / 'tiny' / f).read_bytes())
    (workdir / 'data' / 'odd' / 'val.bin').write_bytes((workdir / 'data' / 'tiny' / 'val.bin').read_bytes()[:2001])
    assert error(['--dataset=odd']).startswith('error: data/odd/val.bin has 2001 bytes, not a whole number of uint16')
    os.makedirs(workdir / 'data' / 'bpe', exist_ok=True)
    for split in ('train', 'val'):  # GPT-2 ids, as data/shakespeare/prepare.py writes them (no meta.pkl)
        np.random.default_rng(0).integers(0, 50257, 5000, dtype=np.uint16).tofile(workdir / 'data' / 'bpe' / f'{split}.bin')
    assert error(['--dataset=bpe', '--init_from=out-good', '--out_dir=out-bpe']).startswith(
        "error: data/bpe holds GPT-2 BPE tokens (no meta.pkl) but the model's vocab_size is 65")
    os.makedirs(workdir / 'config', exist_ok=True)
    (workdir / 'config' / 'mine.py').write_text("out_dir = 'out-mine'\nmin_lr = learning_rate / 10\n")
    try:
        assert error(['--init_from=resume', '--out_dir=out-none']) == 'error: checkpoint out-none/ckpt.pt not found'
    finally:
        os.remove(workdir / 'config' / 'mine.py')


def test_a_checkpoint_in_torchs_old_format_resumes(workdir):
    """torch.save(..., _use_new_zipfile_serialization=False) (torch < 1.6, old nanoGPT runs) cannot be
    memory-mapped: reading its model_args falls back to a plain load."""
    run('train.py', TINY + ['--out_dir=out-legacy', '--max_iters=2', '--eval_interval=2'], workdir)
    path = workdir / 'out-legacy' / 'ckpt.pt'
    torch.save(torch.load(path, weights_only=False), path, _use_new_zipfile_serialization=False)
    run('train.py', TINY + ['--out_dir=out-legacy', '--init_from=resume', '--max_iters=3', '--eval_interval=3'], workdir)
    assert torch.load(path, weights_only=False)['iter_num'] == 3


def test_best_pt_is_always_this_runs(workdir):
    """best.pt is the lowest val loss among this run's evals after its start: a new run in an out_dir
    holding an earlier run's best.pt replaces it even when no eval beats its own start (here
    learning_rate=10: every eval is worse than the start's); a resumed run keeps the best of the whole run."""
    base = TINY + ['--out_dir=out-best', '--max_iters=4', '--eval_interval=2']
    run('train.py', base, workdir)  # an earlier run, n_embd=32
    run('train.py', base + ['--n_embd=16', '--learning_rate=10.0', '--decay_lr=False'], workdir)
    val = losses(str(workdir / 'out-best'), 'val/loss')
    assert val[2] > val[0] and val[4] > val[0]  # no eval beats the start
    best = torch.load(workdir / 'out-best' / 'best.pt', weights_only=False)
    assert best['model_args']['n_embd'] == 16 and best['iter_num'] == min((2, 4), key=lambda i: val[i])
    run('train.py', TINY + ['--out_dir=out-best2', '--max_iters=4', '--eval_interval=2'], workdir)
    val = losses(str(workdir / 'out-best2'), 'val/loss')
    run('train.py', TINY + ['--out_dir=out-best2', '--max_iters=8', '--eval_interval=2', '--init_from=resume',
                            '--learning_rate=10.0', '--decay_lr=False'], workdir)  # later evals are worse
    val.update(losses(str(workdir / 'out-best2'), 'val/loss'))
    best = torch.load(workdir / 'out-best2' / 'best.pt', weights_only=False)
    assert best['iter_num'] == min((2, 4, 6, 8), key=lambda i: val[i]) and best['best_pt_loss'] == min(val[i] for i in (2, 4, 6, 8))


def test_checkpoint_of_a_different_architecture_is_one_clear_line(workdir):
    out = workdir / 'out-arch'
    os.makedirs(out)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65))
    args = dict(vars(model.config), n_embd=48)  # its model_args disagree with its weights
    torch.save({'model': model.state_dict(), 'model_args': args}, out / 'ckpt.pt')
    p = run('train.py', TINY + [f'--out_dir={out}', '--init_from=resume'], workdir, check=False)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1
    assert err[0].startswith(f'error: {out}/ckpt.pt does not fit this model') and 'shape mismatch' in err[0]


def test_sample_from_checkpoint(workdir):
    out = str(workdir / 'out-sample')
    run('train.py', TINY + [f'--out_dir={out}', '--max_iters=10', '--eval_interval=10'], workdir)
    args = [f'--out_dir={out}', '--device=cpu', '--num_samples=3', '--batch_size=2', '--max_new_tokens=20',
            '--start=ROMEO:']
    greedy = run('sample.py', args + ['--temperature=0'], workdir).stdout
    samples = greedy.split('---------------\n')
    assert len(samples) == 4 and samples[-1] == ''  # three samples, each followed by a separator
    assert len(set(samples[:3])) == 1 and all(s.startswith('ROMEO:') for s in samples[:3])
    assert run('sample.py', args + ['--temperature=0'], workdir).stdout == greedy
    # nanoGPT's compile key is accepted and says it does nothing here (torch.compile(model) never reached generate)
    compiled = run('sample.py', args + ['--temperature=0', '--compile=True'], workdir).stdout
    assert compiled.splitlines()[-1 - len(greedy.splitlines())].startswith('note: compile=True has no effect here')
    assert compiled.endswith(greedy)
    # the checkpoint named by init_from (its directory or file) is sampled with its own char-level
    # tokenizer, exactly as init_from='resume' does (not with GPT-2's BPE)
    for path in (out, os.path.join(out, 'ckpt.pt')):
        assert run('sample.py', [f'--init_from={path}'] + args[1:] + ['--temperature=0'], workdir).stdout == greedy
    # run where data/tiny/meta.pkl cannot be found: one error line, not GPT-2 tokens printed as samples
    os.makedirs(workdir / 'elsewhere', exist_ok=True)
    p = run('sample.py', [f'--init_from={out}'] + args[1:-1] + ['--start=!'], workdir / 'elsewhere', check=False)
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith("error: the model's vocabulary"), p.stdout
    p = run('sample.py', args + ['--start=\u2603'], workdir, check=False)  # not in the char vocabulary
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith('error: characters')
    for bad, message in (('--batch_size=0', 'batch_size=0 must be > 0'), ('--temperature=-0.01', 'temperature=-0.01'),
                         ('--top_p=1.5', 'top_p=1.5'), ('--max_new_tokens=-1', 'max_new_tokens=-1')):
        p = run('sample.py', args + [bad], workdir, check=False)
        assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith(f'error: {message}'), p.stderr[-500:]


def test_memory_keys_are_wired(workdir):
    """train.py's gradient_checkpointing changes no number (the same losses, dropout on, as without);
    optimizer='adamw8bit' off CUDA stops in one line before training; the predicted peak is printed
    before the model loads."""
    base = TINY + ['--max_iters=6', '--lr_decay_iters=6', '--eval_interval=100', '--dropout=0.1', '--log_interval=1']
    p = run('train.py', base + [f'--out_dir={workdir / "out-gc0"}'], workdir)
    assert 'predicted peak GPU memory on a GPU:' in p.stdout
    run('train.py', base + [f'--out_dir={workdir / "out-gc1"}', '--gradient_checkpointing=True'], workdir)
    plain, checkpointed = losses(str(workdir / 'out-gc0')), losses(str(workdir / 'out-gc1'))
    assert len(plain) == 6 and plain.keys() == checkpointed.keys()
    assert all(abs(plain[k] - checkpointed[k]) < 1e-5 for k in plain), (plain, checkpointed)
    for name, on in (('out-gc0', False), ('out-gc1', True)):  # the key reached the model that trained
        args = torch.load(workdir / name / 'ckpt.pt', weights_only=False)['model_args']
        assert args['gradient_checkpointing'] is on
    p = run('train.py', base + [f'--out_dir={workdir / "out-8bit"}', '--optimizer=adamw8bit'], workdir, check=False)
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1] == \
        "error: optimizer='adamw8bit' needs a CUDA GPU (bitsandbytes), not cpu; use optimizer='adamw'"
    assert not os.path.exists(workdir / 'out-8bit' / 'ckpt.pt')


def test_sample_of_a_gpt2_vocab_checkpoint_with_a_char_dataset_is_one_line(workdir):
    """A checkpoint of GPT-2's vocabulary whose config names a char-level dataset (gpt2 finetuned with
    dataset='shakespeare_char', a nanoGPT mistake): its samples hold ids the characters do not name,
    and decoding them was a KeyError traceback. One line naming the checkpoint and both sizes."""
    make_hf_gpt2(str(workdir / 'hf-gpt2vocab'), n_embd=16, vocab_size=50257, n_positions=64)
    model = GPT.from_pretrained(str(workdir / 'hf-gpt2vocab'))
    os.makedirs(workdir / 'out-gpt2char', exist_ok=True)
    torch.save({'model': model.state_dict(), 'model_args': model.config.__dict__, 'config': {'dataset': 'tiny'}},
               workdir / 'out-gpt2char' / 'ckpt.pt')
    p = run('sample.py', ['--init_from=out-gpt2char', '--device=cpu', '--num_samples=1', '--max_new_tokens=5',
                          '--start=RO'], workdir, check=False)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and 'Traceback' not in p.stderr, p.stderr[-2000:]
    assert err[-1].startswith("error: out-gpt2char, whose config names dataset 'tiny', has vocab_size 50257, not the "
                              "65 characters of the char-level tokenizer"), err[-1]
