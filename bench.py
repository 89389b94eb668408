"""
Speed of this project's GPT (model.py) against Hugging Face's GPT2LMHeadModel, side by side in
one run: the same config, the same weights (HF's random init loaded into ours with
GPT.from_pretrained), the same batches, the same dtype/autocast, SDPA attention in both.

    python bench.py                      # small GPT-2 shape on the CPU, about a minute
    python bench.py --threads=1          # steadier numbers on a busy machine
    python bench.py --device=cuda --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 \\
        --batch_size=8 --iters=5 --gen_prompt_len=128 --peak_flops=989e12  # gpt2-small, H100
    python bench.py --compile=True       # torch.compile both models' training step
    python bench.py --plan config/dpo_gpt2large.py [--batch_size=2 ...]   # predicted memory only
    python bench.py --scripts                 # every training script: speed, memory, DPO vs TRL
    python bench.py --scripts --device=cuda --cap_gb=24 --peak_flops=989e12   # gpt2-large, as on a 24 GB card

--plan runs nothing and downloads nothing: it prints common.py's memory planner table for the
script that config is for (flags after it override that script's config, e.g.
--gradient_checkpointing=True), and exits 1 with the flags that would fit when the prediction is
over --plan_gb (default 24, an RTX 4090D).

Each number is the median over `repeats` timings, the two models alternating (ABBA) after a
warmup; ours/HF > 1 means ours is faster, (min-max) is the range of the per-repeat ratios.
- train tokens/s: batch_size * block_size tokens per forward + loss + backward + AdamW step
  (the same AdamW, common.make_optimizer as the scripts use it, for both);
- sample tokens/s: new tokens per second of generate() with a KV cache: gen_batch left-padded
  prompts of different lengths, exactly gen_tokens new tokens per row (no EOS stop);
- CUDA only: peak MB = torch.cuda.max_memory_allocated during a timing minus what was already
  allocated (weights, optimizer states), i.e. activations, grads, caches and temporaries; and
  the MFU of our training step against peak_flops (A100 bf16 312e12, H100 SXM bf16 989e12).
The goals are printed with PASS/below goal; they never change the exit code.

--scripts runs the project's own training scripts (pretrain/finetune and SFT with train.py,
reward_train.py, dpo_train.py with the reference on line and with cached log-probs, a PPO
iteration of ppo_train.py) one after the other in this process (runpy, as `python <script>
<config> --key=value ...`), warmup + iters iterations each (--repeats=N: all of them N times, in
alternating order, medians reported), and reads each run's log.csv back:
- step ms, tokens/s: medians over the timed iterations of the time_ms and tokens_per_s every
  script logs (common.step_metrics; tokens = the rows trained on, padding included; PPO: the
  generated response tokens of the whole iteration, rollout included);
- MFU (CUDA, not PPO): tokens/s x (6N + 12 L h T) / peak_flops, the trained model's forward and
  backward only (as model.GPT.estimate_mfu);
- peak GiB (CUDA): torch.cuda.max_memory_allocated over the whole entry, next to the planner's
  prediction for the same config (common.plan_config; it adds 0.5 GiB of CUDA context, which
  max_memory_allocated does not see) and their ratio;
- status: ok, or why the entry stopped (an out-of-memory under --cap_gb, a config error): the
  table goes on.
--size=tiny (the CPU default) builds a random 4-layer, 64-wide GPT-2 with GPT-2's vocabulary and
synthetic data in a temporary directory (nothing is downloaded; GPT-2's BPE comes from tiktoken,
TIKTOKEN_CACHE_DIR offline); --size=gpt2-large (the CUDA default) runs the config/*_gpt2large.py
configs on a random gpt2-large (the same speed and memory as the pretrained one) with synthetic
sequences of exactly block_size tokens. --cap_gb=24 applies
torch.cuda.set_per_process_memory_fraction so a bigger GPU runs out of memory where a 24 GB card
would; it is ignored, with a note, on CPU. With trl installed (not a requirement), trl.DPOTrainer
runs the DPO entries' pairs, batches, optimizer settings and precision, and the step-time ratios
ours/TRL are printed.

The cached reference removes one no-grad forward of the reference model from each DPO step. A
full-finetuning step is about 3 forwards' work (forward + backward), so the ceiling of the
speed-up is about 4/3 on a GPU; it is higher where the training step is cheaper (LoRA) or the
forward relatively dearer (measured: see README).
"""

import contextlib
import gc
import hashlib
import importlib.util
import json
import os
import platform
import random
import runpy
import statistics
import sys
import tempfile
import time
from dataclasses import asdict

_ROOT = os.path.dirname(os.path.abspath(__file__))


