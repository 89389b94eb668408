"""
Pretrain or finetune GPT-2 on a file of tokens (karpathy/nanoGPT's train.py, kept compatible:
same config names and meanings, so nanoGPT configs and command lines keep working).

    python train.py config/train_shakespeare_char.py                  # baby GPT, one GPU
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False \
        --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 \
        --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0  # laptop
    python train.py config/finetune_shakespeare.py                    # gpt2-large, 24 GB card
    torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2.py  # DDP

Data: data/<dataset>/train.bin and val.bin, uint16 token ids written by data/<dataset>/prepare.py
(and meta.pkl for a char-level vocabulary). Writes to out_dir: ckpt.pt (the last saved state,
what init_from='resume' reads), best.pt (lowest val loss), log.csv (every metric).

Departures from nanoGPT:
1. Exact resume: the checkpoint holds the optimizer, GradScaler, iteration, best val loss and
   every RNG state (as they were before the batch of the checkpoint's iteration was drawn), so a
   resumed run continues the identical loss curve. The random numbers are nanoGPT's: one global
   stream seeded `seed` draws the weight init, the training batches (the next one prefetched
   during the last micro-step), dropout and the random eval batches, in nanoGPT's order, so a run
   prints nanoGPT's eval losses for the same seed and config, and its per-iteration losses with
   gradient_accumulation_steps=1 (with more, nanoGPT prints the last micro-batch's, this the mean).
2. A NaN/inf loss stops the run before the optimizer step, with a message; no checkpoint is
   written with NaN weights, and checkpoint writes are atomic.
3. ckpt.pt is always the last eval's state and best.pt the best one among this run's evals (the
   start's eval, of a model the run did not train, is not a candidate: best.pt is never an earlier
   run's); with always_save_checkpoint=False (nanoGPT's finetuning choice) only improvements on
   the start are saved, to ckpt.pt, and no best.pt is written.
4. device='auto' and dtype='auto' pick cuda/mps/cpu and bf16/fp16/fp32; compile applies on CUDA only.
5. SFT mode (sft_data) has no nanoGPT counterpart: epochs over the examples from their own
   seeded loader, and the same val batches at every eval.
"""

import math
import os
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from common import (EpochBatches, GPT2Tokenizer, Logger, UserError, accumulation_weights, check_resumable,
                    checkpoint_model_args, configure, ddp_device, ddp_gather, ddp_mean, ddp_wrap, finish_ddp, get_lr,
                    get_rng_state, grad_scaler, lora_overrides, lora_summary, make_optimizer, make_out_dir,
                    nonfinite_loss_error, plan_memory, print0, print_config, read_records, require_positive,
                    run_adapters, save_checkpoint, saved_rank_state, set_rng_state, setup_ddp, setup_device, sft_batch,
                    sft_pair, split_accumulation, step_metrics, tokenize_pair, unwrap)
from model import GPT, GPTConfig, IGNORE_INDEX

