"""
Direct preference optimisation (Rafailov et al. 2023, "Direct Preference Optimization: Your Language
Model is Secretly a Reward Model", arXiv:2305.18290): finetune a policy on preference pairs against a
frozen reference model, with no reward model and no sampling.

    python train.py config/sft_gpt2large.py          # first an SFT model: the policy's start and the reference
    python dpo_train.py config/dpo_gpt2large.py      # hh-rlhf, gpt2-large, 24 GB card
    python dpo_train.py config/dpo_tiny.py           # CPU, a few minutes (after config/sft_tiny.py)
    python dpo_train.py config/dpo_gpt2large.py --loss_type=ipo --beta=0.5   # IPO instead of DPO

Each pair (x, y_w chosen, y_l rejected) costs losses.dpo_loss of the summed response log-probs
log pi(y|x) of the policy and the reference: loss_type 'sigmoid' (DPO; label_smoothing > 0 is
conservative DPO), 'ipo' or 'hinge' (SLiC). Chosen and rejected go through the model in one forward
pass of 2 * batch_size rows. The reference is init_from's weights (or ref_from's): a frozen copy held
in ref_dtype; with LoRA, the policy itself with its adapters disabled (no copy). With
precompute_ref_logps=True its log-probs are computed once for every pair, cached in a .cache/
directory next to the data file (reused by later runs; the file name holds a hash of the tokenized
pairs, the reference's identity and the precision), and no reference model is held during training.

Writes to out_dir: ckpt.pt (the last saved state; init_from='resume' continues it exactly), best.pt
(the lowest val loss), log.csv with TRL's metric names: loss, rewards/chosen, rewards/rejected,
rewards/accuracies, rewards/margins, logps/chosen, logps/rejected every log_interval (means over the
iteration's pairs) and the same under val/ at every eval (the same val pairs each time).

Departures from the paper and its code (eric-mitchell/direct-preference-optimization):
1. AdamW (model.configure_optimizers), not RMSprop; warmup then constant LR as the paper's
   (min_lr = learning_rate) or cosine decay (min_lr < learning_rate).
2. A pair longer than block_size loses the start of its shared prompt (truncation='left') or is
   dropped ('drop'), where the paper's code truncates prompt and responses to fixed lengths. Pairs
   whose chosen and rejected responses are identical are skipped (their loss is log 2 whatever the
   weights, their gradient 0) and counted.
3. IPO uses the summed response log-probs, as the paper's code; TRL averages them per token for IPO.
4. DDP as train.py (torchrun --standalone --nproc_per_node=N dpo_train.py config/dpo_gpt2large.py),
   no FSDP: every rank holds the whole policy (and its reference); gradient_accumulation_steps is the
   total across ranks, the ranks split each epoch of pairs (so N ranks x accumulation k/N train on
   the micro-batches of 1 process x k), the logged metrics are means over every rank's pairs, and
   with precompute_ref_logps the ranks share the reference's forward passes. The last micro-batch of
   an epoch may hold fewer pairs.
"""

import contextlib
import copy
import hashlib
import math
import os
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from alarms import HealthMonitor, TrainingHealthError
from common import (EpochBatches, Logger, PTDTYPE, UserError, accumulation_weights, check_resumable,
                    check_source_unchanged, check_tokenizer_vocab, configure, ddp_broadcast, ddp_device, ddp_gather,
                    ddp_wrap, finish_ddp, get_lr, get_rng_state, get_tokenizer, grad_scaler, holdout_by_prompt,
                    load_preference_pairs, lora_overrides, lora_summary, make_optimizer, make_out_dir,
                    nonfinite_loss_error, plan_memory, preference_logps, print0, print_config, require_positive,
                    run_adapters, save_atomic, save_checkpoint, saved_rank_state, set_rng_state, setup_ddp,
                    setup_device, source_identity, split_accumulation, step_metrics, weights_fingerprint)