def print_plan(argv):
    """bench.py --plan config/X.py [--plan_gb=24] [--key=value ...]: the memory plan, nothing run."""
    from common import GiB, UserError, check_fits, format_plan, parse_value, plan_config
    path = argv[1] if argv[0] == '--plan' and len(argv) > 1 else argv[0].split('=', 1)[1] if '=' in argv[0] else ''
    if not path or path.startswith('--'):
        raise UserError("--plan needs a config file: python bench.py --plan config/X.py [--plan_gb=24] [--key=value]")
    rest = argv[2:] if argv[0] == '--plan' else argv[1:]
    gb = [parse_value(a.split('=', 1)[1]) for a in rest if a.startswith('--plan_gb=')]
    if any(isinstance(g, bool) or not isinstance(g, (int, float)) or g <= 0 for g in gb):
        raise UserError(f"--plan_gb must be a positive number of GiB, got {gb}")
    device_bytes = (gb[-1] if gb else 24.0) * GiB
    script, config, plan = plan_config(path, [a for a in rest if not a.startswith('--plan_gb=')])
    i = plan['inputs']
    print(f"memory plan (predicted, not measured) of python {script} {' '.join([path, *rest])}")
    print(f"model: {i['cfg']['n_layer']} layers, n_embd {i['cfg']['n_embd']}, vocab {i['cfg']['vocab_size']}"
          + (f", LoRA rank {i['cfg']['lora_rank']} ({i['cfg'].get('lora_targets')})" if i['cfg'].get('lora_rank') else "")
          + f"; micro-batch {i['batch_size']} x {i['seq_len']} tokens, dtype {i['dtype']}, {i['optimizer']}, "
          f"gradient_checkpointing={i['gradient_checkpointing']}"
          + "".join(f"; {name} ({dtype})" for name, _, dtype, _ in i['frozen'] if dtype)
          + (f"; rollout KV cache {i['kv_batch']} x {i['kv_len']}" if i['kv_batch'] else ""))
    print(format_plan(plan, device_bytes))
    check_fits(plan, device_bytes, path)


if len(sys.argv) > 1 and (sys.argv[1] == '--plan' or sys.argv[1].startswith('--plan=')):
    print_plan(sys.argv[1:])
    sys.exit(0)

import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from common import (GPT2Tokenizer, UserError, configure, make_optimizer, param_counts, plan_config, read_log,
                    require_at_least, script_defaults, setup_device)
from common import GiB as _GiB  # an int: a plain global here would be a config key of the default mode
from model import GPT, IGNORE_INDEX, train_flops_per_token


# -----------------------------------------------------------------------------
# --scripts: every training script run for a few iterations, in this process, as
# `python <script> <config> --key=value ...` would run it; its own log.csv gives the speed

SCRIPT = dict(pretrain='train.py', sft='train.py', reward='reward_train.py', dpo='dpo_train.py',
              dpo_cached='dpo_train.py', ppo='ppo_train.py')  # entry -> its script, in the table's order
LARGE_CONFIG = dict(pretrain='config/finetune_shakespeare.py', sft='config/sft_gpt2large.py',
                    reward='config/reward_gpt2large.py', dpo='config/dpo_gpt2large.py',
                    dpo_cached='config/dpo_gpt2large.py', ppo='config/ppo_gpt2large.py')
TINY_SHAPE = dict(n_layer=4, n_head=4, n_embd=64, block_size=64)  # with GPT-2's vocabulary
TINY_CONFIG = dict(  # the tiny runs' own settings (written to a config file per entry)
    pretrain=dict(batch_size=8, gradient_accumulation_steps=1),
    sft=dict(tokens_per_batch=512, gradient_accumulation_steps=1),
    reward=dict(batch_size=4, gradient_accumulation_steps=1),
    dpo=dict(batch_size=4, gradient_accumulation_steps=1, grad_clip=1.0),
    dpo_cached=dict(batch_size=4, gradient_accumulation_steps=1, grad_clip=1.0),
    ppo=dict(batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=16),
)


