"""
Train a reward model on preference pairs: a GPT whose value head scores a whole sequence.

    python train.py config/sft_gpt2large.py            # first an SFT model (or start from gpt2*)
    python reward_train.py config/reward_gpt2large.py  # hh-rlhf, gpt2-large, 24 GB card
    python reward_train.py config/reward_tiny.py       # CPU, a minute

The reward of (prompt, response) is the value head's output at the last real token: the EOS that
ends the response (the scorer appends it, as training does). Chosen and rejected of each pair go
through the model in one right-padded batch. Loss (Ouyang et al. 2022, eq. 1):
    -log sigmoid(r_chosen - r_rejected - margin)  +  chosen_lm_coef * LM loss on the chosen response
Writes to out_dir: ckpt.pt (last), best.pt (best val accuracy), log.csv. After training both get
`reward_mean` / `reward_std`: the reward's mean and std over a reference set of responses (the
chosen responses of the training pairs, or norm_data), which PPO uses to normalise scores.

Departures from the InstructGPT recipe:
1. one pair per comparison instead of all K-choose-2 pairs of a prompt (hh-rlhf has pairs only);
2. the optional LM term on the chosen response keeps the trunk a language model (as
   alignmentnanoGPT does); the per-pair margin (Llama 2) is read from a record's 'margin' field.

Multi-GPU: torchrun --standalone --nproc_per_node=N reward_train.py config/reward_gpt2large.py (DDP as
train.py: gradient_accumulation_steps is the total across ranks, the ranks split each epoch of pairs,
the logged train metrics are means over every rank's pairs, and only rank 0 evaluates, writes and
computes reward_mean/std).
"""

import contextlib
import math
import os
import time
from dataclasses import asdict

import torch
import torch.nn as nn
from tqdm import tqdm

from alarms import HealthMonitor, TrainingHealthError
from common import (EpochBatches, Logger, UserError, accumulation_weights, check_resumable,
                    check_tokenizer_vocab, configure, ddp_broadcast, ddp_device, ddp_gather, ddp_mean, ddp_wrap,
                    finish_ddp, get_lr, get_rng_state, get_tokenizer, grad_scaler, holdout_by_prompt,
                    load_preference_pairs, lora_overrides, lora_summary, make_optimizer, make_out_dir,
                    nonfinite_loss_error, pad_right, plan_memory, print0, print_config, read_records, require_positive,
                    reward_example, reward_stats, run_adapters, save_checkpoint, saved_rank_state, set_rng_state,
                    setup_ddp, setup_device, sft_pair, split_accumulation, step_metrics)
from losses import bradley_terry_loss, gather_last, lm_loss
from model import GPT

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out-reward'
init_from = 'gpt2'              # 'resume' | 'gpt2*' | HF directory | this project's checkpoint (an SFT out_dir)
eval_interval = 100             # evaluate (and save) every this many iterations
eval_iters = 50                 # val batches per eval (the same ones each time; fewer if the split is smaller)
log_interval = 1
on_alarm = 'warn'               # training health (alarms.py): 'warn' prints an alarm once | 'stop' ends the run on it
always_save_checkpoint = True   # save ckpt.pt at every eval (best.pt always tracks the best val accuracy)
seed = 1337
wandb_log = False
wandb_project = 'gpt2-rlhf'
wandb_run_name = 'reward'
# data: {"prompt","chosen","rejected"} or hh-rlhf {"chosen","rejected"} records
tokenizer = 'gpt2'              # 'gpt2' (BPE, EOS <|endoftext|>) or a char-level data/<name>/meta.pkl (EOS '\n')
pref_data = 'data/hh_rlhf/pref_train.jsonl'  # .json/.jsonl/.jsonl.gz file or Hugging Face dataset name
pref_split = 'train'            # split of a hub dataset given as pref_data
pref_val_data = 'data/hh_rlhf/pref_val.jsonl'  # '' = hold out val_fraction of pref_data
pref_val_split = 'test'
val_fraction = 0.1
truncation = 'left'             # too long: 'left' cuts the prompt's start, 'drop' skips the pair
norm_data = ''                  # responses for reward_mean/std ({"prompt","response"}); '' = chosen of pref_data
norm_samples = 512              # how many of them
block_size = 1024
batch_size = 4                  # pairs per micro-batch (2 * batch_size sequences)
gradient_accumulation_steps = 8  # micro-batches per optimizer step, across all DDP ranks
# model
dropout = 0.0
lora_rank = 0                   # LoRA on the trunk (the value head always trains); see train.py
lora_alpha = 16.0
lora_dropout = 0.0
lora_targets = 'attn'
# loss
chosen_lm_coef = 0.0            # weight of the LM loss on chosen responses (0 = pure Bradley-Terry)
# AdamW and schedule
learning_rate = 1e-5
max_iters = 1000
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
decay_lr = True
warmup_iters = 20
lr_decay_iters = 1000
min_lr = 1e-6
# system
backend = 'nccl'                # DDP backend: 'nccl' on GPUs, 'gloo' on CPU
device = 'auto'
dtype = 'auto'
compile = False                 # torch.compile the model (CUDA only)
gradient_checkpointing = False  # recompute each block in backward: far less activation memory, ~30% more compute
optimizer = 'adamw'             # 'adamw' | 'adamw8bit' (bitsandbytes, CUDA only: 2 bytes of state per parameter, not 8)
check_memory = True             # print the predicted peak GPU memory; on CUDA, refuse a config that does not fit
# -----------------------------------------------------------------------------
config = configure(globals())
require_positive(config, 'batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval',
                 'log_interval', 'eval_iters', 'norm_samples')