from losses import dpo_loss
from model import GPT

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out-dpo'
init_from = 'gpt2'              # the policy's start: 'resume' | 'gpt2*' | HF directory | this project's checkpoint (an SFT out_dir)
ref_from = ''                   # the reference: '' = init_from's weights (kept on resume); else gpt2* | HF dir | checkpoint
eval_interval = 100             # evaluate (and save) every this many iterations
eval_iters = 50                 # val micro-batches per eval (the same pairs each time; fewer if the split is smaller)
log_interval = 1
on_alarm = 'warn'               # training health (alarms.py): 'warn' prints an alarm once | 'stop' ends the run on it
always_save_checkpoint = True   # save ckpt.pt at every eval (best.pt always holds the lowest val loss)
seed = 1337
wandb_log = False
wandb_project = 'gpt2-rlhf'
wandb_run_name = 'dpo'
# data: {"prompt","chosen","rejected"} or hh-rlhf {"chosen","rejected"} records
tokenizer = 'gpt2'              # 'gpt2' (BPE, EOS <|endoftext|>) or a char-level data/<name>/meta.pkl (EOS '\n')
pref_data = 'data/hh_rlhf/pref_train.jsonl'  # .json/.jsonl/.jsonl.gz file or Hugging Face dataset name
pref_split = 'train'            # split of a hub dataset given as pref_data
pref_val_data = 'data/hh_rlhf/pref_val.jsonl'  # '' = hold out val_fraction of pref_data
pref_val_split = 'test'
val_fraction = 0.05
truncation = 'left'             # too long: 'left' cuts the prompt's start, 'drop' skips the pair
block_size = 1024               # longest prompt + response + EOS
batch_size = 1                  # pairs per micro-batch (2 * batch_size sequences in one forward pass)
gradient_accumulation_steps = 64  # micro-batches per step, across all DDP ranks; the paper's batch is 64 pairs
# DPO
beta = 0.1                      # strength of the pull towards the reference (paper: 0.1; 0.01-0.5; IPO likes larger)
loss_type = 'sigmoid'           # 'sigmoid' (DPO) | 'ipo' (IPO) | 'hinge' (SLiC)
label_smoothing = 0.0           # sigmoid only: assumed share of flipped labels (conservative DPO), 0-0.2
ref_dtype = 'float32'           # weights of the frozen reference copy: 'float32' | 'bfloat16' (half the memory)
precompute_ref_logps = False    # reference log-probs computed once and cached on disk; no reference during training
# model
dropout = 0.0                   # 0 keeps policy and reference log-probs comparable (the paper uses 0)
lora_rank = 0                   # LoRA on the policy (see train.py); the reference is then the adapters-off model
lora_alpha = 16.0
lora_dropout = 0.0
lora_targets = 'attn'
# AdamW and schedule: linear warmup, then cosine decay from learning_rate to min_lr
learning_rate = 1e-6            # the paper's
max_iters = 1000
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.999
grad_clip = 10.0                # the paper code's max_grad_norm (TRL: 1.0); 0.0 disables
decay_lr = True
warmup_iters = 150              # the paper's
lr_decay_iters = 1000
min_lr = 1e-6                   # = learning_rate: constant after warmup, as the paper
# system
backend = 'nccl'                # DDP backend: 'nccl' on GPUs, 'gloo' on CPU
device = 'auto'
dtype = 'auto'                  # autocast dtype of every forward pass (bf16 on recent GPUs)
compile = False                 # torch.compile the policy (CUDA only)
gradient_checkpointing = False  # recompute each block in backward: far less activation memory, ~30% more compute
optimizer = 'adamw'             # 'adamw' | 'adamw8bit' (bitsandbytes, CUDA only: 2 bytes of state per parameter, not 8)
check_memory = True             # print the predicted peak GPU memory; on CUDA, refuse a config that does not fit
# -----------------------------------------------------------------------------
config = configure(globals())
require_positive(config, 'batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval',
                 'log_interval', 'eval_iters')
# -----------------------------------------------------------------------------

# DDP (as train.py) and devices
ddp, ddp_rank, ddp_local_rank, ddp_world_size = setup_ddp(backend)
master_process = ddp_rank == 0  # only rank 0 evaluates, prints, logs and writes checkpoints and caches
if ddp:
    device = ddp_device(device, ddp_local_rank)  # CPU processes (gloo), or one GPU each
    gradient_accumulation_steps = split_accumulation(gradient_accumulation_steps, ddp_world_size)