# -----------------------------------------------------------------------------
# default config: GPT-2 (124M) on OpenWebText, as nanoGPT
# I/O
out_dir = 'out'                 # checkpoints and log.csv go here
eval_interval = 2000            # evaluate (and save) every this many iterations
log_interval = 1                # print/log the training loss every this many iterations
eval_iters = 200                # batches per split for each loss estimate
eval_only = False               # evaluate once at the start and exit
always_save_checkpoint = True   # save ckpt.pt at every eval (False: only when val loss improves)
init_from = 'scratch'           # 'scratch' | 'resume' (out_dir/ckpt.pt) | 'gpt2*' | HF or checkpoint dir
seed = 1337                     # base seed (DDP rank r draws its pretraining batches with seed + r)
# wandb logging (optional; WANDB_MODE=offline works without a network)
wandb_log = False
wandb_project = 'owt'
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'         # reads data/<dataset>/train.bin, val.bin
gradient_accumulation_steps = 5 * 8  # micro-steps per optimizer step, across all DDP ranks
batch_size = 12                 # micro-batch size (sequences)
block_size = 1024               # sequence length
# SFT (supervised finetuning): set sft_data to train on prompt/response records instead of token files
sft_data = ''                   # .json/.jsonl/.jsonl.gz file or Hugging Face dataset name ('' = token files)
sft_split = 'train'             # split of a hub dataset given as sft_data
sft_val_data = ''               # validation records ('' = hold out val_fraction of sft_data)
sft_val_split = 'test'          # split of a hub dataset given as sft_val_data
val_fraction = 0.05             # share of sft_data held out for validation when sft_val_data is ''
truncation = 'left'             # longer than block_size: 'left' cuts the prompt's start, 'drop' skips it
tokens_per_batch = 0            # > 0: micro-batches filled up to this many tokens (length-sorted), not batch_size
# model (ignored for init_from other than 'scratch', except dropout and a smaller block_size)
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0                   # 0 for pretraining, 0.1+ for finetuning on small data
bias = False                    # biases in Linears/LayerNorms (GPT-2 has them; False trains a bit faster)
# LoRA (Hu et al. 2021): low-rank adapters; only they train, the base weights stay frozen
lora_rank = 0                   # 0 = off; 8-64 typical
lora_alpha = 16.0               # adapter scale = lora_alpha / lora_rank
lora_dropout = 0.0              # dropout on the adapter's input
lora_targets = 'attn'           # 'attn' (c_attn, attn.c_proj), 'mlp' (c_fc, mlp.c_proj) or 'attn,mlp'
# AdamW
learning_rate = 6e-4            # peak learning rate
max_iters = 600000              # total optimizer steps
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                 # clip gradient norm at this value; 0.0 disables
# learning rate schedule: linear warmup then cosine decay to min_lr
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 600000         # ~= max_iters per Chinchilla
min_lr = 6e-5                   # ~= learning_rate / 10 per Chinchilla
# system
backend = 'nccl'                # DDP backend: 'nccl' on GPUs, 'gloo' on CPU
device = 'auto'                 # 'auto' | 'cpu' | 'cuda' | 'cuda:1' | 'mps'
dtype = 'auto'                  # 'auto' | 'float32' | 'bfloat16' | 'float16' (autocast on CUDA)
compile = True                  # torch.compile the model (CUDA only)
gradient_checkpointing = False  # recompute each block in backward: far less activation memory, ~30% more compute
optimizer = 'adamw'             # 'adamw' | 'adamw8bit' (bitsandbytes, CUDA only: 2 bytes of state per parameter, not 8)
check_memory = True             # print the predicted peak GPU memory; on CUDA, refuse a config that does not fit
# -----------------------------------------------------------------------------
config = configure(globals())  # config/*.py files, then --key=value flags
require_positive(config, 'batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval',
                 'log_interval', 'eval_iters')
# -----------------------------------------------------------------------------

# DDP and devices
ddp, ddp_rank, ddp_local_rank, ddp_world_size = setup_ddp(backend)
master_process = ddp_rank == 0  # only rank 0 evaluates, logs and writes checkpoints
if ddp:
    device = ddp_device(device, ddp_local_rank)  # CPU processes (gloo), or one GPU each
    gradient_accumulation_steps = split_accumulation(gradient_accumulation_steps, ddp_world_size)
device, device_type, dtype, ctx = setup_device(device, dtype)
plan_memory(__file__, config, device, check_memory)  # before any model is loaded
if init_from == 'resume':  # a resumed run keeps the checkpoint's block_size: its data is read at it too
    block_size = checkpoint_model_args(os.path.join(out_dir, 'ckpt.pt'))['block_size']
if master_process:
    print_config(config)
    make_out_dir(out_dir, resume=init_from == 'resume')  # one line, not a traceback, when out_dir is a file
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
if sft_data and tokens_per_batch > 0:  # token-budget micro-batches: at most tokens_per_batch tokens each
    tokens_per_iter = gradient_accumulation_steps * ddp_world_size * tokens_per_batch
