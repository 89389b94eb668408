"""DPO: the loss family against hand-computed values, response log-probs against a slow per-token
loop (right- and left-padded), the reference paths (frozen copy, LoRA adapters off, on-disk cache),
and dpo_train.py end to end: it learns a preference, resumes exactly, and rejects a bad reference."""
import copy
import csv
import json
import math
import os
import sys
from dataclasses import asdict

import pytest
import torch

from common import GPT2Tokenizer, load_preference_pairs, pad_right, preference_logps
from conftest import ROOT, make_hf_gpt2, run_python
from losses import dpo_loss, sequence_logprobs
from model import GPT

# ----------------------------------------------------------------------------------------------
# dpo_loss on hand-computed values

# two pairs: h = (pc - rc) - (pr - rr) = (0.5) - (-0.5) = 1 and (-1) - (1) = -2; beta = 0.5
POLICY_CHOSEN, POLICY_REJECTED = [-1.0, -3.0], [-2.0, -1.0]
REF_CHOSEN, REF_REJECTED = [-1.5, -2.0], [-1.5, -2.0]
BETA = 0.5


@pytest.mark.parametrize('loss_type, label_smoothing, expected', [
    # -log sigmoid(beta h) = softplus(-beta h): softplus(-0.5) = 0.474077, softplus(1) = 1.313262
    ('sigmoid', 0.0, [0.4740769841801067, 1.3132616875182228]),
    # 0.9 softplus(-beta h) + 0.1 softplus(beta h) = softplus(-beta h) + 0.1 beta h
    ('sigmoid', 0.1, [0.5240769841801067, 1.2132616875182228]),
    # (h - 1 / (2 beta))^2 = (1 - 1)^2, (-2 - 1)^2: h itself, not beta h (that would give 0.25, 4)
    ('ipo', 0.0, [0.0, 9.0]),
    # relu(1 - beta h) = relu(0.5), relu(2)
    ('hinge', 0.0, [0.5, 2.0]),
])
def test_dpo_loss_hand_computed(loss_type, label_smoothing, expected):
    pc = torch.tensor(POLICY_CHOSEN, dtype=torch.float64, requires_grad=True)
    pr = torch.tensor(POLICY_REJECTED, dtype=torch.float64, requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, torch.tensor(REF_CHOSEN, dtype=torch.float64),
                                                        torch.tensor(REF_REJECTED, dtype=torch.float64),
                                                        BETA, loss_type, label_smoothing)
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64))
    # implicit rewards beta (policy - ref), detached
    assert chosen_rewards.tolist() == [0.25, -0.5] and rejected_rewards.tolist() == [-0.25, 0.5]
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    if loss_type == 'sigmoid' and label_smoothing == 0:
        losses.sum().backward()  # d/d pc of softplus(-beta h) = -beta sigmoid(-beta h); sigmoid(-0.5) = 0.377541
        assert abs(pc.grad[0].item() + 0.5 * 0.3775406687981454) < 1e-12 and pr.grad[0] == -pc.grad[0]


def test_dpo_loss_bad_arguments_name_the_choices():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=r"unknown DPO loss_type 'kto'; choose among sigmoid, ipo, hinge"):
        dpo_loss(x, x, x, x, 0.1, 'kto')
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type='sigmoid' only"):
        dpo_loss(x, x, x, x, 0.1, 'ipo', 0.1)
    with pytest.raises(ValueError, match=r'label_smoothing must be in \[0, 0.5\)'):
        dpo_loss(x, x, x, x, 0.1, 'sigmoid', 0.5)


# ----------------------------------------------------------------------------------------------
# response log-probs through the model

# (ids, n_prompt) examples in tiny_hf's vocabulary (101 tokens): different prompt and response lengths
PAIRS = [(([5, 6, 7, 8, 9, 10], 3), ([5, 6, 7, 11], 3), None),
         (([20, 21, 22], 2), ([20, 21, 23, 24, 25, 26, 27], 2), None),
         (([30, 31, 32, 33, 34, 35, 36, 37, 38], 8), ([30, 31, 32, 33, 34, 35, 36, 37, 39, 40], 8), None)]


def slow_response_logp(model, ids, n_prompt):
    """One example alone (no padding), token by token: sum over response tokens t of
    log softmax(logits[t - 1])[ids[t]], in float64."""
    logits = model(torch.tensor([ids]))[0][0].double()
    return sum(torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(n_prompt, len(ids)))


