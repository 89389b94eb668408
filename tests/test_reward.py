"""Reward model: Bradley-Terry loss, the reward read at the last real token, normalisation, and
reward_train.py end to end on a separable synthetic task."""
import csv
import json
import math
import os
import sys

import pytest
import torch

from common import GPT2Tokenizer, RewardModel, pad_right, score_texts, sft_batch, tokenize_pair
from conftest import ROOT, make_hf_gpt2, run_python
from losses import bradley_terry_loss, gather_last, lm_loss
from model import GPT


def test_bradley_terry_hand_values():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    expected = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(1)), math.log(2)]  # -log sigmoid(d)
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), torch.tensor(expected))
    margin = torch.tensor([0.5, 0.0, -1.0])  # -log sigmoid(d - m)
    expected = [math.log(1 + math.exp(-0.5)), math.log(1 + math.exp(1)), math.log(1 + math.exp(-1))]
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, margin), torch.tensor(expected))


def test_gather_last_right_and_left_padding():
    x = torch.tensor([[1., 2., 3., 4.], [5., 6., 7., 8.], [9., 10., 11., 12.]])
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])  # right-padded, left-padded, full
    assert gather_last(x, mask).tolist() == [2., 8., 12.]


@pytest.fixture(scope='module')
def reward_model(tmp_path_factory):
    d = str(tmp_path_factory.mktemp('rm'))
    make_hf_gpt2(d, vocab_size=50257, n_positions=64)
    model = GPT.from_pretrained(d, value_head=True).eval()
    torch.nn.init.normal_(model.value_head.weight)  # a head that is not zero, so positions matter
    return model