def synthetic_inputs(d, shape, block_size, max_new_tokens, n_records, seed=0):
    """Everything the entries read, written under d, offline: a random GPT-2 of `shape` saved by
    transformers (init-hf/: every policy's start, and TRL's), a reward checkpoint of the same
    trunk with a value head (rm/best.pt, PPO's scorer), token files (tokens/), SFT records,
    preference pairs and PPO prompts of random common words. Every sequence is exactly
    block_size tokens (prompt block_size // 2, response + EOS the rest) and every PPO prompt
    block_size - max_new_tokens, so the padded batches are the full ones the planner assumes."""
    words = ('the of and to in is that it was for on are with as his they be at one have this from by but not '
             'what all were we when your can said there use an each which she do how their if will up other '
             'about out many then them these so some her would make like him into time has look two more write '
             'go see number no way could people my than first water been call who oil its now find long down '
             'day did get come made may part').split()  # one GPT-2 token each, with its leading space
    rng = random.Random(seed)
    text = lambda n: ''.join(' ' + rng.choice(words) for _ in range(n))
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=shape['n_layer'], n_head=shape['n_head'], n_embd=shape['n_embd'],
                                    n_positions=block_size, vocab_size=50257, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0))
    hf.save_pretrained(os.path.join(d, 'init-hf'))
    del hf
    rm = GPT.from_pretrained(os.path.join(d, 'init-hf'), value_head=True)
    os.makedirs(os.path.join(d, 'rm'))
    torch.save({'model': rm.state_dict(), 'model_args': asdict(rm.config), 'config': {'tokenizer': 'gpt2'}},
               os.path.join(d, 'rm', 'best.pt'))
    del rm
    enc = GPT2Tokenizer()
    os.makedirs(os.path.join(d, 'tokens'))
    for split, n in (('train', 20 * n_records * block_size), ('val', 4 * block_size)):
        np.array(enc.encode(text(n)), dtype=np.uint16).tofile(os.path.join(d, 'tokens', f'{split}.bin'))
    prompt, response = block_size // 2, block_size - block_size // 2 - 1
    records = dict(
        sft=[{'prompt': text(prompt), 'response': text(response)} for _ in range(n_records)],
        pref=[{'prompt': text(prompt), 'chosen': text(response), 'rejected': text(response)} for _ in range(n_records)],
        prompts=[{'prompt': text(block_size - max_new_tokens)} for _ in range(n_records)])
    for name, rows in records.items():
        with open(os.path.join(d, f'{name}.jsonl'), 'w') as f:
            f.write(''.join(json.dumps(r) + '\n' for r in rows))
    return dict(init=os.path.join(d, 'init-hf'), reward_model=os.path.join(d, 'rm', 'best.pt'),
                tokens=os.path.join(d, 'tokens'), sft=os.path.join(d, 'sft.jsonl'),
                pref=os.path.join(d, 'pref.jsonl'), prompts=os.path.join(d, 'prompts.jsonl'))


def entry_argv(name, config_file, paths, out_dir, max_iters, device):
    """[config file, --key=value ...] of one entry: its data, a fresh out_dir, max_iters, one
    eval batch (the scripts evaluate at the first and the last iteration), no memory check (the
    planner's prediction is a column of the table instead), keeping only the keys its script has."""
    want = dict(out_dir=out_dir, init_from=paths['init'], device=device, max_iters=max_iters,
                eval_interval=max_iters, eval_iters=1, log_interval=1, always_save_checkpoint=False,
                check_memory=False, wandb_log=False, norm_samples=8, sample_interval=0,
                precompute_ref_logps=name == 'dpo_cached')
    if name == 'pretrain':
        want.update(dataset=paths['tokens'])
    elif name == 'sft':
        want.update(sft_data=paths['sft'], sft_val_data=paths['sft'])
    elif name in ('reward', 'dpo', 'dpo_cached'):
        want.update(pref_data=paths['pref'], pref_val_data=paths['pref'], tokenizer='gpt2')
    elif name == 'ppo':
        want.update(prompt_data=paths['prompts'], reward_model=paths['reward_model'], reward_fn='', tokenizer='gpt2')
    keys = script_defaults(os.path.join(_ROOT, SCRIPT[name]))
    return [config_file] + [f'--{k}={v}' for k, v in want.items() if k in keys]


def run_script(script, argv, output):
    """Run one of the project's scripts here, as `python script argv...`, its stdout and stderr
    to the file `output`. Returns None, or the one-line reason it stopped: a benchmark table
    reports a failed entry (an out-of-memory under --cap_gb is the answer a user wants) rather
    than end at it, so this catches what the script raises."""
    saved = sys.argv
    sys.argv = [script, *argv]
    try:
        with open(output, 'w') as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            runpy.run_path(os.path.join(_ROOT, script), run_name='__main__')
        return None
    except SystemExit as e:
        return None if e.code in (0, None) else f"exit code {e.code}"
    except torch.cuda.OutOfMemoryError:
        return "CUDA out of memory"
    except Exception as e:  # noqa: BLE001 - a row of the table, not the end of the benchmark
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        sys.argv = saved