@pytest.fixture(scope='module')
def base(tiny_hf):
    return GPT.from_pretrained(tiny_hf[0]).eval()


def test_sequence_logprobs_equal_a_slow_loop_right_and_left_padded(base):
    examples = [ex for pair in PAIRS for ex in pair[:2]]
    expected = torch.tensor([slow_response_logp(base, ids, n) for ids, n in examples])
    with torch.no_grad():
        ids, _, response_mask = pad_right(examples, pad_id=0, device='cpu')  # right-padded: no mask needed
        right = sequence_logprobs(base(ids)[0], ids, response_mask)
        # left-padded: real tokens at the end, attention_mask says which; the response mask moves with them
        T = ids.size(1)
        left_ids = torch.zeros_like(ids)
        attention_mask, left_mask = torch.zeros_like(ids), torch.zeros_like(response_mask)
        for i, (x, n) in enumerate(examples):
            left_ids[i, T - len(x):] = torch.tensor(x)
            attention_mask[i, T - len(x):] = 1
            left_mask[i, T - len(x) + n:] = 1.0
        left = sequence_logprobs(base(left_ids, attention_mask=attention_mask)[0], left_ids, left_mask)
        chosen, rejected = preference_logps(base, PAIRS, pad_id=0, device='cpu')  # the path dpo_train uses
    torch.testing.assert_close(right, expected.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(left, expected.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.stack([chosen, rejected], 1).flatten(), expected.float(), atol=1e-4, rtol=0)


def test_loss_at_init_is_log_2_when_policy_is_reference(tiny_hf):
    policy = GPT.from_pretrained(tiny_hf[0])  # train mode, as in training (dropout 0)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    with torch.no_grad():
        ref_chosen, ref_rejected = preference_logps(reference, PAIRS, 0, 'cpu')
    chosen, rejected = preference_logps(policy, PAIRS, 0, 'cpu')
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, 0.1)
    torch.testing.assert_close(losses, torch.full((3,), math.log(2)))
    assert torch.all(chosen_rewards == 0) and torch.all(rejected_rewards == 0)
    losses.mean().backward()  # at init the gradient still pushes chosen up and rejected down
    assert policy.lm_head.weight.grad.abs().sum() > 0


def test_lora_reference_with_adapters_off_equals_the_frozen_base(tiny_hf, base):
    policy = GPT.from_pretrained(tiny_hf[0], lora_rank=4, lora_targets='attn,mlp')
    with torch.no_grad():
        ref_chosen, ref_rejected = preference_logps(base, PAIRS, 0, 'cpu')
    opt = policy.configure_optimizers(0.0, 1e-2, (0.9, 0.999), 'cpu')
    for _ in range(3):  # DPO steps against the frozen base: the adapters move off zero
        chosen, rejected = preference_logps(policy, PAIRS, 0, 'cpu')
        dpo_loss(chosen, rejected, ref_chosen, ref_rejected, 0.1)[0].mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    policy.eval()
    with torch.no_grad():
        adapted = preference_logps(policy, PAIRS, 0, 'cpu')
        with policy.disable_adapters():
            off = preference_logps(policy, PAIRS, 0, 'cpu')
    assert not torch.allclose(adapted[0], ref_chosen, atol=1e-3)  # training changed the policy
    assert torch.equal(off[0], ref_chosen) and torch.equal(off[1], ref_rejected)


# ----------------------------------------------------------------------------------------------
# dpo_train.py end to end on synthetic preferences: chosen is always " yes", rejected " no"

WORDS = ['apple', 'banana', 'cherry', 'grape', 'lemon', 'mango', 'peach', 'pear', 'plum', 'kiwi',
         'chair', 'table', 'river', 'cloud', 'stone', 'shoe', 'lamp', 'door', 'road', 'book']
N_IDENTICAL = 3
DPO_TINY = ['--device=cpu', '--pref_val_data=', '--val_fraction=0.2', '--block_size=16', '--batch_size=8',
            '--gradient_accumulation_steps=1', '--learning_rate=1e-2', '--min_lr=1e-3', '--warmup_iters=0',
            '--lr_decay_iters=20', '--eval_interval=10', '--eval_iters=10']


def save_project_checkpoint(path, model):
    """A checkpoint of this project (loads without importing transformers in the subprocess)."""
    os.makedirs(path, exist_ok=True)
    torch.save({'model': model.state_dict(), 'model_args': asdict(model.config)}, os.path.join(path, 'ckpt.pt'))