device, device_type, dtype, ctx = setup_device(device, dtype)
plan_memory(__file__, config, device, check_memory)  # before any model is loaded
if master_process:
    print_config(config)
    make_out_dir(out_dir, resume=init_from == 'resume')  # one line, not a traceback, when out_dir is a file
if truncation not in ('left', 'drop'):
    raise UserError(f"truncation must be 'left' or 'drop', got {truncation!r}")
if ref_dtype not in ('float32', 'bfloat16'):
    raise UserError(f"ref_dtype must be 'float32' or 'bfloat16', got {ref_dtype!r}")
if beta <= 0:
    raise UserError(f"beta must be > 0, got {beta}")
try:  # one dry run names a bad loss_type or label_smoothing now, not after loading a model
    dpo_loss(*torch.zeros(4, 1), beta, loss_type, label_smoothing)
except ValueError as e:
    raise UserError(str(e)) from None
torch.manual_seed(seed + ddp_rank)  # dropout differs per rank; DDP broadcasts rank 0's initial weights

# -----------------------------------------------------------------------------
# data: tokenized pairs ((chosen_ids, n_prompt), (rejected_ids, n_prompt), margin) of each source file
tokenizer = get_tokenizer(tokenizer, strict=True)
pad_id = tokenizer.eot_token  # right padding: its id never matters
sources = {'train': (pref_data, pref_split)}
if pref_val_data:
    sources['val'] = (pref_val_data, pref_val_split)
source_pairs = {}
for name, (source, split) in sources.items():
    source_pairs[name], c = load_preference_pairs(source, split, tokenizer, block_size, truncation)
    print0(f"{source}: {len(source_pairs[name])} pairs; {c['identical']} with chosen == rejected skipped, "
           f"{c['truncated']} truncated from the prompt's left, {c['dropped']} dropped (a response longer "
           f"than block_size={block_size})")

# -----------------------------------------------------------------------------
# policy
lora = lora_overrides(lora_rank, lora_alpha, lora_dropout, lora_targets)  # {} without LoRA
iter_num, best_val_loss, checkpoint = 0, 1e9, None
if init_from == 'resume':
    model, checkpoint = GPT.from_checkpoint(os.path.join(out_dir, 'ckpt.pt'), dropout=dropout)
    check_resumable(checkpoint, 'dpo_train.py', os.path.join(out_dir, 'ckpt.pt'))
    iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
    ref_source, ref_is_base = ref_from or checkpoint['ref_source'], checkpoint['ref_is_base']
    if ref_is_base and ref_from:
        raise UserError(f"this run's reference is its policy with the LoRA adapters off; --ref_from={ref_from} "
                        f"cannot replace it on resume: start a new run")
    if not ref_is_base:  # the reference is loaded again from its path (ref_from: a new path, e.g. after a move):
        check_source_unchanged(ref_source, checkpoint.get('ref_fingerprint'), 'the reference')  # the same weights
else:
    model = run_adapters(GPT.from_pretrained(init_from, dropout=dropout), lora, init_from, print0)
    # the reference: init_from's weights; with LoRA those are the policy's own frozen base weights
    ref_source, ref_is_base = ref_from or init_from, bool(lora_rank) and not ref_from
ref_fingerprint = None if ref_is_base else weights_fingerprint(ref_source)  # checked when a resumed run reloads it
if block_size < model.config.block_size:
    model.crop_block_size(block_size)
elif block_size > model.config.block_size:
    raise UserError(f"block_size={block_size} is larger than the model's {model.config.block_size}")
check_tokenizer_vocab(tokenizer, model.config.vocab_size, init_from)
if model.value_head is not None:  # from a reward/PPO checkpoint: DPO never uses the head, and DDP would
    model.value_head.requires_grad_(False)  # wait for a gradient it never gets
if model.config.lora_rank:
    print0(lora_summary(model))
model.to(device)
raw_model = model