# -----------------------------------------------------------------------------

# DDP (as train.py) and devices
ddp, ddp_rank, ddp_local_rank, ddp_world_size = setup_ddp(backend)
master_process = ddp_rank == 0  # only rank 0 evaluates, prints, logs and writes checkpoints
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
torch.manual_seed(seed + ddp_rank)  # dropout differs per rank; DDP broadcasts rank 0's initial weights

# -----------------------------------------------------------------------------
# data: tokenized pairs ((chosen_ids, n_prompt), (rejected_ids, n_prompt), margin)
tokenizer = get_tokenizer(tokenizer, strict=True)
pairs, counts = {}, {}
pairs['train'], counts['train'] = load_preference_pairs(pref_data, pref_split, tokenizer, block_size, truncation)
if pref_val_data:
    pairs['val'], counts['val'] = load_preference_pairs(pref_val_data, pref_val_split, tokenizer, block_size, truncation)
else:  # hold out a fixed, seeded share, by prompt
    val_idx, train_idx = holdout_by_prompt(pairs['train'], val_fraction, seed, pref_data)
    pairs = {'val': [pairs['train'][i] for i in val_idx], 'train': [pairs['train'][i] for i in train_idx]}
for split, c in counts.items():
    print0(f"{split} data: {c['identical']} pairs with chosen == rejected skipped, {c['truncated']} truncated "
           f"from the prompt's left, {c['dropped']} dropped (a response longer than block_size={block_size})")
print0(f"preference pairs: {len(pairs['train'])} train, {len(pairs['val'])} val")
# the reference responses of the normalisation stats: norm_samples of them, seeded
pick_norm = lambda texts: [texts[i] for i in torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))
                           .tolist()[:norm_samples]]
norm_pairs = None  # norm_data's are read and checked now, so a bad file stops the run before training, not after it
if norm_data:
    norm_records = [sft_pair(r, f"{norm_data}: record {i}") for i, r in enumerate(read_records(norm_data))]
    for i, (prompt, response) in pick_norm(list(enumerate(norm_records))):
        try:
            reward_example(tokenizer, prompt, response, block_size)
        except UserError as e:
            raise UserError(f"{norm_data}: record {i}: {e}") from None
    norm_pairs = pick_norm(norm_records)


def collate(batch):
    """Chosen rows then rejected rows, right-padded: ids, attention_mask, response_mask (2B, T), margins (B,)."""
    ids, attention_mask, response_mask = pad_right([c for c, _, _ in batch] + [r for _, r, _ in batch],
                                                   tokenizer.eot_token, device)
    margins = torch.tensor([m if m is not None else 0.0 for _, _, m in batch], device=device)
    return ids, attention_mask, response_mask, margins


def pair_batches(split, seed, rank=0, world_size=1):
    return EpochBatches(pairs[split], batch_size, seed, collate, rank=rank, world_size=world_size)


# -----------------------------------------------------------------------------
# model: a GPT with the value head (zero-initialised on a fresh model)


