"""
The whole pipeline, on a laptop CPU in under 10 minutes, on a toy alignment task whose true reward
is known: make Shakespeare's lines more positive.

    python demo.py                         # CPU (2 cores: see README for the time)
    python demo.py --device=cuda           # the same stages on a GPU
    python demo.py --quick=True            # every stage, a few iterations each (the CI test)
    python demo.py --input_txt=path/to/input.txt    # offline: tiny Shakespeare from a local file

Task: a prompt is the two lines before a line of held-out Shakespeare and that line's first word;
the response is the rest of the line, ended by the newline character (the char-level EOS). The
true reward of a response is transparent: positivity() below, the number of words from a small
positive lexicon (love, sweet, fair...) minus those from a negative one (death, hate, kill...).

Stages, each one of the project's scripts with its own config (skipped when its output exists;
delete out_dir to start over):
  1. pretrain a small char-level GPT (train.py config/demo_pretrain.py);
  2. sample `samples_per_prompt` responses for each training prompt; every two complete lines of a
     prompt whose true rewards differ make a preference pair (out-demo/pairs.jsonl);
  3. a reward model on those pairs (reward_train.py config/demo_reward.py);
  4. DPO on the same pairs at each beta in `dpo_betas` (dpo_train.py config/demo_dpo.py);
  5. PPO against the LEARNED reward model with a KL penalty (ppo_train.py config/demo_ppo.py),
     and GRPO (config/demo_grpo.py; --run_grpo=False skips it);
  6. every policy on held-out prompts: true reward (mean +- standard error) and the KL to the
     pretrained model (sampled, summed over response tokens), in out-demo/eval.csv, a table, a
     reward-vs-KL frontier (out-demo/frontier.png, when matplotlib is installed) and a few lines
     before and after;
  7. (--envelope_seeds=3) the reference envelope of healthy runs: PPO, GRPO and DPO again with
     seeds 1..N, their per-iteration metrics (PPO/GRPO: also the true reward of every sampled
     response) reduced to min/median/max per iteration in out-demo/envelope_{ppo,grpo,dpo}.csv,
     the curves plot.py --envelope=... overlays on a run of yours.
"""

import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import torch

from common import (UserError, configure, get_tokenizer, pad_left, print_config, read_log, response_forward,
                    write_atomic)
from model import GPT

# -----------------------------------------------------------------------------
out_dir = 'out-demo'
device = 'cpu'                  # 'cuda' runs every stage on the GPU
quick = False                   # shrink every stage to a few iterations (a pipeline check, not a result)
input_txt = ''                  # tiny Shakespeare from this local file ('' = prepare.py downloads it)
samples_per_prompt = 4          # stage 2: responses sampled per training prompt; pairs where their rewards differ
n_pair_prompts = 3000           # stage 2: training prompts sampled for pairs
dpo_betas = '0.1,0.5'           # stage 4: one DPO run per beta
run_grpo = True                 # stage 5: GRPO too
n_eval_prompts = 400            # stage 6: held-out prompts per policy
envelope_seeds = 0              # stage 7: PPO, GRPO and DPO (beta 0.1) again with seeds 1..N -> min/median/max curves
max_new_tokens = 64             # a response: at most this many characters, '\n' included
max_prompt_chars = 48           # the prompt's last characters (prompt + response fit block_size 128)
seed = 1337
# -----------------------------------------------------------------------------
config = configure(globals())
print_config(config)
ROOT = os.path.dirname(os.path.abspath(__file__))
DATASET = 'shakespeare_char'    # data/shakespeare_char/{train,val}.bin, meta.pkl, relative to the cwd
betas = [float(b) for b in dpo_betas.split(',') if b.strip()]
t_start = time.time()

# the true reward: transparent on purpose
POSITIVE = set('love loves loved lovely loving sweet sweetly fair joy joys joyful happy happiness gentle '
               'kind kindly dear dearest noble grace gracious honour honest bless blessed blessing heaven '
               'heavenly hope peace smile smiles merry glad delight pleasure beauty beauteous good best '
               'friend friends true faith comfort bright'.split())
NEGATIVE = set('death dead die dies died dying kill killed kills hate hated hateful blood bloody grief woe '
               'fear curse cursed foul villain poison sorrow war tears weep murder murderer traitor hell devil '
               'sick shame vile wretch wretched slain slay plague evil false grave cruel'.split())


def positivity(prompts, responses):
    """True reward of each response: #positive words - #negative words (lower-cased a-z words)."""
    return [float(sum((w in POSITIVE) - (w in NEGATIVE) for w in re.findall(r"[a-z]+", r.lower())))
            for r in responses]