print(f"tokens per iteration: {'at most ' if sft_data else ''}{tokens_per_iter:,}") if master_process else None
torch.backends.cuda.matmul.allow_tf32 = True  # tf32 matmuls and convolutions on Ampere+
torch.backends.cudnn.allow_tf32 = True

# -----------------------------------------------------------------------------
# data: uint16 token memmaps (pretraining), or prompt/response records (SFT)
data_dir = os.path.join('data', dataset)
for split in ('train', 'val') if not sft_data else ():
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: run python data/{dataset}/prepare.py first")
    if os.path.getsize(path) % 2:
        raise UserError(f"{path} has {os.path.getsize(path)} bytes, not a whole number of uint16 tokens "
                        f"(a cut-off write?): run python data/{dataset}/prepare.py again")
    if os.path.getsize(path) // 2 <= block_size:
        raise UserError(f"{path} has {os.path.getsize(path) // 2} tokens, not more than block_size={block_size}")
if truncation not in ('left', 'drop'):
    raise UserError(f"truncation must be 'left' or 'drop', got {truncation!r}")
if 0 < tokens_per_batch < block_size:
    raise UserError(f"tokens_per_batch={tokens_per_batch} must be at least block_size={block_size}")


def get_batch(split):
    # re-open the memmap every batch: a long-lived one leaks memory (nanoGPT's note)
    data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
    ix = torch.randint(len(data) - block_size, (batch_size,))  # the global RNG, as nanoGPT
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])      # (B, T)
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])  # (B, T)
    if device_type == 'cuda':  # pinned memory lets the copy run asynchronously
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)




def load_sft_examples(source, split, tokenizer):
    """Tokenized SFT examples [(ids, n_prompt), ...] (prompt + response + EOS, see common.tokenize_pair),
    with the counts of truncated and dropped ones."""
    examples, n_truncated, n_dropped = [], 0, 0
    for i, record in enumerate(read_records(source, split)):
        prompt, response = sft_pair(record, f"{source}: record {i}")
        prompt_ids = tokenizer.encode(prompt)
        ex = tokenize_pair(prompt_ids, tokenizer.encode(response), tokenizer.eot_token, block_size, truncation)
        if ex is None:
            n_dropped += 1
        else:
            n_truncated += ex[1] < len(prompt_ids)
            examples.append(ex)
    if not examples:
        raise UserError(f"{source}: no example fits block_size={block_size} (all {n_dropped} dropped)")
    return examples, n_truncated, n_dropped


sft_examples = {}
if sft_data:
    tokenizer = GPT2Tokenizer()  # EOS (<|endoftext|>, 50256) ends every response and is trained on
    sft_examples['train'], n_trunc, n_drop = load_sft_examples(sft_data, sft_split, tokenizer)
    if sft_val_data:
        sft_examples['val'], vt, vd = load_sft_examples(sft_val_data, sft_val_split, tokenizer)
        n_trunc, n_drop = n_trunc + vt, n_drop + vd
    else:  # hold out a fixed, seeded share of the examples
        perm = torch.randperm(len(sft_examples['train']), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = max(1, int(len(perm) * val_fraction))
        if n_val >= len(perm):
            raise UserError(f"{sft_data}: {len(perm)} examples are too few to hold out val_fraction={val_fraction}")
        sft_examples = {'val': [sft_examples['train'][i] for i in perm[:n_val]],
                        'train': [sft_examples['train'][i] for i in perm[n_val:]]}
    if master_process:
        print(f"SFT examples: {len(sft_examples['train'])} train, {len(sft_examples['val'])} val; "
              f"{n_trunc} truncated from the prompt's left, {n_drop} dropped (longer than block_size={block_size})")



def sft_batches(split, seed, rank=0, world_size=1):
    """Epochs of right-padded SFT micro-batches (X, Y) over a split's examples (under DDP, this
    rank's share of each epoch)."""
    examples = sft_examples[split]
    return EpochBatches(examples, batch_size, seed, lambda batch: sft_batch(batch, tokenizer.eot_token, device),
                        lengths=[len(ids) - 1 for ids, _ in examples], tokens_per_batch=tokens_per_batch,
                        rank=rank, world_size=world_size)


meta_vocab_size = None
meta_path = os.path.join(data_dir, 'meta.pkl')
if not sft_data and os.path.isfile(meta_path):
    import pickle
    with open(meta_path, 'rb') as f:
        meta_vocab_size = pickle.load(f)['vocab_size']
    print(f"found vocab_size = {meta_vocab_size} (inside {meta_path})") if master_process else None

# -----------------------------------------------------------------------------
# model
torch.manual_seed(seed + ddp_rank)  # weight init (the same on every rank: DDP broadcasts rank 0's), batches, dropout
iter_num = 0
best_val_loss = 1e9  # nanoGPT's: the lowest val loss seen, the start's eval included
best_pt_loss = math.inf  # best.pt's: the lowest among this run's evals after its start
checkpoint = None
lora = lora_overrides(lora_rank, lora_alpha, lora_dropout, lora_targets)  # {} without LoRA
if init_from == 'scratch':
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                      vocab_size=meta_vocab_size or 50304, dropout=dropout, **lora)  # 50304: 50257 padded to /64
    model = GPT(GPTConfig(**model_args))
