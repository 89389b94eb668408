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

--plan runs nothing and downloads nothing: it prints common.py's memory planner table for the
script that config is for (flags after it override that script's config, e.g.
--gradient_checkpointing=True), and exits 1 with the flags that would fit when the prediction is
over --plan_gb (default 24, an RTX 4090D).

Each number is the median over `repeats` timings, the two models alternating (ABBA) after a
warmup; ours/HF > 1 means ours is faster, (min-max) is the range of the per-repeat ratios.
- train tokens/s: batch_size * block_size tokens per forward + loss + backward + AdamW step
  (the same AdamW, from GPT.configure_optimizers, for both);
- sample tokens/s: new tokens per second of generate() with a KV cache: gen_batch left-padded
  prompts of different lengths, exactly gen_tokens new tokens per row (no EOS stop);
- CUDA only: peak MB = torch.cuda.max_memory_allocated during a timing minus what was already
  allocated (weights, optimizer states), i.e. activations, grads, caches and temporaries; and
  the MFU of our training step against peak_flops (A100 bf16 312e12, H100 SXM bf16 989e12).
The goals are printed with PASS/below goal; they never change the exit code.
"""

import os
import platform
import statistics
import sys
import tempfile
import time


def print_plan(argv):
    """bench.py --plan config/X.py [--plan_gb=24] [--key=value ...]: the memory plan, nothing run."""
    from common import GiB, check_fits, format_plan, plan_config, print_config
    path = argv[1] if argv[0] == '--plan' and len(argv) > 1 else argv[0].split('=', 1)[1]
    rest = argv[2:] if argv[0] == '--plan' else argv[1:]
    gb = [float(a.split('=', 1)[1]) for a in rest if a.startswith('--plan_gb=')]
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

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from model import GPT, IGNORE_INDEX

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
from common import configure, setup_device  # noqa: E402
configure(globals())
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
optims = {k: GPT.configure_optimizers(m, 0.1, 6e-4, (0.9, 0.95), device_type) for k, m in models.items()}
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