def logged_speed(out_dir, warmup):
    """Medians of time_ms and tokens_per_s over the iterations a run logged, the first `warmup`
    left out; None when fewer were logged."""
    try:
        _, series = read_log(out_dir)
    except UserError:  # no log.csv, or no row in it: the script stopped before its first iteration
        return None
    if 'time_ms' not in series:
        return None
    tokens_per_s = dict(zip(*series['tokens_per_s']))  # step -> value; common.step_metrics logs both in one row
    rows = sorted((step, ms, tokens_per_s[step]) for step, ms in zip(*series['time_ms']))
    rows = rows[warmup:]
    if not rows:
        return None
    return statistics.median(r[1] for r in rows), statistics.median(r[2] for r in rows), len(rows)


def flops_per_token(shape, seq_len, lm_head_share=1.0):
    """model.train_flops_per_token for a planner shape: the trained model's forward and backward
    only (DPO's reference forward is not counted; LoRA's frozen base has no weight gradients).
    lm_head_share: the share of tokens whose logits are computed (a reward model's forward runs no
    LM head: 0; with chosen_lm_coef > 0 its chosen rows do); the head's 6 V h a token (4 frozen) is
    left out for the rest."""
    counts, wpe = param_counts(shape), shape['block_size'] * shape['n_embd']
    n = counts['total'] - wpe  # as GPT.get_num_params()
    lora = counts['trainable'] < counts['total']
    n_frozen = counts['total'] - counts['trainable'] - (wpe if lora else 0)
    head = (4 if lora else 6) * shape['vocab_size'] * shape['n_embd']
    return train_flops_per_token(n, shape['n_layer'], shape['n_embd'], seq_len, n_frozen) - (1 - lm_head_share) * head


def lm_head_share(inputs):
    """The share of a memory plan's tokens whose logits the step computes (its logit_rows)."""
    rows = inputs['batch_size'] * inputs['seq_len']
    return 1.0 if inputs['logit_rows'] is None else inputs['logit_rows'] / rows


def hf_gpt2_tokenizer():
    """GPT-2's tokenizer as transformers has it, for TRL, from the BPE files tiktoken cached when
    common.GPT2Tokenizer loaded (it names each by the sha1 of its URL), so nothing is downloaded;
    None without them."""
    from transformers import GPT2TokenizerFast
    url = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
    cache = (os.environ.get('TIKTOKEN_CACHE_DIR') or os.environ.get('DATA_GYM_CACHE_DIR')
             or os.path.join(tempfile.gettempdir(), 'data-gym-cache'))  # tiktoken's own order
    vocab, merges = (os.path.join(cache, hashlib.sha1((url + f).encode()).hexdigest()) for f in ('encoder.json', 'vocab.bpe'))
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
        return None
    with open(merges) as f:
        merges = [tuple(line.split()) for line in f.read().split('\n')[1:] if line]
    with open(vocab) as f:
        vocab = json.load(f)
    eos = '<|endoftext|>'
    return GPT2TokenizerFast(vocab=vocab, merges=merges, eos_token=eos, bos_token=eos, unk_token=eos)


def time_trl_dpo(config, paths, out_dir, steps, warmup, cached, cuda):
    """Seconds per step of trl.DPOTrainer (median after warmup) on the same model, pairs, batch,
    optimizer settings and precision as dpo_train.py ran with `config`; with cached=True its own
    reference precompute (precompute_ref_log_probs), which runs before the first step."""
    import datasets
    import trl
    from transformers import TrainerCallback
    tokenizer = hf_gpt2_tokenizer()
    if tokenizer is None:
        raise RuntimeError("GPT-2's BPE files are not in TIKTOKEN_CACHE_DIR")
    ends = []

    class StepEnd(TrainerCallback):  # our time_ms is also the time between two iterations' ends
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    args = trl.DPOConfig(
        output_dir=out_dir, max_steps=steps + warmup + 1, per_device_train_batch_size=config['batch_size'],
        gradient_accumulation_steps=config['gradient_accumulation_steps'], learning_rate=config['learning_rate'],
        weight_decay=config['weight_decay'], adam_beta1=config['beta1'], adam_beta2=config['beta2'],
        max_grad_norm=config['grad_clip'], lr_scheduler_type='constant', beta=config['beta'],
        max_length=config['block_size'], precompute_ref_log_probs=cached,
        bf16=cuda and config['dtype'] in ('auto', 'bfloat16'), fp16=cuda and config['dtype'] == 'float16',
        use_cpu=not cuda, report_to='none', save_strategy='no', eval_strategy='no', logging_steps=10 ** 6,
        disable_tqdm=True, dataloader_num_workers=0, seed=config['seed'])
    with open(paths['pref']) as f:  # in memory: load_dataset('json') would write a cache under ~/.cache
        data = datasets.Dataset.from_list([json.loads(line) for line in f])
    trainer = trl.DPOTrainer(model=GPT2LMHeadModel.from_pretrained(paths['init']), args=args,
                             train_dataset=data, processing_class=tokenizer, callbacks=[StepEnd()])
    trainer.train()
    return statistics.median(b - a for a, b in zip(ends[warmup:], ends[warmup + 1:]))