class PairLoss(nn.Module):
    """The reward model's whole computation on a micro-batch of pairs, chosen rows then rejected:
    (loss (), per-pair Bradley-Terry losses (B,), rewards (2B,), the chosen responses' LM loss ()
    or None when chosen_lm_coef is 0). It is one module so that DDP can
    wrap it: DDP synchronises gradients only for what runs inside its wrapped forward(), and the
    reward needs the trunk, the value head and (optionally) the LM head, not GPT.forward's logits
    of every row."""

    def __init__(self, gpt, chosen_lm_coef):
        super().__init__()
        self.gpt, self.chosen_lm_coef = gpt, chosen_lm_coef

    def forward(self, ids, attention_mask, response_mask, margins):
        B = ids.size(0) // 2
        h = self.gpt.trunk(ids)  # right padding: no attention mask needed (causal)
        rewards = gather_last(self.gpt.value(h), attention_mask)  # (2B,) at each row's EOS
        losses = bradley_terry_loss(rewards[:B], rewards[B:], margins)  # (B,)
        loss, lm = losses.mean(), None
        if self.chosen_lm_coef > 0:  # mean NLL per chosen response token
            lm = lm_loss(self.gpt.lm_head(h[:B]), ids[:B], response_mask[:B])
            loss = loss + self.chosen_lm_coef * lm
        return loss, losses, rewards, lm


lora = lora_overrides(lora_rank, lora_alpha, lora_dropout, lora_targets)  # {} without LoRA
iter_num, best_val, checkpoint = 0, None, None  # best.pt's (val accuracy, -val loss): accuracy first, loss breaks ties
if init_from == 'resume':
    model, checkpoint = GPT.from_checkpoint(os.path.join(out_dir, 'ckpt.pt'), dropout=dropout)
    check_resumable(checkpoint, 'reward_train.py', os.path.join(out_dir, 'ckpt.pt'))
    iter_num = checkpoint['iter_num']
    best_val = tuple(checkpoint['best_val']) if checkpoint.get('best_val') else None
    if best_val is None and (checkpoint.get('best_val_acc') or -1) >= 0:  # an older checkpoint: accuracy only
        best_val = (checkpoint['best_val_acc'], float('-inf'))
else:
    model = run_adapters(GPT.from_pretrained(init_from, value_head=True, dropout=dropout), lora, init_from, print0)
if not model.config.value_head:
    raise UserError(f"{init_from}: the resumed model has no value head")
if block_size < model.config.block_size:
    model.crop_block_size(block_size)
elif block_size > model.config.block_size:
    raise UserError(f"block_size={block_size} is larger than the model's {model.config.block_size}")
if model.config.lora_rank:  # the value head trains too (LoRA freezes only the base weights)
    print0(lora_summary(model))
check_tokenizer_vocab(tokenizer, model.config.vocab_size, init_from)
model.to(device)
start_iter = iter_num
# the checkpoints of this run, which get the normalisation stats at the end: a resumed run's are its own
# already; a new run's are those it saves (another run's files in out_dir are left as they are)
saved = {'ckpt.pt', 'best.pt'} if init_from == 'resume' else set()

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
raw_model = model
model = PairLoss(model, chosen_lm_coef)
if compile and device_type == 'cuda':  # the whole reward computation (GPT.forward is not what it runs)
    model = torch.compile(model)
if ddp:
    model = ddp_wrap(model, ddp_local_rank, device_type)  # gradients in DDP's buckets, no second copy


def forward(ids, attention_mask, response_mask, margins):
    """One micro-batch: (the loss to minimise (), its two terms with their gradients, the Bradley-Terry
    mean and the chosen responses' LM loss (None when chosen_lm_coef is 0), metrics dict: the per-pair
    Bradley-Terry 'loss', 'accuracy', 'margin' (B,), 'reward' (2B,), and with chosen_lm_coef > 0
    'lm_loss' (1,))."""
    B = ids.size(0) // 2
    with ctx:
        loss, losses, rewards, lm = model(ids, attention_mask, response_mask, margins)
    chosen_rewards, rejected_rewards = rewards[:B], rewards[B:]
    # accuracy: chosen scored higher; a tie counts half (a fresh zero head ties everything: 0.5, chance)
    accuracy = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    m = {'loss': losses.detach(), 'accuracy': accuracy.detach(), 'margin': (chosen_rewards - rejected_rewards).detach(),
         'reward': rewards.detach()}
    if lm is not None:
        m['lm_loss'] = lm.detach().float().reshape(1)
    return loss, (losses.mean(), lm), m