# -----------------------------------------------------------------------------
# reference: log-probs of each pair under the frozen reference model


def check_reference_vocab(vocab_size):
    if vocab_size != raw_model.config.vocab_size:
        raise UserError(f"reference {ref_source} has vocab_size {vocab_size} but the policy has "
                        f"{raw_model.config.vocab_size}: DPO's log-ratios need the same vocabulary")


def load_reference():
    """The frozen reference model, or None when it is the policy with its adapters disabled (LoRA)."""
    if ref_is_base:
        return None
    if init_from != 'resume' and ref_source == init_from:  # the policy's weights before any step
        ref = copy.deepcopy(raw_model)
    else:
        ref = GPT.from_pretrained(ref_source).merge_lora()  # a LoRA checkpoint's adapters folded in, as in the policy
        check_reference_vocab(ref.config.vocab_size)  # it started from (a resume's reference: the same weights)
        if ref.config.block_size < block_size:
            raise UserError(f"reference {ref_source} has block_size {ref.config.block_size} < block_size={block_size}")
    ref.requires_grad_(False)
    print0(f"reference: {ref_source}, a frozen copy in {ref_dtype}")
    return ref.eval().to(device=device, dtype=PTDTYPE[ref_dtype])


@torch.no_grad()
def reference_logps(reference, batch):
    """(chosen_logps (B,), rejected_logps (B,)) of the pairs in batch under the reference."""
    with ctx:
        if reference is not None:
            return preference_logps(reference, batch, pad_id, device)
        training = raw_model.training
        raw_model.eval()  # no dropout in the reference
        with raw_model.disable_adapters():
            logps = preference_logps(raw_model, batch, pad_id, device)
        raw_model.train(training)
        return logps


def ref_cache_path(source, pairs):
    """Where the reference log-probs of `pairs` of `source` are cached: .cache/ next to a data file
    (else in out_dir), named by a hash of the tokenized pairs themselves (so the data, block_size and
    truncation are in it), the reference's identity (name, or a file's path, size and mtime) and the
    precision of the reference's forward passes."""
    h = hashlib.sha256()
    for (chosen, n_prompt), (rejected, _), _ in pairs:
        h.update(np.array([len(chosen), n_prompt, len(rejected), *chosen, *rejected], dtype=np.int64).tobytes())
    weights_dtype = 'float32' if ref_is_base else ref_dtype  # the adapters-off base keeps the policy's fp32
    h.update(repr(('ref_logps v1', source_identity(ref_source), weights_dtype, dtype, device_type)).encode())
    local = os.path.isfile(source)
    folder = os.path.join(os.path.dirname(os.path.abspath(source)) if local else out_dir, '.cache')
    return os.path.join(folder, f"{os.path.basename(source)}.ref_logps.{h.hexdigest()[:16]}.pt")


def read_ref_cache(path, n_pairs):
    """(the cache at path, None) or (None, the one-line problem): a file cut short, another file, keys
    missing, log-probs of another shape or not finite (rank 0 reads it; every rank raises the problem)."""
    try:
        cache = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # one line of the reason (torch's can span several)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if 'weights_only' in reason:  # torch's advice to load it with weights_only=False: not for a cache
            reason = f"{type(e).__name__}: not a file of tensors"
        return None, f"{path}: not a readable reference cache ({reason}); delete it to recompute"
    if not isinstance(cache, dict) or not isinstance(cache.get('logps'), torch.Tensor) \
            or not isinstance(cache.get('vocab_size'), int):
        return None, f"{path}: not a reference cache (no 'logps' tensor and 'vocab_size'); delete it to recompute"
    if tuple(cache['logps'].shape) != (n_pairs, 2):  # the key hashes the pairs: a foreign file
        return None, (f"{path} holds {tuple(cache['logps'].shape)} reference log-probs for {n_pairs} pairs: "
                      f"not this data's cache; delete it")
    if not torch.isfinite(cache['logps']).all():
        return None, f"{path}: the reference log-probs are not all finite (NaN/inf); delete it to recompute"
    return cache, None