elif init_from == 'resume':
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    model, checkpoint = GPT.from_checkpoint(ckpt_path, device='cpu', dropout=dropout)
    check_resumable(checkpoint, 'train.py', ckpt_path)
    for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias'):
        if config[k] != getattr(model.config, k) and master_process:
            print(f"note: {k}={getattr(model.config, k)} from the checkpoint (config says {config[k]})")
    block_size = model.config.block_size
    iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
    best_pt_loss = checkpoint.get('best_pt_loss', best_val_loss)  # (not in older checkpoints)
else:  # gpt2* name, Hugging Face directory or a checkpoint of this project: finetune from it
    model = run_adapters(GPT.from_pretrained(init_from, dropout=dropout), lora, init_from, print0)
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)  # e.g. gpt2's 1024 down to a smaller context
    elif block_size > model.config.block_size:
        raise UserError(f"block_size={block_size} is larger than {init_from}'s {model.config.block_size}")
if model.config.lora_rank:
    print0(lora_summary(model))
if meta_vocab_size is not None and meta_vocab_size > model.config.vocab_size:
    raise UserError(f"{meta_path} has {meta_vocab_size} tokens but the model's vocab_size is {model.config.vocab_size}")
if not sft_data and meta_vocab_size is None and model.config.vocab_size < 50257:  # no meta.pkl: GPT-2 BPE ids
    raise UserError(f"{data_dir} holds GPT-2 BPE tokens (no meta.pkl) but the model's vocab_size is "
                    f"{model.config.vocab_size} (a char-level model?): train it on its own dataset")
if sft_data and tokenizer.n_vocab > model.config.vocab_size:  # SFT records are GPT-2 BPE tokens
    raise UserError(f"sft_data is GPT-2 tokens ({tokenizer.n_vocab}) but {init_from}'s vocab_size is "
                    f"{model.config.vocab_size} (a char-level model?): SFT needs a GPT-2-vocabulary model")
model.to(device)
start_iter = iter_num

scaler = grad_scaler(device_type, dtype, checkpoint and checkpoint.get('scaler'))  # a no-op unless float16
model.config.gradient_checkpointing = gradient_checkpointing
optimizer = make_optimizer(model.param_groups(weight_decay), optimizer, learning_rate, (beta1, beta2), device_type)
if sft_data:  # epochs over the examples; the DDP ranks split each epoch
    sft_loader = sft_batches('train', seed, ddp_rank, ddp_world_size)
    next_train_batch = sft_loader.next
else:
    next_train_batch = lambda: get_batch('train')
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint['optimizer'])
    # each DDP rank resumes its own RNGs and data position, so the ranks do not all continue with
    # rank 0's batches
    state = saved_rank_state(checkpoint, ddp_rank, ddp_world_size)
    if state is not None:
        if 'rng' in state:  # nanoGPT checkpoints have no RNG state: resume is then not exact
            set_rng_state(state['rng'])
        if 'train_gen' in state and not sft_data:  # an older train.py's (batches from their own generator)
            print0("note: the checkpoint is from an older train.py: the resumed run draws other batches")
        if sft_data and state.get('sft_loader'):
            sft_loader.load_state_dict(state['sft_loader'])
    checkpoint = None  # free memory