def unfinished(output, key=None):
    """Why a stage's existing checkpoint is not its finished result, or None when it is: the scripts
    write ckpt.pt/best.pt at every eval, so after an interrupted demo the file of a half-trained
    run is there. Finished: iter_num reached the run's max_iters, or the checkpoint holds `key` (a
    reward model's best.pt: reward_std, which its run adds last). Other outputs are written whole."""
    if not output.endswith('.pt'):
        return None
    ckpt = torch.load(output, map_location='cpu', mmap=True, weights_only=False)
    if key is not None:
        return None if key in ckpt else f"it has no {key} (its run did not finish)"
    it, last = ckpt.get('iter_num', 0), ckpt.get('config', {}).get('max_iters', 0)
    return None if it >= last else f"its run stopped at iteration {it} of {last}"


def stage(name, output, key=None):
    """True when the stage must run (no output yet, or an unfinished run's); prints why not otherwise."""
    if os.path.exists(output):
        why = unfinished(output, key)
        if why is None:
            print(f"== {name}: {output} exists, skipped")
            return False
        print(f"== {name}: {output} is not finished ({why}): run again")
    print(f"== {name} ({time.time() - t_start:.0f}s so far)")
    return True


def run(script, cfg, *overrides):
    """One of the project's scripts, as a user would run it; a failure stops the demo."""
    cmd = [sys.executable, os.path.join(ROOT, script), os.path.join(ROOT, 'config', cfg),
           f'--device={device}', *overrides]
    if quick:
        cmd += QUICK.get(cfg, [])
    print('$ ' + ' '.join(os.path.relpath(c, os.getcwd()) if c.startswith(ROOT) else c for c in cmd[1:]), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise UserError(f"demo stage {script} {cfg} failed (see above)")


QUICK = {  # --quick=True: a few iterations of each stage, to check the pipeline end to end
    'demo_pretrain.py': ['--max_iters=60', '--lr_decay_iters=60', '--eval_interval=60', '--eval_iters=2'],
    'demo_reward.py': ['--max_iters=10', '--lr_decay_iters=10', '--eval_interval=10', '--eval_iters=2', '--norm_samples=16'],
    'demo_dpo.py': ['--max_iters=6', '--lr_decay_iters=6', '--eval_interval=6', '--eval_iters=2'],
    'demo_ppo.py': ['--max_iters=3', '--batch_size=8', '--mini_batch_size=8', '--ppo_epochs=1'],
    'demo_grpo.py': ['--max_iters=3', '--batch_size=2', '--mini_batch_size=8', '--ppo_epochs=1'],
}
if quick:
    samples_per_prompt, n_pair_prompts, n_eval_prompts = 2, 64, 16
    if out_dir == 'out-demo':  # never mix a pipeline check's models into a real run's directory
        out_dir = 'out-demo-quick'

# -----------------------------------------------------------------------------
# data: tiny Shakespeare, char level (its first 90% train, the rest held out, as prepare.py splits)
os.makedirs(out_dir, exist_ok=True)
if stage('data', os.path.join('data', DATASET, 'meta.pkl')):
    cmd = [sys.executable, os.path.join(ROOT, 'data', DATASET, 'prepare.py'), '--out_dir', os.path.join('data', DATASET)]
    if subprocess.run(cmd + (['--input', input_txt] if input_txt else [])).returncode != 0:
        raise UserError("could not prepare tiny Shakespeare (offline? pass --input_txt=path/to/input.txt)")
text_path = input_txt or os.path.join(ROOT, 'data', DATASET, 'input.txt')
if not os.path.isfile(text_path):  # the token files exist, made by prepare.py --input from a local copy
    raise UserError(f"{text_path} not found: data/{DATASET} was prepared from a local file; pass "
                    f"--input_txt=path/to/input.txt again (the demo reads its prompts' lines from it)")
with open(text_path, encoding='utf-8') as f:
    text = f.read()
split_at = int(len(text) * 0.9)
tokenizer = get_tokenizer(DATASET, strict=True)
eos = tokenizer.eot_token  # '\n'


def line_prompts(part):
    """(prompt, original rest of line) for every spoken line of `part` long enough to continue."""
    lines, out = part.split('\n'), []
    for i in range(2, len(lines)):
        line = lines[i]
        if len(line) < 20 or line.endswith(':') or ' ' not in line:
            continue
        first = line[:line.index(' ') + 1]
        prompt = ('\n'.join(lines[i - 2:i]) + '\n' + first)[-max_prompt_chars:]
        out.append((prompt, line[len(first):]))
    return out


g = torch.Generator().manual_seed(seed)
train_prompts = [p for p, _ in line_prompts(text[:split_at])]
train_prompts = [train_prompts[i] for i in torch.randperm(len(train_prompts), generator=g).tolist()]
eval_prompts = [p for p, _ in line_prompts(text[split_at:])]
eval_prompts = [eval_prompts[i] for i in torch.randperm(len(eval_prompts), generator=g)[:n_eval_prompts].tolist()]
prompts_path = os.path.join(out_dir, 'prompts_train.jsonl')
if not os.path.exists(prompts_path):  # written whole or not at all (an interrupted write is never read as done)
    write_atomic(prompts_path, lambda f: f.writelines(json.dumps({'prompt': p}) + '\n' for p in train_prompts))


@torch.no_grad()
def sample(model, prompts, gen, batch_size=256):
    """One response per prompt at temperature 1: (token lists cut after EOS, texts without EOS, ended)."""
    model.eval()
    ids_out, texts, ended = [], [], []
    for i in range(0, len(prompts), batch_size):
        idx, mask = pad_left([tokenizer.encode(p) for p in prompts[i:i + batch_size]], eos, device)
        T = idx.size(1)
        out = model.generate(idx, max_new_tokens, temperature=1.0, attention_mask=mask, eos_token_id=eos,
                             generator=gen)[:, T:].tolist()
        for r in out:
            cut = r.index(eos) + 1 if eos in r else len(r)
            ids_out.append(r[:cut])
            texts.append(tokenizer.decode(r[:cut - 1] if eos in r else r))
            ended.append(eos in r)
    return ids_out, texts, ended


def preference_pairs(prompts, texts, rewards, ended, samples_per_prompt, quick):
    """Preference pairs labelled by the true reward, as dicts (prompt, chosen, rejected, chosen_reward,
    rejected_reward). texts[i * samples_per_prompt:(i + 1) * samples_per_prompt] are prompts[i]'s
    samples, rewards their true rewards, ended whether each reached EOS. Inside each prompt's group,
    every two complete lines whose rewards differ make a pair, the higher-reward one chosen; two
    identical texts never pair. quick (a pipeline check: the lines of its barely trained model seldom
    differ in true reward) also keeps unfinished lines and breaks reward ties by length, the longer
    chosen, so that its few samples still make pairs."""
    pairs = []
    key = (lambda x: (x[0], len(x[1]))) if quick else (lambda x: x[0])
    for i, prompt in enumerate(prompts):
        group = [(rewards[j], texts[j]) for j in range(i * samples_per_prompt, (i + 1) * samples_per_prompt)
                 if ended[j] or quick]  # only complete lines
        for a in group:  # every ordered pair once: a chosen over b only where a is strictly better
            for b in group:
                if key(a) > key(b) and a[1] != b[1]:
                    pairs.append({'prompt': prompt, 'chosen': a[1], 'rejected': b[1],
                                  'chosen_reward': a[0], 'rejected_reward': b[0]})
    return pairs


# -----------------------------------------------------------------------------
# 1. pretrain
pretrain_ckpt = os.path.join(out_dir, 'pretrain', 'ckpt.pt')
if stage('1. pretrain', pretrain_ckpt):
    run('train.py', 'demo_pretrain.py', f'--out_dir={out_dir}/pretrain')

# 2. preference pairs labelled by the true reward
pairs_path = os.path.join(out_dir, 'pairs.jsonl')
if stage('2. preference pairs', pairs_path):
    model, _ = GPT.from_checkpoint(pretrain_ckpt, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    chosen = train_prompts[:n_pair_prompts]
    _, texts, ended = sample(model, [p for p in chosen for _ in range(samples_per_prompt)], gen)
    pairs = preference_pairs(chosen, texts, positivity(None, texts), ended, samples_per_prompt, quick)
    write_atomic(pairs_path, lambda f: f.writelines(json.dumps(p) + '\n' for p in pairs))
    print(f"{len(pairs)} pairs from {len(chosen)} prompts x {samples_per_prompt} samples (equal rewards make no pair)")

# 3. reward model
if stage('3. reward model', os.path.join(out_dir, 'reward', 'best.pt'), key='reward_std'):
    run('reward_train.py', 'demo_reward.py', f'--out_dir={out_dir}/reward', f'--init_from={out_dir}/pretrain',
        f'--pref_data={pairs_path}')

# 4. DPO at each beta
for b in betas:
    if stage(f'4. DPO beta={b}', os.path.join(out_dir, f'dpo_beta{b}', 'ckpt.pt')):
        run('dpo_train.py', 'demo_dpo.py', f'--out_dir={out_dir}/dpo_beta{b}', f'--init_from={out_dir}/pretrain',
            f'--pref_data={pairs_path}', f'--beta={b}')

# 5. PPO (and GRPO) against the learned reward model
rl_runs = ['ppo'] + (['grpo'] if run_grpo else [])
for name in rl_runs:
    if stage(f'5. {name.upper()}', os.path.join(out_dir, name, 'ckpt.pt')):
        run('ppo_train.py', f'demo_{name}.py', f'--out_dir={out_dir}/{name}', f'--init_from={out_dir}/pretrain',
            f'--prompt_data={prompts_path}', f'--reward_model={out_dir}/reward/best.pt')

# -----------------------------------------------------------------------------
# 6. evaluation on held-out prompts: true reward and KL to the pretrained model
print(f"== 6. evaluation on {len(eval_prompts)} held-out prompts ({time.time() - t_start:.0f}s so far)")
reference, _ = GPT.from_checkpoint(pretrain_ckpt, device=device)
reference.eval()
policies = [('pretrained', pretrain_ckpt)] + [(f'dpo beta={b}', os.path.join(out_dir, f'dpo_beta{b}', 'ckpt.pt'))
                                                for b in betas] + [(n, os.path.join(out_dir, n, 'ckpt.pt')) for n in rl_runs]


def mean_se(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1) / len(xs))


def paired_z(xs, base):
    """The mean of xs - base in standard errors of that mean, pairing xs[i] with base[i] (both
    policies answer the same prompts, with the same random numbers, so their rewards correlate:
    treating them as independent samples understates z). 0 where every difference is 0."""
    d_mean, d_se = mean_se([x - b for x, b in zip(xs, base)])
    return d_mean / d_se if d_se > 0 else 0.0


@torch.no_grad()
def sequence_kl(model, prompts, responses, batch_size=128):
    """log pi(y|x) - log pi_ref(y|x) summed over the response tokens (EOS included) of each sample:
    a one-sample estimate of KL(pi || pi_ref) for y ~ pi."""
    kls = []
    for i in range(0, len(prompts), batch_size):
        batch = [(tokenizer.encode(p), r) for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
        T, n = max(len(p) for p, _ in batch), max(len(r) for _, r in batch)
        ids = torch.tensor([[eos] * (T - len(p)) + p + r + [eos] * (n - len(r)) for p, r in batch], device=device)
        mask = torch.tensor([[0] * (T - len(p)) + [1] * (len(p) + len(r)) + [0] * (n - len(r)) for p, r in batch],
                            device=device)
        logp = response_forward(model, ids, mask, T, 1.0, False)[0]
        ref_logp = response_forward(reference, ids, mask, T, 1.0, False)[0]
        kls += ((logp - ref_logp) * mask[:, T:]).sum(1).tolist()
    return kls


rows, examples, true_rewards = [], {}, {}
for name, path in policies:
    model = reference if name == 'pretrained' else GPT.from_checkpoint(path, device=device)[0].eval()
    ids, texts, ended = sample(model, eval_prompts, torch.Generator(device=device).manual_seed(seed + 1))
    true_rewards[name] = positivity(None, texts)
    r_mean, r_se = mean_se(true_rewards[name])
    kl_mean, kl_se = mean_se(sequence_kl(model, eval_prompts, ids))
    rows.append({'policy': name, 'true_reward': r_mean, 'true_reward_se': r_se, 'kl': kl_mean, 'kl_se': kl_se,
                 'eos_rate': sum(ended) / len(ended), 'length': sum(map(len, texts)) / len(texts), 'n': len(texts)})
    examples[name] = texts
for r in rows:  # paired over the 400 prompts
    r['z_vs_pretrained'] = paired_z(true_rewards[r['policy']], true_rewards['pretrained'])
with open(os.path.join(out_dir, 'eval.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)

print(f"\n{'policy':<14} {'true reward':>16} {'vs pretrained':>14} {'KL (nats)':>14} {'EOS':>5} {'length':>7}")
for r in rows:
    print(f"{r['policy']:<14} {r['true_reward']:>8.3f} ± {r['true_reward_se']:.3f} {r['z_vs_pretrained']:>+12.1f}se "
          f"{r['kl']:>7.2f} ± {r['kl_se']:.2f} {r['eos_rate']:>5.2f} {r['length']:>7.1f}")
print("\nheld-out prompts, the pretrained model's line and the RL ones:")
for i in range(3):
    print(f"  prompt: {eval_prompts[i][-60:]!r}")
    for name in examples:
        print(f"    {name:<13} {examples[name][i]!r}")

try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in rows:
        ax.errorbar(r['kl'], r['true_reward'], xerr=r['kl_se'], yerr=r['true_reward_se'], fmt='o', capsize=3,
                    label=r['policy'])
    ax.set_xlabel('KL(policy || pretrained), nats per response')
    ax.set_ylabel('true reward (positivity) per response')
    ax.set_title(f'held-out prompts (n={len(eval_prompts)}): reward vs KL')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'frontier.png'), dpi=120)
    print(f"\nwrote {out_dir}/eval.csv and {out_dir}/frontier.png")
except ImportError:
    print(f"\nwrote {out_dir}/eval.csv (pip install matplotlib for the frontier picture)")

# -----------------------------------------------------------------------------
# 7. optional: the reference envelope of healthy runs, several seeds of the same configs
ENVELOPE = {
    'ppo': ['objective/scores', 'true_reward', 'objective/kl', 'objective/entropy', 'policy/clipfrac',
            'loss/value', 'response_length'],
    'grpo': ['objective/scores', 'true_reward', 'objective/kl', 'objective/entropy', 'policy/clipfrac',
             'response_length'],
    'dpo': ['loss', 'rewards/accuracies', 'rewards/margins', 'logps/chosen', 'logps/rejected'],
}


def log_by_step(run_dir):
    """{step: {metric: value}} of a run's log.csv (common.read_log's numbers), the rows of one step
    merged (train and eval); where a metric is in two rows of a step, the later row's value."""
    steps = {}
    for metric, (xs, values) in read_log(run_dir)[1].items():
        for x, v in zip(xs, values):  # read_log's steps are floats; the Logger wrote ints
            steps.setdefault(int(x), {})[metric] = v
    return steps


def envelope_table(runs, metrics):
    """The envelope CSV's rows, header first: runs is a list of {step: {metric: value}}, one per
    seed; for each step present in every run, the min, median and max of each metric over the
    runs that have it at that step, three blanks where none has."""
    table = [['step'] + [f'{m}/{q}' for m in metrics for q in ('min', 'median', 'max')]]
    for step in sorted(set.intersection(*(set(r) for r in runs))):
        row = [step]
        for m in metrics:
            vals = sorted(r[step][m] for r in runs if m in r[step])
            row += [vals[0], statistics.median(vals), vals[-1]] if vals else ['', '', '']
        table.append(row)
    return table


if envelope_seeds:
    print(f"== 7. reference envelope: {envelope_seeds} seeds of PPO, {'GRPO ' if run_grpo else ''}and DPO "
          f"({time.time() - t_start:.0f}s so far)")
    for algo, metrics in ENVELOPE.items():
        if algo == 'grpo' and not run_grpo:
            continue
        runs = []
        for k in range(1, envelope_seeds + 1):
            d = os.path.join(out_dir, 'envelope', f'{algo}_seed{k}')
            ckpt = os.path.join(d, 'ckpt.pt')
            if not os.path.exists(ckpt) or unfinished(ckpt) is not None:
                if algo == 'dpo':
                    run('dpo_train.py', 'demo_dpo.py', f'--out_dir={d}', f'--init_from={out_dir}/pretrain',
                        f'--pref_data={pairs_path}', '--beta=0.1', f'--seed={k}')
                else:  # every response to samples.csv, for its true reward
                    run('ppo_train.py', f'demo_{algo}.py', f'--out_dir={d}', f'--init_from={out_dir}/pretrain',
                        f'--prompt_data={prompts_path}', f'--reward_model={out_dir}/reward/best.pt', f'--seed={k}',
                        '--sample_interval=1')
            steps = log_by_step(d)
            if algo != 'dpo':
                texts = {}  # the responses are text, which read_log skips: csv itself
                with open(os.path.join(d, 'samples.csv'), newline='') as f:
                    for row in csv.DictReader(f):
                        texts.setdefault(int(row['step']), []).append(row['response'])
                for step, responses in texts.items():
                    steps.setdefault(step, {})['true_reward'] = sum(positivity(None, responses)) / len(responses)
            runs.append(steps)
        table = envelope_table(runs, metrics)
        path = os.path.join(out_dir, f'envelope_{algo}.csv')
        with open(path, 'w', newline='') as f:
            csv.writer(f).writerows(table)
        print(f"wrote {path}: {len(table) - 1} steps x {len(metrics)} metrics over {envelope_seeds} seeds")
print(f"demo done in {time.time() - t_start:.0f}s")