# cached reference log-probs (N, 2) per source, or None to compute them on line
source_ref_logps = {name: None for name in sources}
reference = None
if precompute_ref_logps:
    loaded = False
    paths = {name: ref_cache_path(source, source_pairs[name]) for name, (source, _) in sources.items()}
    cached = {name: os.path.isfile(path) for name, path in paths.items()}
    if ddp:  # rank 0's files decide, and rank 0 sends what it loads: other ranks (another node) may not see them
        cached = ddp_broadcast(cached)
    for name, (source, _) in sources.items():
        path = paths[name]
        if cached[name]:
            cache, problem = read_ref_cache(path, len(source_pairs[name])) if master_process else (None, None)
            cache, problem = ddp_broadcast((cache, problem)) if ddp else (cache, problem)
            if problem:
                raise UserError(problem)
            check_reference_vocab(cache['vocab_size'])
            print0(f"reference log-probs of {len(source_pairs[name])} pairs loaded from {path}")
        else:
            if not loaded:
                reference, loaded = load_reference(), True
            t0, pairs = time.time(), source_pairs[name]
            # the single-process batches; under DDP rank r computes every world_size-th one, from r
            starts = range(0, len(pairs), batch_size)[ddp_rank::ddp_world_size]
            logps = {i: torch.stack(reference_logps(reference, pairs[i:i + batch_size]), dim=1).cpu() for i in starts}
            if ddp:  # every rank's share, so all ranks hold the whole cache
                logps = {i: v for share in ddp_gather(logps) for i, v in share.items()}
            vocab_size = (raw_model if reference is None else reference).config.vocab_size
            cache = {'logps': torch.cat([logps[i] for i in sorted(logps)]), 'vocab_size': vocab_size,
                     'ref_source': ref_source}
            if master_process:
                save_atomic(cache, path)
            print0(f"reference log-probs of {len(pairs)} pairs computed in {time.time() - t0:.1f}s, saved to {path}")
        source_ref_logps[name] = cache['logps']  # (N, 2): chosen, rejected
    reference = None  # never held during training
    if device_type == 'cuda':
        torch.cuda.empty_cache()
else:
    reference = load_reference()
    if reference is None:
        print0(f"reference: {ref_source}, the policy with its LoRA adapters disabled (no copy)")

# splits: the val source, or a fixed seeded share of the train source
pairs, ref_logps = {}, {}
if pref_val_data:
    for split in ('train', 'val'):
        pairs[split], ref_logps[split] = source_pairs[split], source_ref_logps[split]
else:
    val_idx, train_idx = holdout_by_prompt(source_pairs['train'], val_fraction, seed, pref_data)  # by prompt
    for split, idx in (('val', val_idx), ('train', train_idx)):
        pairs[split] = [source_pairs['train'][i] for i in idx]
        ref_logps[split] = source_ref_logps['train'][idx] if precompute_ref_logps else None
print0(f"preference pairs: {len(pairs['train'])} train, {len(pairs['val'])} val")


def pair_batches(split, seed, rank=0, world_size=1):
    """Lists of indices into pairs[split], batch_size at a time, epoch after epoch (resumable;
    under DDP this rank's share of each epoch)."""
    return EpochBatches(range(len(pairs[split])), batch_size, seed, collate=list, rank=rank, world_size=world_size)


# -----------------------------------------------------------------------------
# optimizer and resume state
start_iter = iter_num
scaler = grad_scaler(device_type, dtype, checkpoint and checkpoint.get('scaler'))
model.config.gradient_checkpointing = gradient_checkpointing
optimizer = make_optimizer(model.param_groups(weight_decay), optimizer, learning_rate, (beta1, beta2), device_type)
train_loader = pair_batches('train', seed, ddp_rank, ddp_world_size)  # the DDP ranks split each epoch
checkpoint_monitor = checkpoint.get('monitor') if checkpoint is not None else None
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint['optimizer'])
    state = saved_rank_state(checkpoint, ddp_rank, ddp_world_size)  # each DDP rank resumes its own RNGs and pairs
    if state is not None:
        train_loader.load_state_dict(state['train_loader'])
        if 'rng' in state:  # a rank the checkpoint has no state for keeps its fresh RNGs
            set_rng_state(state['rng'])
    checkpoint = None