def run_scripts(argv):
    """bench.py --scripts [--size=tiny|gpt2-large] [--only=...] [--iters=N] [--repeats=N] [--cap_gb=24]"""
    opts = dict(
        size='auto',            # 'tiny' (a 4-layer random GPT-2, CPU default) | 'gpt2-large' (the *_gpt2large.py configs, CUDA default)
        only=','.join(SCRIPT) + ',trl',  # entries to run; 'trl' = trl.DPOTrainer too when trl is installed
        iters=0,                # timed iterations per entry (0: 6 tiny, 4 gpt2-large)
        warmup=2,               # first iterations, not timed: they hold an eval, allocator warmup, compiling
        repeats=1,              # runs of every entry, in alternating order (ABBA); the medians are reported
        cap_gb=0.0,             # CUDA: torch.cuda.set_per_process_memory_fraction, a bigger GPU as a cap_gb one
        device='auto',
        threads=0,              # CPU threads (0 = PyTorch's default)
        peak_flops=312e12,      # for MFU (CUDA): A100 bf16 312e12, H100 SXM bf16 989e12
    )
    configure(opts, [a for a in argv if a != '--scripts'])
    require_at_least(opts, threads=0, iters=0, warmup=0, repeats=1, cap_gb=0)  # 0: a default, see above
    transformers.utils.logging.disable_progress_bar()
    device, device_type, _, _ = setup_device(opts['device'], 'auto')
    cuda = device_type == 'cuda'
    size = opts['size'] if opts['size'] != 'auto' else ('gpt2-large' if cuda else 'tiny')
    if size not in ('tiny', 'gpt2-large'):
        raise UserError(f"size must be 'tiny' or 'gpt2-large', got {size!r}")
    only = [e.strip() for e in opts['only'].split(',') if e.strip()]
    unknown = [e for e in only if e not in tuple(SCRIPT) + ('trl',)]
    if unknown:
        raise UserError(f"--only: unknown entries {', '.join(unknown)}; choose among {', '.join(SCRIPT)}, trl")
    iters, warmup = opts['iters'] or (6 if size == 'tiny' else 4), opts['warmup']
    if opts['threads']:
        torch.set_num_threads(opts['threads'])
    cap = opts['cap_gb'] * _GiB
    if cap and not cuda:
        print(f"note: --cap_gb applies on CUDA only; ignored on {device}")
        cap = 0
    if cap:
        total = torch.cuda.get_device_properties(device).total_memory
        if cap > total:
            raise UserError(f"--cap_gb={opts['cap_gb']:g} is more than this GPU's {total / _GiB:.1f} GiB")
        torch.cuda.set_per_process_memory_fraction(cap / total, device)
    jobs = [e for e in SCRIPT if e in only]
    if only == ['trl']:
        raise UserError("--only=trl times TRL's DPOTrainer next to dpo_train.py: add dpo and/or dpo_cached "
                        "(--only=dpo,dpo_cached,trl)")
    if 'trl' in only and ('dpo' in jobs or 'dpo_cached' in jobs):
        if importlib.util.find_spec('trl') is None:
            print("trl not installed: skipped (pip install trl to compare with trl.DPOTrainer)")
        else:
            jobs += [f'trl_{e}' for e in ('dpo', 'dpo_cached') if e in jobs]
    print(f"bench.py --scripts: size {size}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if cuda else f", {torch.get_num_threads()} threads")
          + (f", memory capped at {opts['cap_gb']:g} GiB" if cap else "")
          + f"; {warmup} warmup + {iters} timed iterations per entry, {opts['repeats']} run(s) each; "
          f"load average {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        block = TINY_SHAPE['block_size'] if size == 'tiny' else 1024
        shape = TINY_SHAPE if size == 'tiny' else dict(n_layer=36, n_head=20, n_embd=1280)
        max_new = TINY_CONFIG['ppo']['max_new_tokens'] if size == 'tiny' else 128
        paths = synthetic_inputs(tmp, shape, block, max_new, n_records=64 if size == 'tiny' else 128)
        results = {}
        for name in jobs:  # each entry's command line and the planner's prediction for exactly that run
            r = results[name] = dict(config=None, plan=None, runs=[], peak=None, error=None, tail=None)
            if name.startswith('trl_'):
                continue
            if size == 'tiny':
                config_file = os.path.join(tmp, f'{name}_tiny.py')
                keys = script_defaults(os.path.join(_ROOT, SCRIPT[name]))
                with open(config_file, 'w') as f:
                    f.write(''.join(f'{k} = {v!r}\n' for k, v in {**TINY_CONFIG[name], 'block_size': block,
                                                                     'compile': False}.items() if k in keys))
            else:
                config_file = os.path.join(_ROOT, LARGE_CONFIG[name])
            r['argv'] = entry_argv(name, config_file, paths, os.path.join(tmp, f'out-{name}'), warmup + iters, device)
            try:
                _, r['config'], r['plan'] = plan_config(r['argv'][0], r['argv'][1:], SCRIPT[name])
            except UserError as e:
                print(f"{name}: no memory plan ({e})")

        for rep in range(opts['repeats']):
            for name in (jobs if rep % 2 == 0 else jobs[::-1]):
                r = results[name]
                if r['error']:
                    continue
                output = os.path.join(tmp, f'{name}-{rep}.txt')
                if cuda:
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    torch._dynamo.reset()  # the last entry's compiled code: not against this one's recompile limit
                if name.startswith('trl_'):
                    ours = results[name[4:]]['config']
                    try:
                        with open(output, 'w') as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                            dt = time_trl_dpo(ours, paths, os.path.join(tmp, f'out-{name}-{rep}'), iters, warmup,
                                              name == 'trl_dpo_cached', cuda)
                        r['runs'].append((dt * 1000, None))
                    except Exception as e:  # noqa: BLE001 - TRL's own failure is a row, not the end
                        r['error'] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                else:
                    argv = [a if not a.startswith('--out_dir=') else f"{a}-{rep}" for a in r['argv']]
                    r['error'] = run_script(SCRIPT[name], argv, output)
                    gc.collect()  # the finished script's models go now, before the next entry
                    speed = logged_speed(os.path.join(tmp, f'out-{name}-{rep}'), warmup)
                    if r['error'] is None and speed is None:
                        r['error'] = "no timed iteration in log.csv"
                    if speed and not r['error']:
                        r['runs'].append(speed[:2])
                if cuda:
                    r['peak'] = max(r['peak'] or 0.0, torch.cuda.max_memory_allocated(device) / _GiB)
                if r['error']:
                    with open(output) as f:
                        r['tail'] = f.read().splitlines()[-5:]
    for name, r in results.items():  # medians over the runs; TRL did the same pairs, so our tokens a step
        r['speed'] = None
        if r['runs'] and not r['error']:
            step = statistics.median(s for s, _ in r['runs'])
            if name.startswith('trl_'):
                ours = results[name[4:]].get('speed')
                r['speed'] = (step, ours[1] * ours[0] / step if ours else float('nan'))
            else:
                r['speed'] = (step, statistics.median(t for _, t in r['runs']))
    print_scripts_table(results, cuda, opts['peak_flops'], cap)
    for name, r in results.items():
        if r['error'] and r['tail'] is not None:
            print(f"\n{name}: {r['error']}; the last lines of its output:\n  " + "\n  ".join(r['tail']))


def print_scripts_table(results, cuda, peak_flops, cap):
    print(f"\n{'entry':<15} {'script':<16} {'step ms':>9} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} "
          f"{'predicted':>9} {'meas/pred':>9}  status")
    for name, r in results.items():
        script = SCRIPT.get(name, 'trl.DPOTrainer')
        step, tok = (f"{r['speed'][0]:.1f}", f"{r['speed'][1]:.0f}") if r['speed'] else ('-', '-')
        mfu = '-'
        if cuda and r['speed'] and r['plan'] and name != 'ppo':
            i = r['plan']['inputs']
            mfu = f"{r['speed'][1] * flops_per_token(i['cfg'], i['seq_len'], lm_head_share(i)) / peak_flops:.1%}"
        peak = f"{r['peak']:.2f}" if r['peak'] is not None else '-'
        pred = f"{r['plan']['total'] / _GiB:.2f}" if r['plan'] else '-'
        ratio = f"{r['peak'] * _GiB / r['plan']['total']:.2f}" if r['peak'] is not None and r['plan'] else '-'
        status = r['error'] or 'ok'
        if cap and r['plan']:
            status += f"; predicted {'fits' if r['plan']['total'] <= cap else 'over'} the cap"
        print(f"{name:<15} {script:<16} {step:>9} {tok:>10} {mfu:>6} {peak:>9} {pred:>9} {ratio:>9}  {status}")
    speed = {k: r['speed'][0] for k, r in results.items() if r['speed']}
    runs = {k: [step for step, _ in r['runs']] for k, r in results.items()}
    for a, b, label, goal in (('dpo', 'dpo_cached', 'DPO cached/online reference', None),
                              ('trl_dpo', 'dpo', 'DPO ours/TRL, online reference', 1.5),
                              ('trl_dpo_cached', 'dpo_cached', 'DPO ours/TRL, both cached', None),
                              ('trl_dpo', 'dpo_cached', 'DPO ours cached/TRL online', 2.0)):
        if a in speed and b in speed:
            ratio = speed[a] / speed[b]
            per_run = sorted(x / y for x, y in zip(runs[a], runs[b]))  # run i of both: the same load, roughly
            spread = f" ({per_run[0]:.2f}-{per_run[-1]:.2f} over runs)" if len(per_run) > 1 else ""
            verdict = f"  goal >= {goal:.1f}x: {'PASS' if ratio >= goal else 'below goal'}" if goal else ""
            print(f"{label + ' (step time ratio)':<52} {ratio:5.2f}x{spread}{verdict}")


if len(sys.argv) > 1 and '--scripts' in sys.argv[1:]:
    run_scripts(sys.argv[1:])
    sys.exit(0)

# -----------------------------------------------------------------------------
device = 'auto'        # auto, cpu, cuda, mps
dtype = 'auto'         # auto, float32, bfloat16, float16 (autocast, CUDA only)
compile = False        # torch.compile both models for the training step
threads = 0            # CPU threads (0 = PyTorch's default); 1 is steadier on a busy machine
n_layer = 4            # model shape (gpt2-small is 12/12/768/1024)
n_head = 4
n_embd = 256
block_size = 256       # also the training sequence length
vocab_size = 50257
batch_size = 4         # training batch (sequences of block_size tokens)
iters = 1              # training steps per timing
gen_batch = 8          # sampling: prompts per batch
gen_prompt_len = 64    # longest prompt; the others are shorter, left-padded
gen_tokens = 128       # new tokens per row
temperature = 0.0      # 0 = greedy; > 0 samples with top_k in both
top_k = 50
warmup = 1             # untimed runs of each model first
repeats = 5            # timings per model; the median is reported
max_time = 45.0        # seconds per comparison: stop repeating past it (a busy machine)
peak_flops = 312e12    # for MFU (CUDA): A100 bf16
seed = 1337
train_goal = 1.15      # ours/HF speed ratios we aim for
sample_goal = 1.2
# -----------------------------------------------------------------------------
configure(globals())
require_at_least(globals(), threads=0, iters=1, warmup=0, repeats=1)
if gen_prompt_len + gen_tokens > block_size:  # HF's generate would index past its positions; ours drops its cache
    raise UserError(f"gen_prompt_len + gen_tokens = {gen_prompt_len + gen_tokens} must fit block_size={block_size}")
device, device_type, dtype, ctx = setup_device(device, dtype)
cuda = device_type == 'cuda'
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)