raw_model = model
if compile and device_type == 'cuda':
    print("compiling the model... (takes a ~minute)") if master_process else None
    model = torch.compile(model)
elif compile and master_process:
    print(f"note: compile applies on CUDA only; running eagerly on {device_type}")
if ddp:
    model = ddp_wrap(model, ddp_local_rank, device_type)  # gradients in DDP's buckets, no second copy


def eval_batches(split):
    """eval_iters random batches of a split, drawn from the global RNG as nanoGPT does (fresh ones at
    every eval); in SFT mode the same batches at every eval (a fixed seed), so val losses compare."""
    if sft_data:
        loader = sft_batches(split, seed + 1)
        return (loader.next() for _ in range(min(eval_iters, len(loader.batches))))
    return (get_batch(split) for _ in range(eval_iters))


@torch.no_grad()
def estimate_loss():
    """Mean loss over the eval batches of each split; in SFT mode the mean over all their response
    tokens (each batch weighed by its number of targets, as in training), not a mean of batch means."""
    out = {}
    model.eval()
    for split in ('train', 'val'):
        total, weight = 0.0, 0
        for X, Y in eval_batches(split):
            with ctx:
                _, loss = model(X, Y)
            n = (Y != IGNORE_INDEX).sum().item() if sft_data else 1
            total, weight = total + loss.item() * n, weight + n
        out[split] = total / weight
    model.train()
    return out


def rank_state():
    """What differs between DDP ranks and an exact resume needs: the RNGs (as they were before this
    iteration's first batch was drawn: a resume draws it again) and the SFT data position."""
    return {'rng': resume_rng, 'sft_loader': sft_loader.state_dict() if sft_data else None}


def checkpoint_state(rank_states=None):
    return {'model': unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(),
            'scaler': scaler.state_dict(), 'model_args': asdict(unwrap(model).config),
            'iter_num': iter_num, 'best_val_loss': best_val_loss, 'best_pt_loss': best_pt_loss, 'config': config,
            **rank_state(), 'rank_states': rank_states, 'script': 'train.py'}  # rank_states: every DDP rank's rank_state()


logger = Logger(os.path.join(out_dir, 'log.csv'), wandb_log, wandb_project, wandb_run_name, config,
                resume_step=iter_num if init_from == 'resume' else None,
                enabled=master_process and not eval_only)  # eval_only prints; the run's log.csv is left as it is

# -----------------------------------------------------------------------------
# training loop
pbar = tqdm(total=max_iters, initial=iter_num, disable=None if master_process else True, dynamic_ncols=True)
say = tqdm.write  # prints above the progress bar
resume_rng = get_rng_state()  # what a checkpoint saved at the next eval resumes from
if not sft_data:
    X, Y = next_train_batch()  # the very first batch, drawn before the first eval (nanoGPT's order)