if compile and device_type == 'cuda':
    model = torch.compile(model)
if ddp:  # the policy only: the reference (a frozen copy, or raw_model with its adapters off) runs outside DDP
    model = ddp_wrap(model, ddp_local_rank, device_type)  # gradients in DDP's buckets, no second copy


def forward(split, idx):
    """DPO on the pairs idx of a split: (mean loss (), {metric name: (B,) tensor})."""
    batch = [pairs[split][i] for i in idx]
    if ref_logps[split] is not None:
        ref_chosen_logps, ref_rejected_logps = ref_logps[split][idx].to(device).unbind(1)  # (B,), (B,)
    else:
        ref_chosen_logps, ref_rejected_logps = reference_logps(reference, batch)
    with ctx:
        policy_chosen_logps, policy_rejected_logps = preference_logps(model, batch, pad_id, device)  # (B,), (B,)
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                                        ref_rejected_logps, beta, loss_type, label_smoothing)
    return losses.mean(), {'loss': losses.detach(), 'rewards/chosen': chosen_rewards,
                           'rewards/rejected': rejected_rewards,
                           'rewards/accuracies': (chosen_rewards > rejected_rewards).float(),
                           'rewards/margins': chosen_rewards - rejected_rewards,
                           'logps/chosen': policy_chosen_logps.detach(), 'logps/rejected': policy_rejected_logps.detach()}


@torch.no_grad()
def evaluate():
    """Every metric's mean over the same val pairs each time."""
    model.eval()
    loader = pair_batches('val', seed + 1)
    parts = {}
    for _ in range(min(eval_iters, len(loader.batches))):
        for k, v in forward('val', loader.next())[1].items():
            parts.setdefault(k, []).append(v)
    model.train()
    means = torch.stack([torch.cat(v).mean() for v in parts.values()]).tolist()  # one sync
    return {f'val/{k}': m for k, m in zip(parts, means)}


def rank_state():
    """What differs between DDP ranks and an exact resume needs: the RNGs and the data position."""
    return {'rng': get_rng_state(), 'train_loader': train_loader.state_dict()}


def checkpoint_state(rank_states=None):
    return {'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
            'model_args': asdict(raw_model.config), 'iter_num': iter_num, 'best_val_loss': best_val_loss,
            'config': config, **rank_state(), 'rank_states': rank_states,  # rank_states: every DDP rank's
            'ref_source': ref_source, 'ref_is_base': ref_is_base, 'ref_fingerprint': ref_fingerprint,
            'monitor': monitor.state_dict(), 'script': 'dpo_train.py'}


logger = Logger(os.path.join(out_dir, 'log.csv'), wandb_log, wandb_project, wandb_run_name, config,
                resume_step=iter_num if init_from == 'resume' else None, enabled=master_process)

# training health (alarms.py). Under DDP every rank runs the monitor on the same global numbers
# (the train metrics are all-reduced, the eval metrics broadcast from rank 0), so an alarm with
# on_alarm='stop' stops all ranks at the same iteration instead of leaving the others waiting.
monitor = HealthMonitor('dpo', on_alarm)
resumed_monitor = checkpoint_monitor is not None  # its history already holds the eval at start_iter
if resumed_monitor:
    monitor.load_state_dict(checkpoint_monitor)