# the same random weights in both: HF's init, saved and loaded into ours
hf = GPT2LMHeadModel(GPT2Config(
    n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=block_size, vocab_size=vocab_size,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation='sdpa',
    bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1))
with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp)
    ours = GPT.from_pretrained(tmp)
assert hf.config._attn_implementation == 'sdpa', hf.config._attn_implementation
models = {'ours': ours.to(device), 'HF': hf.to(device)}


def sync():
    if cuda:
        torch.cuda.synchronize()
    elif device_type == 'mps':
        torch.mps.synchronize()


# training: forward + loss + backward + AdamW (the same optimizer for both)
x = torch.randint(vocab_size, (batch_size, block_size), device=device)
y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], IGNORE_INDEX)], dim=1)  # what HF's labels=x means
# GPT.param_groups reads only .parameters(), so HF's model gets the same groups (decay on >= 2-D)
optims = {k: make_optimizer(GPT.param_groups(m, 0.1), 'adamw', 6e-4, (0.9, 0.95), device_type) for k, m in models.items()}
fwd = {k: torch.compile(m) if compile else m for k, m in models.items()}
losses, samples = {}, {}


def train(name):
    def run():
        models[name].train()
        for _ in range(iters):
            with ctx:
                loss = fwd[name](x, y)[1] if name == 'ours' else fwd[name](input_ids=x, labels=x).loss
            loss.backward()
            optims[name].step()
            optims[name].zero_grad(set_to_none=True)
        losses[name] = loss.item()
    return run