def test_reward_at_last_real_token_for_right_and_left_padding(reward_model):
    model = reward_model
    seqs = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    alone = torch.stack([model.value(model.trunk(torch.tensor([s])))[0, -1] for s in seqs])
    T = max(map(len, seqs))
    right = torch.tensor([s + [0] * (T - len(s)) for s in seqs])
    right_mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    left = torch.tensor([[0] * (T - len(s)) + s for s in seqs])
    left_mask = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs])
    r_right = gather_last(model.value(model.trunk(right)), right_mask)  # causal: no mask needed
    r_left = gather_last(model.value(model.trunk(left, left_mask)), left_mask)
    torch.testing.assert_close(r_right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_left, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(r_right, model.value(model.trunk(right))[:, -1])  # the last column is wrong


def test_lm_loss_equals_model_cross_entropy(reward_model):
    examples = [tokenize_pair([5, 6, 7], [8, 9, 10], 50256, 16, 'left'), tokenize_pair([11], [12], 50256, 16, 'left')]
    ids, _, response_mask = pad_right(examples, 50256, 'cpu')
    X, Y = sft_batch(examples, 50256, 'cpu')
    _, ce = reward_model(X, Y)
    torch.testing.assert_close(lm_loss(reward_model(ids)[0], ids, response_mask), ce)


def test_score_texts_appends_eos_and_reads_it(reward_model):
    tok = GPT2Tokenizer()
    texts = [("\n\nHuman: hi\n\nAssistant:", " hello"), ("\n\nHuman: a long one\n\nAssistant:", " sure, here")]
    scores = score_texts(reward_model, tok, texts, 64, 2, 'cpu')
    for (p, r), s in zip(texts, scores):
        ids = torch.tensor([tok.encode(p) + tok.encode(r) + [tok.eot_token]])
        torch.testing.assert_close(s, reward_model.value(reward_model.trunk(ids))[0, -1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# reward_train.py end to end

def synthetic_pairs(n=240):
    """Separable preferences: the chosen answer says 'good', the rejected one 'bad' (varied prompts)."""
    topics = ['the weather', 'my cat', 'this movie', 'the food', 'your plan', 'the book', 'our trip', 'the song']
    out = []
    for i in range(n):
        t = topics[i % len(topics)]
        prompt = f"\n\nHuman: What do you think of {t}? ({i})\n\nAssistant:"
        good, bad = f" I think {t} is good.", f" I think {t} is bad."
        out.append({'prompt': prompt, 'chosen': good, 'rejected': bad})
    return out


def test_reward_train_separable_task_and_normalisation(tmp_path):
    hf = tmp_path / 'hf'
    make_hf_gpt2(str(hf), vocab_size=50257, n_positions=64, n_embd=32)
    records = synthetic_pairs() + [{'prompt': 'x', 'chosen': ' same', 'rejected': ' same'}] * 3
    data = tmp_path / 'pref.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in records))
    out = tmp_path / 'out'
    args = [f'--init_from={hf}', f'--pref_data={data}', "--pref_val_data=", f'--out_dir={out}', '--device=cpu',
            '--block_size=64', '--batch_size=16', '--gradient_accumulation_steps=1', '--learning_rate=3e-3',
            '--max_iters=40', '--lr_decay_iters=40', '--warmup_iters=5', '--eval_interval=20', '--eval_iters=10',
            '--norm_samples=64', '--chosen_lm_coef=0.1']
    p = run_python([sys.executable, os.path.join(ROOT, 'reward_train.py'), *args], cwd=tmp_path,
                   capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert '3 pairs with chosen == rejected skipped' in p.stdout
    rows = [r for r in csv.DictReader(open(out / 'log.csv')) if r['val/accuracy']]
    assert float(rows[0]['val/accuracy']) == 0.5  # zero-initialised head: every pair a tie
    # train/loss is the Bradley-Terry loss alone, as val/loss (a zero head: log 2 on every pair at
    # step 0), and the chosen responses' LM loss is logged on its own, in train and val
    first = next(r for r in csv.DictReader(open(out / 'log.csv')) if r['train/loss'])
    assert abs(float(first['train/loss']) - math.log(2)) < 1e-5, first
    assert abs(float(rows[0]['val/loss']) - math.log(2)) < 1e-5
    assert float(first['train/lm_loss']) > 5 and float(rows[0]['val/lm_loss']) > 5  # random weights: ~log(50257)
    assert float(rows[-1]['val/accuracy']) > 0.95
    # normalisation stats are stored, and they are the mean/std over the chosen responses
    rm = RewardModel(str(out / 'best.pt'))
    texts = [(r['prompt'], r['chosen']) for r in synthetic_pairs()]
    raw = rm.score([p for p, _ in texts], [r for _, r in texts])
    torch.testing.assert_close(rm.score([p for p, _ in texts], [r for _, r in texts], normalize=True),
                               (raw - rm.mean) / rm.std)
    ckpt = torch.load(out / 'best.pt', weights_only=False)
    assert ckpt['reward_std'] > 0 and ckpt['reward_mean'] == rm.mean
    # the reference set is 64 of the training pairs' chosen responses: its mean is near theirs
    assert abs(raw.mean().item() - rm.mean) < 3 * raw.std().item() / 8
    good = rm.score(['\n\nHuman: What do you think of it?\n\nAssistant:'] * 2, [' I think it is good.', ' I think it is bad.'])
    assert good[0] > good[1]
    # PPO's reward_dtype='bfloat16': the frozen weights in bf16, the same scores to bf16 precision
    rm16 = RewardModel(str(out / 'best.pt'), weights_dtype='bfloat16')
    assert {p.dtype for p in rm16.model.parameters()} == {torch.bfloat16}
    raw16 = rm16.score([p for p, _ in texts], [r for _, r in texts])
    assert raw16.dtype == torch.float32
    torch.testing.assert_close(raw16, raw, atol=0.05 * raw.abs().max().item(), rtol=0)
    pairs = synthetic_pairs()  # and it still prefers the chosen responses
    prompts = [r['prompt'] for r in pairs]
    margin = {m: m.score(prompts, [r['chosen'] for r in pairs]) - m.score(prompts, [r['rejected'] for r in pairs])
              for m in (rm, rm16)}
    assert ((margin[rm16] > 0) == (margin[rm] > 0)).float().mean() > 0.95


def test_reward_train_bad_inputs(tmp_path):
    data = tmp_path / 'pref.jsonl'
    data.write_text(json.dumps({'prompt': 'x', 'chosen': 'a'}) + '\n')
    p = run_python([sys.executable, os.path.join(ROOT, 'reward_train.py'), f'--pref_data={data}',
                        '--pref_val_data=', '--device=cpu', f'--init_from={tmp_path / "none"}'],
                   cwd=tmp_path, capture_output=True, text=True, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and err[-1].startswith("error: ") and "record 0 needs 'chosen' and 'rejected'" in err[-1]
    # every script: a count or interval that must be positive is one error line naming the key
    for script, flag in [('reward_train.py', '--batch_size=0'), ('dpo_train.py', '--log_interval=0'),
                         ('train.py', '--gradient_accumulation_steps=0'), ('ppo_train.py', '--mini_batch_size=-1')]:
        p = run_python([sys.executable, os.path.join(ROOT, script), flag], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
        err = p.stderr.strip().splitlines()
        assert p.returncode != 0 and err == [f"error: {flag[2:]} must be > 0"], (script, p.stderr[-500:])


def test_reward_train_nan_loss_stops_with_the_health_report(tmp_path):
    """A diverging run (every pair also labelled the other way, so the loss cannot reach 0, and a
    learning rate of 1e37, so the value head overflows) stops before the optimizer step with one
    error line, the health report naming the non-finite loss, and no checkpoint of NaN weights."""
    hf = tmp_path / 'hf'
    make_hf_gpt2(str(hf), vocab_size=50257, n_positions=64, n_embd=32)
    pairs = synthetic_pairs()
    pairs += [{'prompt': r['prompt'], 'chosen': r['rejected'], 'rejected': r['chosen']} for r in pairs]
    data = tmp_path / 'pref.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in pairs))
    args = [f'--init_from={hf}', f'--pref_data={data}', "--pref_val_data=", f'--out_dir={tmp_path / "out"}',
            '--device=cpu', '--block_size=64', '--batch_size=8', '--gradient_accumulation_steps=1',
            '--learning_rate=1e37', '--decay_lr=False', '--max_iters=30', '--eval_interval=100', '--eval_iters=2']
    p = run_python([sys.executable, os.path.join(ROOT, 'reward_train.py'), *args], cwd=tmp_path,
                   capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1].startswith('error: loss is nan at iteration'), p.stderr[-2000:]
    assert 'nonfinite (fatal): turned on 1x' in p.stdout and 'non-finite metrics train/loss' in p.stdout
    assert not (tmp_path / 'out' / 'ckpt.pt').exists() and not (tmp_path / 'out' / 'best.pt').exists()
    last = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))[-1]  # the row it stopped on is logged
    assert last['train/loss'] == 'nan' and last['alarm/nonfinite'] == '1.0', last


def frozen_run_args(tmp_path):
    """A tiny GPT-2 and 40 synthetic pairs in tmp_path, and the flags of a run with learning_rate=0
    (nothing moves: a zero value head ties every pair; DPO's policy stays its reference)."""
    hf = tmp_path / 'hf'
    make_hf_gpt2(str(hf), vocab_size=50257, n_positions=64, n_embd=32)
    data = tmp_path / 'pref.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in synthetic_pairs(40)))
    return [f'--init_from={hf}', f'--pref_data={data}', '--pref_val_data=', '--device=cpu', '--block_size=64',
            '--batch_size=4', '--gradient_accumulation_steps=1', '--learning_rate=0', '--min_lr=0', '--warmup_iters=0',
            '--eval_iters=2']


def test_best_pt_is_this_runs_and_the_stats_never_divide_by_zero(tmp_path):
    """learning_rate=0: the zero-initialised head scores every text 0, so no eval beats the start's.
    best.pt must still be written (the start's eval is of a model the run did not train; before, it
    set the bar and best.pt never appeared, or an older run's stayed and got this run's stats), and
    a reward std of 0 is stored as 1 with a note (scores / 0 in PPO). norm_data is read at start."""
    base = frozen_run_args(tmp_path) + ['--max_iters=2', '--eval_interval=1', '--norm_samples=4',
                                        f'--out_dir={tmp_path / "out"}']
    reward = os.path.join(ROOT, 'reward_train.py')
    p = run_python([sys.executable, reward, *base], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    best = torch.load(tmp_path / 'out' / 'best.pt', weights_only=False)
    assert best['iter_num'] == 1 and best['reward_std'] == 1.0 and best['reward_mean'] == 0.0
    assert 'best.pt: reward std 0.00e+00 over the reference responses; normalisation keeps std 1' in p.stdout
    p = run_python([sys.executable, reward, *base, '--norm_data=missing.jsonl'], cwd=tmp_path, capture_output=True,
                   text=True, timeout=300)
    assert p.returncode != 0 and 'missing.jsonl' in p.stderr.strip().splitlines()[-1] and 'step 1' not in p.stdout
    # a response too long for block_size among the records it will score: also before training (it
    # stopped after it, leaving checkpoints without stats)
    records = [{'prompt': 'q', 'response': ' fine'}] * 6 + [{'prompt': 'q', 'response': ' word' * 80}]
    (tmp_path / 'norm.jsonl').write_text('\n'.join(json.dumps(r) for r in records))
    p = run_python([sys.executable, reward, *base, '--norm_data=norm.jsonl', '--norm_samples=7'], cwd=tmp_path,
                   capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and 'step 1' not in p.stdout
    assert p.stderr.strip().splitlines()[-1] == 'error: norm.jsonl: record 6: a response of 80 tokens does not fit block_size=64'
    p = run_python([sys.executable, reward, *base, '--norm_samples=0'], cwd=tmp_path, capture_output=True, text=True,
                   timeout=300)  # refused at the start (it crashed after training, leaving checkpoints without stats)
    assert p.returncode != 0 and p.stderr.strip().splitlines() == ['error: norm_samples=0 must be > 0'], p.stderr[-500:]


def test_a_run_that_saves_nothing_leaves_another_runs_checkpoints_alone(tmp_path):
    """The normalisation pass at the end writes stats into the checkpoints this run saved, not into
    every ckpt.pt/best.pt in out_dir: a run that saved nothing (max_iters=0) rewrote an earlier run's
    files with its own data's stats (and crashed on one of another shape)."""
    import hashlib
    out = tmp_path / 'out'
    base = frozen_run_args(tmp_path) + ['--eval_interval=1', '--norm_samples=4', f'--out_dir={out}']
    reward = os.path.join(ROOT, 'reward_train.py')
    p = run_python([sys.executable, reward, *base, '--max_iters=1'], cwd=tmp_path, capture_output=True, text=True,
                   timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    sha = {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in ('ckpt.pt', 'best.pt')}
    p = run_python([sys.executable, reward, *base, '--max_iters=0'], cwd=tmp_path, capture_output=True, text=True,
                   timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'note: this run saved no checkpoint: nothing in {out} gets reward normalisation stats' in p.stdout
    assert {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in ('ckpt.pt', 'best.pt')} == sha


def test_resume_from_an_older_checkpoint_keeps_its_best_accuracy_as_the_bar(tmp_path):
    """A checkpoint written before best_val (accuracy, -loss) was kept has only best_val_acc: a
    resumed run must not overwrite best.pt with a worse model (it took None as 'no best yet')."""
    base = frozen_run_args(tmp_path) + ['--eval_interval=1', '--norm_samples=4', f'--out_dir={tmp_path / "out"}']
    reward = os.path.join(ROOT, 'reward_train.py')
    assert run_python([sys.executable, reward, *base, '--max_iters=1'], cwd=tmp_path, timeout=300).returncode == 0
    ckpt = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=False)
    del ckpt['best_val']
    ckpt['best_val_acc'] = 0.9  # the frozen model's val accuracy is 0.5 at every eval
    torch.save(ckpt, tmp_path / 'out' / 'ckpt.pt')
    p = run_python([sys.executable, reward, *base, '--max_iters=3', '--init_from=resume'], cwd=tmp_path,
                   capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert torch.load(tmp_path / 'out' / 'best.pt', weights_only=False)['iter_num'] == 1  # not overwritten


def test_normalisation_scores_an_empty_prompt_as_ppo_does(tmp_path):
    """Pairs with an empty prompt (tokenized as [EOS]) are scored for the normalisation stats with the
    prompt '' (before: the text '<|endoftext|>', 7 ordinary tokens the model never saw), so the stored
    mean is the mean of RewardModel's scores of those responses, as PPO will compute them."""
    hf = tmp_path / 'hf'
    make_hf_gpt2(str(hf), vocab_size=50257, n_positions=64, n_embd=32)
    pairs = [{'prompt': '', 'chosen': r['chosen'], 'rejected': r['rejected']} for r in synthetic_pairs(24)]
    for name, part in (('train', pairs[:16]), ('val', pairs[16:])):
        (tmp_path / f'{name}.jsonl').write_text('\n'.join(json.dumps(r) for r in part))
    args = [f'--init_from={hf}', '--pref_data=train.jsonl', '--pref_val_data=val.jsonl', '--device=cpu',
            '--block_size=64', '--batch_size=4', '--gradient_accumulation_steps=1', '--learning_rate=3e-3',
            '--max_iters=4', '--eval_interval=4', '--eval_iters=2', '--norm_samples=16', '--out_dir=out']
    p = run_python([sys.executable, os.path.join(ROOT, 'reward_train.py'), *args], cwd=tmp_path,
                   capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rm = RewardModel(str(tmp_path / 'out' / 'ckpt.pt'))
    scores = rm.score([''] * 16, [r['chosen'] for r in pairs[:16]])
    assert scores.std() > 1e-4  # the head has moved: the texts score differently
    assert rm.mean == pytest.approx(scores.mean().item(), abs=1e-5)


@pytest.mark.parametrize('script', ['reward_train.py', 'dpo_train.py'])
def test_resume_keeps_the_health_monitor(tmp_path, script):
    """A resumed run alarms as the straight one: accuracy_at_chance fires at the 3rd val eval. With
    learning_rate=0 nothing moves (reward: a zero head ties every pair; DPO: policy = reference, every
    implicit reward 0), val accuracy is at chance at every eval (steps 0, 2, 4): the straight run's
    alarm is at step 4. The monitor's history was not in the checkpoint (reward_train.py, dpo_train.py;
    ppo_train.py has it), so a run stopped at step 2 and resumed to 4 had seen 2 evals and never alarmed."""
    base = frozen_run_args(tmp_path) + ['--eval_interval=2'] + (['--norm_samples=4'] if script == 'reward_train.py' else [])
    column = 'val/accuracy' if script == 'reward_train.py' else 'val/rewards/accuracies'

    def run(out, *args):
        p = run_python([sys.executable, os.path.join(ROOT, script), *base, f'--out_dir={out}', *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        return [(int(float(r['step'])), r.get('alarm/accuracy_at_chance', '')) for r in csv.DictReader(open(out / 'log.csv'))
                if r[column]]

    straight = run(tmp_path / 'a', '--max_iters=4')
    assert straight == [(0, ''), (2, ''), (4, '1.0')]
    run(tmp_path / 'b', '--max_iters=2')
    assert run(tmp_path / 'b', '--max_iters=4', '--init_from=resume') == straight


@pytest.mark.parametrize('script', ['reward_train.py', 'dpo_train.py', 'reward_train.py --chosen_lm_coef=0.5'])
def test_a_short_last_micro_batch_weighs_by_its_pairs(tmp_path, script):
    """An optimizer step's loss is the mean over its pairs, however they are cut into micro-batches:
    5 pairs as micro-batches of 2, 2 and 1 (accumulation 3, one epoch a step) train as 1 micro-batch
    of 5 does. Before, each micro-batch's mean weighed 1/3, so the lone last pair counted as much
    as two full micro-batches' pairs. Step 0 moves the model off its start (a reward head off 0; a
    DPO policy off its reference), so step 1's pairs have different losses: the logged train loss
    and the weights after step 1 tell the two weightings apart. With chosen_lm_coef the LM term is the
    mean over the step's chosen response tokens (responses of different lengths here): each micro-batch
    weighs by its share of those tokens, not of the pairs."""
    script, *extra = script.split()
    hf = tmp_path / 'hf'
    make_hf_gpt2(str(hf), vocab_size=50257, n_positions=64, n_embd=32)
    records = synthetic_pairs(13)
    if extra:  # chosen responses of 2 to 10 words
        records = [{**r, 'chosen': r['chosen'] + ' really' * (i % 5) * 2} for i, r in enumerate(records)]
    for name, part in (('train', records[:5]), ('val', records[5:])):
        (tmp_path / f'{name}.jsonl').write_text('\n'.join(json.dumps(r) for r in part))
    args = [f'--init_from={hf}', '--pref_data=train.jsonl', '--pref_val_data=val.jsonl', '--device=cpu',
            '--block_size=64', '--learning_rate=1e-2', '--decay_lr=False', '--warmup_iters=0', '--max_iters=2',
            '--eval_interval=2', '--eval_iters=4', '--log_interval=1']  # val: all 8 pairs
    args += ['--norm_samples=4', *extra] if script == 'reward_train.py' else ['--beta=0.5']
    column = 'train/loss' if script == 'reward_train.py' else 'loss'
    runs = {}
    for out, plan in (('split', ['--batch_size=2', '--gradient_accumulation_steps=3']),
                      ('whole', ['--batch_size=5', '--gradient_accumulation_steps=1'])):
        p = run_python([sys.executable, os.path.join(ROOT, script), *args, *plan, f'--out_dir={out}'],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        rows = list(csv.DictReader(open(tmp_path / out / 'log.csv')))
        runs[out] = ({int(r['step']): float(r[column]) for r in rows if r[column]},
                     {int(r['step']): float(r['val/loss']) for r in rows if r['val/loss']})
        if extra:
            runs[out + '_lm'] = {int(r['step']): float(r['train/lm_loss']) for r in rows if r['train/lm_loss']}
    if extra:  # the logged LM loss is the step's mean over its tokens too
        assert runs['split_lm'][0] == pytest.approx(runs['whole_lm'][0], abs=2e-6)
    (split, val_split), (whole, val_whole) = runs['split'], runs['whole']
    assert split.keys() == whole.keys() == {0, 1} and val_split.keys() == val_whole.keys() == {0, 2}
    assert split[1] == pytest.approx(whole[1], abs=2e-6) and abs(whole[1] - whole[0]) > 1e-3  # it moved
    # the model after step 1 (its weights are not compared: Adam turns the rounding of a gradient that is 0
    # in exact arithmetic, as a key bias's, into a whole step of lr, which changes no output)
    assert val_split[2] == pytest.approx(val_whole[2], abs=2e-6) and abs(val_whole[2] - val_whole[0]) > 1e-3


def test_resume_of_another_scripts_checkpoint_is_one_line(tmp_path):
    """reward_train.py resuming a DPO run's out_dir (or DPO a reward run's, train.py either) was a
    KeyError traceback, after the optimizer state had loaded; each checkpoint now names its script."""
    base = frozen_run_args(tmp_path) + ['--max_iters=1', '--eval_interval=1']
    runs = {'reward_train.py': 'out-r', 'dpo_train.py': 'out-d'}
    for script, out in runs.items():
        extra = ['--norm_samples=4'] if script == 'reward_train.py' else []
        p = run_python([sys.executable, os.path.join(ROOT, script), *base, *extra, f'--out_dir={out}'], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        assert torch.load(tmp_path / out / 'ckpt.pt', weights_only=False)['script'] == script
    for script, out, writer in (('dpo_train.py', 'out-r', 'reward_train.py'), ('reward_train.py', 'out-d', 'dpo_train.py'),
                                ('train.py', 'out-r', 'reward_train.py')):
        (tmp_path / 'sft.jsonl').write_text('\n'.join(json.dumps({'prompt': 'Q:', 'response': f' {i}'}) for i in range(20)))
        args = base if script != 'train.py' else ['--device=cpu', '--sft_data=sft.jsonl']
        p = run_python([sys.executable, os.path.join(ROOT, script), *args, '--init_from=resume', f'--out_dir={out}',
                        '--max_iters=2', '--check_memory=False'], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode != 0 and p.stderr.strip().splitlines() == [
            f"error: {out}/ckpt.pt is a {writer} checkpoint, not {script}'s: init_from='resume' continues a {script} "
            f"run; to start one from its weights use --init_from={out} and another out_dir"], (script, p.stderr[-2000:])


def char_vocab(path):
    """A char-level meta.pkl of printable ASCII and the newline (its EOS): 96 tokens."""
    import pickle
    chars = ['\n'] + [chr(i) for i in range(32, 127)]
    with open(path, 'wb') as f:
        pickle.dump({'vocab_size': len(chars), 'stoi': {c: i for i, c in enumerate(chars)},
                     'itos': dict(enumerate(chars))}, f)
    return len(chars)


def test_a_char_tokenizer_with_a_gpt2_vocab_model_is_one_line(tmp_path):
    """tokenizer=<a char-level meta.pkl> with a model of GPT-2's vocabulary (50257 ids, not the 96
    characters) trained without a word: ids the characters do not name (a KeyError in PPO and
    sample.py, which decode). Refused at start, in one line naming the model and both sizes."""
    n = char_vocab(tmp_path / 'meta.pkl')
    args = frozen_run_args(tmp_path) + ['--max_iters=1', '--eval_interval=1', f'--tokenizer={tmp_path / "meta.pkl"}']
    for script in ('reward_train.py', 'dpo_train.py'):
        p = run_python([sys.executable, os.path.join(ROOT, script), *args, f'--out_dir={tmp_path / script}'],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
        err = p.stderr.strip().splitlines()
        assert p.returncode != 0 and 'Traceback' not in p.stderr, (script, p.stderr[-2000:])
        assert err[-1] == f"error: {tmp_path / 'hf'} has vocab_size 50257, not the {n} characters of the char-level " \
                          f"tokenizer (a model of GPT-2's vocabulary? its tokenizer is 'gpt2')", (script, err[-1])
        assert not os.path.exists(tmp_path / script / 'ckpt.pt')


def test_an_out_dir_that_is_a_file_is_one_line(tmp_path):
    """out_dir naming a file, or a path under one: one line (a FileExistsError or NotADirectoryError
    traceback), and the file is left as it was."""
    args = frozen_run_args(tmp_path) + ['--max_iters=1', '--eval_interval=1']
    before = (tmp_path / 'pref.jsonl').read_bytes()
    for script in ('reward_train.py', 'dpo_train.py'):
        for out, message in (('pref.jsonl', 'is a file, not a directory'), ('pref.jsonl/run', 'cannot be created: ')):
            p = run_python([sys.executable, os.path.join(ROOT, script), *args, f'--out_dir={out}'], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
            err = p.stderr.strip().splitlines()
            assert p.returncode != 0 and 'Traceback' not in p.stderr, (script, p.stderr[-2000:])
            assert err[-1].startswith(f'error: out_dir {out} {message}'), (script, err[-1])
        # resuming from an out_dir that does not exist: one line, and no empty out_dir left behind
        p = run_python([sys.executable, os.path.join(ROOT, script), *args, '--out_dir=gone', '--init_from=resume'],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode != 0 and p.stderr.strip().splitlines()[-1] == \
            "error: init_from='resume' but out_dir gone does not exist: nothing to resume", (script, p.stderr[-2000:])
        assert not os.path.exists(tmp_path / 'gone')
    assert (tmp_path / 'pref.jsonl').read_bytes() == before