@torch.no_grad()
def evaluate():
    """Pairwise accuracy, mean margin, loss and reward mean/std on the same val batches each time."""
    model.eval()
    loader = pair_batches('val', seed + 1)
    parts = {}
    for _ in range(min(eval_iters, len(loader.batches))):
        _, _, m = forward(*loader.next())
        for k, v in m.items():
            parts.setdefault(k, []).append(v)
    model.train()
    m = {k: torch.cat(v) for k, v in parts.items()}
    out = {'val/loss': m['loss'].mean().item(), 'val/accuracy': m['accuracy'].mean().item(),
           'val/margin': m['margin'].mean().item(), 'val/reward_mean': m['reward'].mean().item(),
           'val/reward_std': m['reward'].std().item()}
    if 'lm_loss' in m:  # mean over the micro-batches, as train/lm_loss
        out['val/lm_loss'] = m['lm_loss'].mean().item()
    return out


def rank_state():
    """What differs between DDP ranks and an exact resume needs: the RNGs and the data position."""
    return {'rng': get_rng_state(), 'train_loader': train_loader.state_dict()}


def checkpoint_state(rank_states=None):
    return {'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
            'model_args': asdict(raw_model.config), 'iter_num': iter_num, 'best_val': best_val,
            'best_val_acc': best_val[0] if best_val else None,
            'config': config, **rank_state(), 'rank_states': rank_states,  # rank_states: every DDP rank's
            'monitor': monitor.state_dict(), 'script': 'reward_train.py'}


logger = Logger(os.path.join(out_dir, 'log.csv'), wandb_log, wandb_project, wandb_run_name, config,
                resume_step=iter_num if init_from == 'resume' else None, enabled=master_process)

# training health (alarms.py). Under DDP every rank runs the monitor on the same global numbers
# (the train metrics are all-reduced, the eval metrics broadcast from rank 0), so an alarm with
# on_alarm='stop' stops all ranks at the same iteration instead of leaving the others waiting.
monitor = HealthMonitor('reward', on_alarm)
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

    if iter_num % eval_interval == 0 or iter_num == max_iters:
        # rank 0 evaluates all the val pairs (the single-process figures); the others wait for them
        metrics = evaluate() if master_process else None
        rank_states = None
        if ddp:  # collectives: every rank takes part
            metrics = ddp_broadcast(metrics)
            rank_states = ddp_gather(rank_state()) if iter_num > start_iter else None
        say(f"step {iter_num}: val accuracy {metrics['val/accuracy']:.4f}, loss {metrics['val/loss']:.4f}, "
            f"margin {metrics['val/margin']:.3f}")
        repeated = resumed_monitor and iter_num == start_iter  # the checkpoint's own eval, checked before it was saved
        alarms = {} if repeated else monitor.check(metrics, iter_num, say, logger=logger)
        logger.log({**metrics, **alarms, 'lr': lr}, iter_num)
        # the eval at the start is of a model this run did not train: best.pt is chosen among later ones
        improved = iter_num > start_iter and (best_val is None or (metrics['val/accuracy'], -metrics['val/loss']) > best_val)
        if improved:
            best_val = (metrics['val/accuracy'], -metrics['val/loss'])
        if iter_num > start_iter and master_process:
            state = checkpoint_state(rank_states)
            if improved or always_save_checkpoint:
                save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), state, raw_model)
                saved.add('ckpt.pt')
            if improved:
                save_checkpoint(os.path.join(out_dir, 'best.pt'), state, raw_model)
                saved.add('best.pt')
    if iter_num >= max_iters:
        break

    # forward/backward over gradient_accumulation_steps micro-batches of pairs, fetched up front: the
    # step's loss is the mean over its pairs (all ranks), each micro-batch weighing by its share of them
    # (an epoch's short last one counts its pairs), and the LM term the mean over its chosen response
    # tokens, each micro-batch weighing by its share of those
    batches = [train_loader.next() for _ in range(gradient_accumulation_steps)]
    weights = accumulation_weights(torch.tensor([float(b[3].numel()) for b in batches], device=device),
                                   ddp_world_size)  # b[3]: the micro-batch's margins, one a pair
    if chosen_lm_coef > 0:  # the LM loss's tokens: the chosen rows' response targets (lm_loss's mask[:, 1:])
        lm_weights = accumulation_weights(torch.stack([b[2][:b[3].numel(), 1:].sum() for b in batches]).float(),
                                          ddp_world_size)
    sums, n_tokens = {}, 0
    for micro_step, batch in enumerate(batches):
        if ddp:  # all-reduce gradients on the last micro-step only
            model.require_backward_grad_sync = (micro_step == gradient_accumulation_steps - 1)
        n_tokens += batch[0].numel() * ddp_world_size  # 2 right-padded rows a pair, on every rank
        loss, (bt, lm), m = forward(*batch)
        w = weights[micro_step]
        objective = loss * w if lm is None else bt * w + chosen_lm_coef * lm * lm_weights[micro_step]
        scaler.scale(objective).backward()
        sums['objective'] = sums.get('objective', 0.0) + objective.detach().float()
        for k in ('loss', 'accuracy', 'margin', 'lm_loss'):  # loss: Bradley-Terry alone, as val/loss
            if k in m:
                sums[k] = sums.get(k, 0.0) + m[k].mean() * (lm_weights[micro_step] if k == 'lm_loss' else w)
    if ddp:  # means over every rank's pairs: the figures logged, checked and stopped on
        sums = dict(zip(sums, ddp_mean(torch.stack(list(sums.values())))))  # one all-reduce for all
    lossf = sums.pop('objective').item()  # Bradley-Terry + chosen_lm_coef * LM: what the step minimises
    metrics = {f'train/{k}': v.item() for k, v in sums.items()}
    if not math.isfinite(lossf):  # every rank sees the same lossf, so all stop here together
        with contextlib.suppress(TrainingHealthError):  # the health report, the non-finite loss in it
            monitor.check({k: metrics[k] for k in ('train/loss', 'train/lm_loss') if k in metrics}, iter_num, say,
                          logger=logger)  # the objective is their weighted sum: one of them is non-finite
        raise nonfinite_loss_error(lossf, iter_num, out_dir)
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=not ddp)  # DDP: zeroed in place, in its buckets (common.ddp_wrap)

    t1 = time.time()
    dt, t0 = t1 - t0, t1
    if iter_num % log_interval == 0:
        say(f"iter {iter_num}: loss {metrics['train/loss']:.4f}, accuracy {metrics['train/accuracy']:.3f}, "
            f"margin {metrics['train/margin']:.3f}"
            + (f", lm_loss {metrics['train/lm_loss']:.4f}" if 'train/lm_loss' in metrics else ""))
        logger.log({**metrics, **monitor.check(metrics, iter_num, say, logger=logger), 'lr': lr,
                    **step_metrics(dt, n_tokens, device_type)}, iter_num)
    iter_num += 1
    pbar.update(1)