# sampling: left-padded prompts of different lengths, exactly gen_tokens new tokens for each
pad = vocab_size - 1
lengths = torch.linspace(gen_prompt_len // 4, gen_prompt_len, gen_batch).long()
attn = (torch.arange(gen_prompt_len)[None, :] >= gen_prompt_len - lengths[:, None]).long().to(device)
prompts = torch.randint(pad, (gen_batch, gen_prompt_len), device=device).masked_fill(attn == 0, pad)
hf.generation_config.eos_token_id, hf.generation_config.pad_token_id = None, pad  # never stop early
hf_sampling = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0) if temperature > 0 else dict(do_sample=False)


def sample(name):
    def run():
        models[name].eval()
        with ctx:
            if name == 'ours':
                out = ours.generate(prompts, gen_tokens, temperature=temperature, top_k=top_k,
                                    attention_mask=attn, eos_token_id=None)
            else:
                out = hf.generate(input_ids=prompts, attention_mask=attn, max_new_tokens=gen_tokens,
                                  min_new_tokens=gen_tokens, **hf_sampling)
        assert out.shape == (gen_batch, gen_prompt_len + gen_tokens), out.shape
        samples[name] = out[:, gen_prompt_len:]
    return run


def compare(make):
    """Warm up, then time both models alternately (ABBA). Returns the median seconds and the peak
    extra CUDA MB of each, and the sorted per-repeat speed ratios ours/HF."""
    fns = {k: make(k) for k in models}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times, peaks, start = {k: [] for k in fns}, {k: 0.0 for k in fns}, time.perf_counter()
    for r in range(repeats):
        if r > 0 and time.perf_counter() - start > max_time:
            print(f"note: stopped after {r} of {repeats} repeats (max_time={max_time:g}s)")
            break
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            sync()
            t0 = time.perf_counter()
            fns[k]()
            sync()
            times[k].append(time.perf_counter() - t0)
            if cuda:
                peaks[k] = max(peaks[k], (torch.cuda.max_memory_allocated() - base) / 2**20)
    ratios = sorted(h / o for o, h in zip(times['ours'], times['HF']))
    return {k: statistics.median(v) for k, v in times.items()}, peaks, ratios