# -----------------------------------------------------------------------------
# training loop
pbar = tqdm(total=max_iters, initial=iter_num, disable=None if master_process else True, dynamic_ncols=True)
say = tqdm.write if master_process else lambda *args, **kwargs: None  # prints above the progress bar
t0 = time.time()
while True:
    lr = get_lr(iter_num, learning_rate, warmup_iters, lr_decay_iters, min_lr, decay_lr)
    for group in optimizer.param_groups:
        group['lr'] = lr

    # evaluate on the val pairs and write checkpoints
    if iter_num % eval_interval == 0 or iter_num == max_iters:
        # rank 0 evaluates all the val pairs (the single-process figures); the others wait for them
        metrics = evaluate() if master_process else None
        rank_states = None
        if ddp:  # collectives: every rank takes part
            metrics = ddp_broadcast(metrics)
            rank_states = ddp_gather(rank_state()) if iter_num > start_iter else None
        say(f"step {iter_num}: val loss {metrics['val/loss']:.4f}, accuracy {metrics['val/rewards/accuracies']:.3f}, "
            f"margin {metrics['val/rewards/margins']:.3f}")
        repeated = resumed_monitor and iter_num == start_iter  # the checkpoint's own eval, checked before it was saved
        alarms = {} if repeated else monitor.check(metrics, iter_num, say, logger=logger)
        logger.log({**metrics, **alarms, 'lr': lr}, iter_num)
        # the eval at the start is of a model this run did not train: best.pt is chosen among later ones
        improved = iter_num > start_iter and metrics['val/loss'] < best_val_loss
        if improved:
            best_val_loss = metrics['val/loss']
        if iter_num > start_iter and master_process:
            state = checkpoint_state(rank_states)
            if improved or always_save_checkpoint:
                save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), state, raw_model)
            if improved:
                save_checkpoint(os.path.join(out_dir, 'best.pt'), state, raw_model)
    if iter_num >= max_iters:
        break

    # forward/backward over gradient_accumulation_steps micro-batches of pairs; sums stay on the device
    # (the step's pair indices up front: each micro-batch weighs by its share of the step's pairs, all ranks,
    # so an epoch's short last one counts its pairs, not as much as a full one)
    micro_batches = [train_loader.next() for _ in range(gradient_accumulation_steps)]
    weights = accumulation_weights(torch.tensor([float(len(idx)) for idx in micro_batches], device=device),
                                   ddp_world_size)
    sums, n_pairs, n_tokens = {}, 0, 0
    for micro_step, idx in enumerate(micro_batches):
        if ddp:  # all-reduce gradients on the last micro-step only
            model.require_backward_grad_sync = (micro_step == gradient_accumulation_steps - 1)
        loss, m = forward('train', idx)
        # padded rows (chosen and rejected) on every rank
        n_tokens += 2 * len(idx) * max(len(pairs['train'][i][k][0]) for i in idx for k in (0, 1)) * ddp_world_size
        scaler.scale(loss * weights[micro_step]).backward()
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v.sum()
        n_pairs += len(m['loss'])
    totals = torch.stack(list(sums.values()))
    if ddp:  # sums and counts over every rank's pairs (one all-reduce): the means logged, checked and stopped on
        totals = torch.cat([totals, totals.new_tensor([n_pairs])])
        torch.distributed.all_reduce(totals)
        totals, n_pairs = totals[:-1], totals[-1].item()
    metrics = dict(zip(sums, (totals / n_pairs).tolist()))  # one sync
    if not math.isfinite(metrics['loss']):  # stop before the step touches the weights; all ranks at once
        pbar.close()
        with contextlib.suppress(TrainingHealthError):  # the health report, the non-finite loss in it
            monitor.check(metrics, iter_num, say, logger=logger)
        raise nonfinite_loss_error(metrics['loss'], iter_num, out_dir)
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=not ddp)  # DDP: zeroed in place, in its buckets (common.ddp_wrap)

    # timing and logging
    t1 = time.time()
    dt, t0 = t1 - t0, t1
    if iter_num % log_interval == 0:
        say(f"iter {iter_num}: loss {metrics['loss']:.4f}, accuracy {metrics['rewards/accuracies']:.3f}, "
            f"margin {metrics['rewards/margins']:.3f}, time {dt * 1000:.0f}ms")
        logger.log({**metrics, **monitor.check(metrics, iter_num, say, logger=logger), 'lr': lr,
                    **step_metrics(dt, n_tokens, device_type)}, iter_num)
    iter_num += 1
    pbar.update(1)
pbar.close()
print0(monitor.summary())
if ddp:  # the replicas must be bit-identical: check once, then leave the process group
    model = None  # drop the DDP wrapper first (see finish_ddp)
    finish_ddp(raw_model.state_dict())
logger.finish()