@pytest.fixture(scope='module')
def dpo_dir(tmp_path_factory):
    """pref.jsonl (100 yes/no pairs + 3 identical ones), init/ (a tiny random GPT-2 with GPT-2's
    vocabulary) and ref-vocab/ (the same with another vocabulary size)."""
    d = tmp_path_factory.mktemp('dpo')
    records = [{'prompt': f"Q: {w}{p}", 'chosen': ' yes', 'rejected': ' no'}
               for w in WORDS for p in ('?', '!', '.', ':', ' ok?')]
    records += [{'prompt': 'Q: same?', 'chosen': ' maybe', 'rejected': ' maybe'}] * N_IDENTICAL
    (d / 'pref.jsonl').write_text('\n'.join(json.dumps(r) for r in records))
    for name, vocab in (('init', 50257), ('ref-vocab', 50304)):
        make_hf_gpt2(str(d / f'{name}-hf'), n_embd=16, vocab_size=vocab, n_positions=16)
        save_project_checkpoint(str(d / name), GPT.from_pretrained(str(d / f'{name}-hf')))
    return d


def run_dpo(args, cwd, fresh=False):
    env = dict(os.environ, OMP_NUM_THREADS='1')  # 2 shared cores: one thread is faster and steadier
    return run_python([sys.executable, os.path.join(ROOT, 'dpo_train.py'), *args], cwd=cwd,
                      capture_output=True, text=True, timeout=300, env=env, fresh=fresh)


def log_rows(out_dir):
    """{step: {metric: float}} of log.csv, without the wall-clock column."""
    rows = {}
    for r in csv.DictReader(open(os.path.join(out_dir, 'log.csv'))):
        rows.setdefault(int(r['step']), {}).update({k: float(v) for k, v in r.items() if v and k not in ('step', 'time_ms', 'tokens_per_s', 'mem/peak_gib')})
    return rows


@pytest.fixture(scope='module')
def learned(dpo_dir):
    """A 20-iteration run with cached reference log-probs: (its output directory, its stdout)."""
    out = dpo_dir / 'out-learn'
    p = run_dpo(DPO_TINY + ['--init_from=init', '--pref_data=pref.jsonl', f'--out_dir={out}', '--max_iters=20',
                            '--precompute_ref_logps=True'], dpo_dir)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return out, p.stdout


def test_tiny_dpo_learns_the_preference(learned):
    out, stdout = learned
    assert f"pref.jsonl: 100 pairs; {N_IDENTICAL} with chosen == rejected skipped, 0 truncated" in stdout
    assert 'preference pairs: 80 train, 20 val' in stdout
    rows = log_rows(out)
    assert rows[0]['loss'] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at the first step
    assert rows[0]['val/loss'] == pytest.approx(math.log(2), abs=1e-6) and rows[0]['val/rewards/margins'] == 0
    assert rows[20]['val/rewards/accuracies'] > 0.9
    margins = [rows[s]['val/rewards/margins'] for s in (0, 10, 20)]
    assert margins[0] < margins[1] < margins[2] and margins[2] > 0.5  # the margin grows
    assert rows[20]['val/loss'] < 0.5 and rows[19]['logps/chosen'] > rows[0]['logps/chosen']
    assert rows[19]['logps/rejected'] < rows[0]['logps/rejected']
    assert all(math.isfinite(v) for r in rows.values() for v in r.values())
    assert os.path.isfile(out / 'best.pt') and torch.load(out / 'ckpt.pt', weights_only=False)['iter_num'] == 20