def row(label, a, b, fmt, goal=None, ratios=None):
    ratio = a / b if b else float('nan')
    spread = f"({ratios[0]:.2f}-{ratios[-1]:.2f})" if ratios else ""
    verdict = f">= {goal:.2f}x  {'PASS' if ratio >= goal else 'below goal'}" if goal else ""
    print(f"{label:<16} {fmt.format(a):>10} {fmt.format(b):>10} {ratio:>7.2f}x {spread:>11}   {verdict}")


cpuinfo = open('/proc/cpuinfo').read() if os.path.isfile('/proc/cpuinfo') else ''
cpu = next((l.split(':', 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith('model name')), platform.machine())
print(f"device {device} ({torch.cuda.get_device_name() if cuda else cpu}), dtype {dtype}, compile {compile}, "
      f"threads {torch.get_num_threads()}, torch {torch.__version__}, transformers {transformers.__version__}")
print(f"model: {n_layer} layers, {n_head} heads, n_embd {n_embd}, vocab {vocab_size}, "
      f"{ours.get_num_params() / 1e6:.1f}M params; HF attention: {hf.config._attn_implementation}")
print(f"train: batch {batch_size} x {block_size} tokens, {iters} step(s) per timing; sample: batch {gen_batch}, "
      f"prompts {lengths.min().item()}-{gen_prompt_len} tokens, {gen_tokens} new, "
      f"{'greedy' if temperature == 0 else f'temperature {temperature}, top_k {top_k}'}")
load = os.getloadavg()[0]
print(f"load average at start: {load:.2f} on {os.cpu_count()} cores" + (
    "; the machine is busy: timings are noisy" + (", try --threads=1" if not cuda and threads != 1 else "")
    if load > 0.5 else ""))
t_train, m_train, r_train = compare(train)
print(f"train loss after the last step: ours {losses['ours']:.4f}, HF {losses['HF']:.4f}")
t_sample, m_sample, r_sample = compare(sample)
if temperature == 0:
    print(f"greedy tokens identical: {(samples['ours'] == samples['HF']).float().mean().item():.1%}")
tok_train, tok_sample = batch_size * block_size * iters, gen_batch * gen_tokens
print(f"\n{'':<16} {'ours':>10} {'HF':>10} {'ours/HF':>8} {'(min-max)':>11}   goal")
row('train tokens/s', tok_train / t_train['ours'], tok_train / t_train['HF'], '{:.0f}', train_goal, r_train)
row('sample tokens/s', tok_sample / t_sample['ours'], tok_sample / t_sample['HF'], '{:.0f}', sample_goal, r_sample)
if cuda:
    row('train peak MB', m_train['ours'], m_train['HF'], '{:.0f}')
    row('sample peak MB', m_sample['ours'], m_sample['HF'], '{:.0f}')
    mfu = ours.estimate_mfu(batch_size * iters, t_train['ours'], flops_promised=peak_flops)
    print(f"{'train MFU (ours)':<16} {mfu:>10.1%}   of {peak_flops:.3g} flop/s")