pbar.close()
print0(monitor.summary())
if ddp:  # the replicas must be bit-identical: check once, then leave the process group
    model = None  # drop the DDP wrapper first (see finish_ddp)
    finish_ddp(raw_model.state_dict())

# -----------------------------------------------------------------------------
# reward normalisation: mean/std of the reward over reference responses, stored in the checkpoints
# (by rank 0 alone: the process group is gone, the other ranks are done)
if master_process:
    if not norm_data:  # the training pairs' chosen responses
        # texts again (score_texts encodes them as PPO will); an empty prompt, tokenized as [EOS], is ''
        prompt_text = lambda ids: '' if ids == [tokenizer.eot_token] else tokenizer.decode(ids)
        norm_pairs = pick_norm([(prompt_text(c[0][:c[1]]), tokenizer.decode(c[0][c[1]:-1])) for c, _, _ in pairs['train']])
    if not saved:
        print(f"note: this run saved no checkpoint: nothing in {out_dir} gets reward normalisation stats")
    for name in sorted(saved):  # this run's files only: another run's in out_dir keep theirs
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path):
            continue
        state = torch.load(path, map_location='cpu', weights_only=False)
        raw_model.load_state_dict(state['model'])
        mean, std = reward_stats(raw_model, tokenizer, norm_pairs, block_size, batch_size * 2, device, ctx)
        if not std > 1e-6:  # every reference response scored alike: dividing by it would blow scores up
            print(f"note: {path}: reward std {std:.2e} over the reference responses; normalisation keeps std 1")
            std = 1.0
        state['reward_mean'], state['reward_std'] = mean, std
        save_checkpoint(path, state, raw_model)
        print(f"{path}: reward mean {mean:.4f}, std {std:.4f} over {len(norm_pairs)} reference responses")
logger.finish()