def test_cached_reference_logps_equal_online_ones(dpo_dir, learned):
    cache_files = list((dpo_dir / '.cache').glob('pref.jsonl.ref_logps.*.pt'))
    assert len(cache_files) == 1  # next to the data file
    cached = torch.load(cache_files[0], weights_only=True)['logps']  # (N, 2), the file's pairs in order
    pairs, _ = load_preference_pairs(str(dpo_dir / 'pref.jsonl'), 'train', GPT2Tokenizer(), 16, 'left')
    reference = GPT.from_pretrained(str(dpo_dir / 'init')).eval()
    with torch.no_grad():
        online = torch.stack(preference_logps(reference, pairs, 50256, 'cpu'), 1)
    assert cached.shape == (100, 2)
    torch.testing.assert_close(cached, online, atol=1e-5, rtol=0)
    # the same run with the reference on line gives the same training curve
    out = dpo_dir / 'out-online'
    p = run_dpo(DPO_TINY + ['--init_from=init', '--pref_data=pref.jsonl', f'--out_dir={out}', '--max_iters=5'], dpo_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'reference: init, a frozen copy in float32' in p.stdout and '.cache' not in p.stdout
    a, b = log_rows(learned[0]), log_rows(out)
    for step in range(5):
        for k in ('loss', 'rewards/margins', 'logps/chosen', 'logps/rejected'):
            assert b[step][k] == pytest.approx(a[step][k], abs=1e-5), (step, k)


def test_a_cache_file_of_other_pairs_is_refused(dpo_dir, tmp_path):
    """A cache whose rows do not match the pairs (a file copied over, an older format) is one error
    line, not reference log-probs silently misaligned with the pairs."""
    import shutil
    shutil.copy(dpo_dir / 'pref.jsonl', tmp_path / 'pref.jsonl')
    args = DPO_TINY + [f'--init_from={dpo_dir / "init"}', '--pref_data=pref.jsonl', '--precompute_ref_logps=True',
                       '--max_iters=1']
    assert run_dpo(args + [f'--out_dir={tmp_path / "a"}'], tmp_path).returncode == 0
    [path] = (tmp_path / '.cache').glob('pref.jsonl.ref_logps.*.pt')
    cache = torch.load(path, weights_only=True)
    torch.save({**cache, 'logps': cache['logps'][:50]}, path)
    p = run_dpo(args + [f'--out_dir={tmp_path / "b"}'], tmp_path)
    assert p.returncode != 0 and "holds (50, 2) reference log-probs for 100 pairs: not this data's cache" in p.stderr


def test_resume_continues_the_identical_curve_and_reuses_the_cache(dpo_dir, learned):
    out = dpo_dir / 'out-resumed'
    args = DPO_TINY + ['--pref_data=pref.jsonl', f'--out_dir={out}', '--precompute_ref_logps=True']
    p = run_dpo(args + ['--init_from=init', '--max_iters=10'], dpo_dir)  # "interrupted" at 10
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'reference log-probs of 100 pairs loaded from' in p.stdout  # the cache of the first run
    assert 'reference: ' not in p.stdout  # no reference model built at all
    p = run_dpo(args + ['--init_from=resume', '--max_iters=20'], dpo_dir, fresh=True)  # a new hash seed
    assert p.returncode == 0, p.stderr[-3000:]
    assert log_rows(out) == log_rows(learned[0])  # bit-identical, evals included
    sd_a = torch.load(learned[0] / 'ckpt.pt', weights_only=False)['model']
    sd_b = torch.load(out / 'ckpt.pt', weights_only=False)['model']
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_lora_dpo_uses_the_adapters_off_policy_as_reference(dpo_dir):
    out = dpo_dir / 'out-lora'
    p = run_dpo(DPO_TINY + ['--init_from=init', '--pref_data=pref.jsonl', f'--out_dir={out}', '--max_iters=3',
                            '--eval_interval=3', '--lora_rank=4', '--lora_targets=attn,mlp'], dpo_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'the policy with its LoRA adapters disabled (no copy)' in p.stdout
    rows = log_rows(out)
    assert rows[0]['loss'] == pytest.approx(math.log(2), abs=1e-6) and rows[3]['val/rewards/margins'] > 0
    base = torch.load(dpo_dir / 'init' / 'ckpt.pt', weights_only=False)['model']
    sd = torch.load(out / 'ckpt.pt', weights_only=False)['model']
    assert all(torch.equal(sd[k], base[k]) for k in base)  # the frozen base (= the reference) never moved
    assert any(k.endswith('lora_B') and sd[k].abs().sum() > 0 for k in sd)
    # on resume ref_from cannot swap that reference for another model (it was silently taken)
    p = run_dpo(DPO_TINY + ['--init_from=resume', '--pref_data=pref.jsonl', f'--out_dir={out}', '--max_iters=4',
                            '--lora_rank=4', '--lora_targets=attn,mlp', '--ref_from=init'], dpo_dir)
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith(
        "error: this run's reference is its policy with the LoRA adapters off; --ref_from=init cannot replace it")


def test_lora_dpo_from_a_lora_sft_checkpoint_keeps_it_as_the_reference(dpo_dir):
    """init_from with trained adapters of its own (a LoRA SFT checkpoint, as config/sft_gpt2large_lora.py
    writes): they are merged into the base and fresh adapters (here of another rank) go on top, so the
    adapters-off reference is init_from itself: loss log 2 at iteration 0, and the trained policy's
    base weights are init_from's merged weights. (Before, DPO refused such an init_from.)"""
    sft = GPT.from_pretrained(str(dpo_dir / 'init'), lora_rank=4, lora_alpha=8.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if n.endswith('lora_B'):
                p.normal_(0, 0.3)  # trained adapters: the SFT model differs from its base
    save_project_checkpoint(str(dpo_dir / 'init-lora'), sft)
    merged = sft.merge_lora().state_dict()
    out = dpo_dir / 'out-lora-from-lora'
    p = run_dpo(DPO_TINY + ['--init_from=init-lora', '--pref_data=pref.jsonl', f'--out_dir={out}', '--max_iters=2',
                            '--eval_interval=2', '--lora_rank=2'], dpo_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert log_rows(out)[0]['loss'] == pytest.approx(math.log(2), abs=1e-6)  # the policy is the reference
    sd = torch.load(out / 'ckpt.pt', weights_only=False)['model']
    assert all(torch.equal(sd[k], merged[k]) for k in merged)  # the frozen base = init_from merged
    assert any(k.endswith('lora_B') and sd[k].abs().sum() > 0 for k in sd)
    # lora_rank=0 (LoRA off) from it: merged, and every weight trains (before: only its old adapters did)
    out = dpo_dir / 'out-full-from-lora'
    p = run_dpo(DPO_TINY + ['--init_from=init-lora', '--pref_data=pref.jsonl', f'--out_dir={out}', '--max_iters=2',
                            '--eval_interval=2'], dpo_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'has LoRA adapters; lora_rank=0: merged into its weights, every weight trains' in p.stdout
    assert log_rows(out)[0]['loss'] == pytest.approx(math.log(2), abs=1e-6)
    sd = torch.load(out / 'ckpt.pt', weights_only=False)['model']
    assert not any(k.endswith(('lora_A', 'lora_B')) for k in sd)
    assert not torch.equal(sd['transformer.h.0.mlp.c_fc.weight'], merged['transformer.h.0.mlp.c_fc.weight'])
    # and it resumes exactly: the reference reloaded from init-lora is merged too, as the copy the run
    # started with (it was the unmerged LoRA model: the same function up to rounding, 7e-5 in the weights)
    straight = dpo_dir / 'out-full-from-lora-straight'
    for d, extra in ((straight, ['--init_from=init-lora']), (out, ['--init_from=resume'])):
        p = run_dpo(DPO_TINY + [*extra, '--pref_data=pref.jsonl', f'--out_dir={d}', '--max_iters=4', '--eval_interval=2'],
                    dpo_dir)
        assert p.returncode == 0, p.stderr[-3000:]
    assert log_rows(out) == log_rows(straight)
    sd, sd_straight = (torch.load(d / 'ckpt.pt', weights_only=False)['model'] for d in (out, straight))
    assert all(torch.equal(sd[k], sd_straight[k]) for k in sd)


def test_resume_refuses_a_changed_reference_and_best_pt_is_this_runs(dpo_dir):
    """A resumed run reloads its reference from init_from's path (or the ref_from it is given): if that
    checkpoint was replaced meanwhile (an SFT run retrained into the same out_dir), DPO would go on
    against other weights without a word; it is one error line. And with learning_rate=0 (val loss log 2 at every eval,
    never below the start's) best.pt is still written: the start's eval no longer sets the bar."""
    import shutil
    shutil.copytree(dpo_dir / 'init', dpo_dir / 'init-moving')
    out = dpo_dir / 'out-moving'
    args = DPO_TINY + ['--init_from=init-moving', '--pref_data=pref.jsonl', f'--out_dir={out}', '--eval_interval=2',
                       '--learning_rate=0', '--min_lr=0']
    p = run_dpo(args + ['--max_iters=2'], dpo_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / 'best.pt').is_file() and torch.load(out / 'best.pt', weights_only=False)['iter_num'] == 2
    ckpt = torch.load(dpo_dir / 'init-moving' / 'ckpt.pt', weights_only=False)
    ckpt['model']['transformer.ln_f.bias'] += 1.0  # another model saved in its place
    torch.save(ckpt, dpo_dir / 'init-moving' / 'ckpt.pt')
    resume = [a for a in args if not a.startswith('--init_from')] + ['--init_from=resume', '--max_iters=4']
    p = run_dpo(resume, dpo_dir)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1].startswith('error: the reference init-moving changed since this run started')
    # the same path named by ref_from (as a config file that sets it would) is checked too (it was skipped)
    p = run_dpo(resume + ['--ref_from=init-moving'], dpo_dir)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1].startswith('error: the reference init-moving changed since this run started')
    # and ref_from naming a copy of the weights the run started with (init: init-moving's original) resumes
    p = run_dpo(resume + ['--ref_from=init'], dpo_dir)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize('args, message', [
    (['--ref_from=ref-vocab'], 'error: reference ref-vocab has vocab_size 50304 but the policy has 50257'),
    (['--loss_type=kto'], "error: unknown DPO loss_type 'kto'; choose among sigmoid, ipo, hinge"),
])
def test_bad_reference_or_loss_is_one_clear_line(dpo_dir, args, message):
    p = run_dpo(DPO_TINY + ['--init_from=init', '--pref_data=pref.jsonl', f'--out_dir={dpo_dir / "out-bad"}',
                            '--max_iters=2', *args], dpo_dir)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1 and err[0].startswith(message), p.stderr[-2000:]


def test_nan_loss_stops_with_the_health_report_and_keeps_the_checkpoint(dpo_dir):
    """A diverging run (learning rate 1e30) stops before the optimizer step that would save NaN
    weights: one error line, the health report names the non-finite loss, ckpt.pt is untouched."""
    import hashlib
    out = dpo_dir / 'out-nan'
    base = DPO_TINY + ['--pref_data=pref.jsonl', f'--out_dir={out}', '--eval_interval=2', '--log_interval=1']
    p = run_dpo(base + ['--init_from=init', '--max_iters=2'], dpo_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    before = hashlib.sha256((out / 'ckpt.pt').read_bytes()).hexdigest()
    p = run_dpo(base + ['--init_from=resume', '--max_iters=30', '--learning_rate=1e30', '--decay_lr=False'], dpo_dir)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1].startswith('error: loss is nan at iteration'), p.stderr[-2000:]
    assert 'nonfinite (fatal): turned on 1x' in p.stdout and 'non-finite metrics loss' in p.stdout
    assert hashlib.sha256((out / 'ckpt.pt').read_bytes()).hexdigest() == before
    last = list(csv.DictReader(open(out / 'log.csv')))[-1]  # the row it stopped on reaches the CSV (and wandb)
    assert last['loss'] == 'nan' and last['alarm/nonfinite'] == '1.0', last


def test_a_cache_that_cannot_be_read_or_is_not_finite_is_one_line(dpo_dir, tmp_path):
    """A reference cache cut short (a bad copy, a full disk), without its keys, or holding NaN
    log-probs: one line naming the file and saying to delete it (a RuntimeError or KeyError traceback,
    or NaN losses blamed on the learning rate by the health alarm)."""
    import shutil
    shutil.copy(dpo_dir / 'pref.jsonl', tmp_path / 'pref.jsonl')
    args = DPO_TINY + [f'--init_from={dpo_dir / "init"}', '--pref_data=pref.jsonl', '--precompute_ref_logps=True',
                       '--max_iters=1', f'--out_dir={tmp_path / "out"}']
    assert run_dpo(args, tmp_path).returncode == 0
    [path] = (tmp_path / '.cache').glob('pref.jsonl.ref_logps.*.pt')
    good = path.read_bytes()
    cache = torch.load(path, weights_only=True)
    for damage, message in ((lambda: path.write_bytes(good[:100]), ': not a readable reference cache ('),
                            (lambda: path.write_bytes(b'garbage\n'),  # not torch's 'weights_only=False' advice
                             ': not a readable reference cache (UnpicklingError: not a file of tensors)'),
                            (lambda: torch.save({'logps': cache['logps']}, path), ": not a reference cache (no 'logps'"),
                            (lambda: torch.save({**cache, 'logps': cache['logps'] * float('nan')}, path),
                             ': the reference log-probs are not all finite')):
        damage()
        p = run_dpo(args, tmp_path)
        err = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(err) == 1, p.stderr[-2000:]
        assert err[0].startswith(f'error: {path}{message}') and err[0].endswith('delete it to recompute'), err[0]