t0 = time.time()
local_iter_num = 0
running_mfu = -1.0
while True:
    lr = get_lr(iter_num, learning_rate, warmup_iters, lr_decay_iters, min_lr, decay_lr)
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr

    # evaluate the loss on train/val and write checkpoints
    eval_now = iter_num % eval_interval == 0 or iter_num == max_iters or eval_only
    rank_states = None
    if ddp and eval_now and iter_num > start_iter:  # every rank's RNGs for the checkpoint (a collective: all ranks)
        rank_states = ddp_gather(rank_state())
    if eval_now and master_process:
        losses = estimate_loss()
        say(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        logger.log({'train/loss': losses['train'], 'val/loss': losses['val'], 'lr': lr}, iter_num)
        improved = losses['val'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val'])
        # best.pt is chosen among this run's evals after its start (the start's is of a model this run
        # did not train), so it is always this run's, never one left in out_dir by an earlier run
        best_pt = always_save_checkpoint and iter_num > start_iter and losses['val'] < best_pt_loss
        if best_pt:
            best_pt_loss = losses['val']
        if iter_num > start_iter and (improved or always_save_checkpoint):
            state = checkpoint_state(rank_states)
            say(f"saving checkpoint to {out_dir}")
            save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), state, raw_model)
            if best_pt:
                save_checkpoint(os.path.join(out_dir, 'best.pt'), state, raw_model)
    if eval_only or iter_num >= max_iters:  # eval_only: also after a resume at any iteration
        break

    # forward/backward with gradient accumulation; the loss is summed on the device
    loss_sum = torch.zeros((), device=device)
    next_batch = next_train_batch
    if sft_data:  # the iteration's micro-batches up front, each weighed by its share of the response targets: the
        # loss is the mean over every response token of the iteration (all ranks), not a mean of micro-batch means
        micro_batches = [next_train_batch() for _ in range(gradient_accumulation_steps)]
        n_targets = torch.stack([(y != IGNORE_INDEX).sum() for _, y in micro_batches]).float()  # (k,)
        weights = accumulation_weights(n_targets, ddp_world_size)  # n_i * world_size / N (all ranks' N)
        next_batch = iter(micro_batches).__next__
        X, Y = next_batch()
    n_tokens = 0  # tokens processed this iteration, padding included
    n_token_positions = 0  # sum over those tokens of their row's length: attention's flops grow with it
    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # all-reduce gradients on the last micro-step only
            model.require_backward_grad_sync = (micro_step == gradient_accumulation_steps - 1)
        n_tokens, n_token_positions = n_tokens + X.numel(), n_token_positions + X.numel() * X.shape[1]
        with ctx:
            logits, loss = model(X, Y)
            if sft_data:
                loss = loss * weights[micro_step]  # loss is the micro-batch's mean over its own targets
            else:  # pretraining: every micro-batch has batch_size * block_size targets
                loss = loss / gradient_accumulation_steps  # scale to the mean over micro-steps
        if micro_step < gradient_accumulation_steps - 1:
            X, Y = next_batch()  # prefetch while the GPU computes (SFT: already fetched above)
        else:  # the RNGs before the next iteration's first batch is drawn: a resume there draws it again
            resume_rng = get_rng_state()
            if not sft_data:
                X, Y = next_batch()  # prefetched across iterations, as nanoGPT (SFT: fetched at the top)
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if ddp:
        loss_sum = ddp_mean(loss_sum)
    lossf = loss_sum.item()  # one sync per iteration
    if not math.isfinite(lossf):  # stop before the step touches the weights
        pbar.close()
        raise nonfinite_loss_error(lossf, iter_num, out_dir)
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=not ddp)  # DDP: zeroed in place, in its buckets (common.ddp_wrap)

    # timing and logging
    t1 = time.time()
    dt, t0 = t1 - t0, t1
    if iter_num % log_interval == 0 and master_process:
        if local_iter_num >= 5:  # let the training loop settle a bit
            # the tokens this rank trained on, at their rows' mean length (SFT micro-batches are padded
            # to their longest example only, not to block_size)
            seq_len = n_token_positions / n_tokens
            mfu = raw_model.estimate_mfu(n_tokens / seq_len, dt, seq_len=seq_len)
            running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
        say(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%")
        logger.log({'train/loss_step': lossf, 'lr': lr, **({'mfu': running_mfu} if running_mfu >= 0 else {}),
                    **step_metrics(dt, n_tokens * ddp_world_size, device_type)}, iter_num)  # mfu: from the 6th on
        pbar.set_postfix(loss=f"{lossf:.4f}")
    iter_num += 1
    local_iter_num += 1
    pbar.update(1)

pbar.close()
logger.finish()
if ddp:  # the replicas must be bit-identical: check once, then leave the process group
    state, model = unwrap(model).state_dict(), None  # drop the DDP wrapper first (see finish_ddp)
    finish_ddp(state)
