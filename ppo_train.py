"""
RLHF: optimise a policy against a reward with PPO (or GRPO / RLOO), one loop read top to bottom
(CleanRL style). Each iteration:
  1. rollout: sample a batch of prompts, left-pad them, generate with the KV cache at
     `temperature` (top_k/top_p), cut each response after its first EOS;
  2. score: the reward of (prompt, response) texts, from this project's reward checkpoint (a .pt,
     normalised with its stored mean/std), a Hugging Face sequence classifier with its own tokenizer
     (any other reward_model) or a Python `reward_fn = "module:function"`; a response with no EOS
     gets `missing_eos_penalty` subtracted;
  3. recompute the policy's and the reference's log-probs with logits / temperature (the sampling
     temperature) and the values at the positions that predict each response token;
  4. per-token reward = -kl_coef * KL(k1) on every response token + the score on the last one
     (GRPO/RLOO with kl_in_loss=True: the score alone, and kl_coef * k3 in the loss);
  5. GAE advantages, whitened over the rollout's response tokens (or GRPO / RLOO group advantages,
     not whitened), then ppo_epochs of shuffled mini-batches with the clipped policy and value losses.

    python ppo_train.py config/ppo_gpt2large.py     # SFT policy, project reward model, 24 GB
    python ppo_train.py config/ppo_tiny.py          # CPU

Departures from Ziegler et al. 2019 / Ouyang et al. 2022: the reward model is trained once
(no online labels); no pretraining-mix term (PPO-ptx); the value head may share the policy's trunk
(critic='shared', the cheapest) or be a separate model initialised from the reward model.
"""

import copy
import importlib
import os
import sys
import time
from dataclasses import asdict

import torch
from tqdm import tqdm

from alarms import HealthMonitor, distinct_n, duplicate_fraction, explained_variance, zero_std_fraction
from common import (EpochBatches, HFRewardModel, Logger, RewardModel, UserError, check_resumable,
                    check_source_unchanged, check_tokenizer_vocab, configure, get_lr, get_rng_state, get_tokenizer,
                    grad_scaler, lora_overrides, make_optimizer, make_out_dir, pad_left, plan_memory, preference_triple,
                    print_config, read_records, render_chat, require_positive, resolve_device, response_forward,
                    response_values, run_adapters, save_checkpoint, set_rng_state, setup_device, single_process,
                    step_metrics, stream_seed, weights_fingerprint)
from losses import (adaptive_kl_coef, gae, grpo_advantages, kl_estimate, masked_mean, masked_whiten,
                    ppo_policy_loss, ppo_value_loss, rloo_advantages)
from model import GPT

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out-ppo'
init_from = 'out-sft-gpt2large'  # the policy: an SFT checkpoint, 'gpt2*', an HF directory, or 'resume'
eval_interval = 50              # save a checkpoint every this many iterations
log_interval = 1
sample_interval = 10            # print/log a few prompt -> response samples every this many iterations
seed = 1337
wandb_log = False
wandb_project = 'gpt2-rlhf'
wandb_run_name = 'ppo'
# prompts: records with "prompt", or "messages" (chat; a last assistant answer is not part of the prompt), or hh-rlhf dialogues ("chosen")
tokenizer = 'gpt2'              # 'gpt2' (BPE, EOS <|endoftext|>) or a char-level data/<name>/meta.pkl (EOS '\n')
prompt_data = 'data/hh_rlhf/sft_train.jsonl'
prompt_split = 'train'
# reward: a .pt path is this project's reward checkpoint; anything else a Hugging Face
# sequence-classification model (directory or hub name) with its own tokenizer; or a Python function
reward_model = 'out-reward-gpt2large/best.pt'
reward_template = ''            # HF reward model: '' = (prompt, response) as a text pair; else e.g. '{prompt}{response}'
reward_fn = ''                  # 'module:function', f(prompts, responses) -> list of floats (texts); overrides reward_model
normalize_reward = True         # (r - reward_mean) / reward_std from the reward checkpoint (an HF one: its config.json's)
reward_clip = 0.0               # clip scores to [-reward_clip, reward_clip] (0 = off)
reward_device = ''              # '' = device; 'cpu' keeps the reward model off the GPU (slower scoring)
reward_dtype = 'float32'        # weights of the frozen reward model: 'bfloat16' halves them
missing_eos_penalty = 1.0       # subtracted from the score of a response that never emits EOS
# generation
max_new_tokens = 64
temperature = 0.7               # the log-probs of training are computed at this same temperature
top_k = 0                       # 0 = off; anything but off makes training log-probs differ from sampling
top_p = 1.0
# algorithm
advantage_estimator = 'gae'     # 'gae' (PPO with a critic) | 'grpo' | 'rloo' (no critic)
group_size = 4                  # grpo/rloo: responses sampled per prompt
critic = 'shared'               # gae: 'shared' (value head on the policy trunk) | 'separate' (from reward_model)
kl_coef = 0.05                  # beta: weight of the KL penalty to the reference
kl_estimator = 'k1'             # the KL penalty in the reward: 'k1' (log pi - log pi_ref) only; k2/k3 are refused (see below)
kl_in_loss = False              # grpo/rloo: add kl_coef * k3 to the loss instead of the reward (grpo: required when kl_coef > 0)
adaptive_kl = False             # Ziegler et al.'s controller: move kl_coef towards target_kl
target_kl = 6.0                 # target KL (nats per sequence) for the adaptive controller
kl_horizon = 10000              # the controller's horizon in sequences: kl_coef moves by <= 20% x sequences per rollout / horizon
gamma = 1.0
lam = 0.95
whiten_advantages = True
batch_size = 16                 # prompts per rollout (times group_size for grpo/rloo)
mini_batch_size = 4             # sequences per optimiser step
ppo_epochs = 4                  # passes over each rollout
cliprange = 0.2
cliprange_high = 0.2            # > cliprange: DAPO's clip-higher
cliprange_value = 0.2
vf_coef = 0.1
loss_aggregation = 'token'      # 'token' | 'sequence' mean of the policy loss
max_approx_kl = 0.0             # stop a rollout's epochs early when approx KL exceeds this (0 = never)
# training health (alarms.py)
on_alarm = 'warn'               # 'warn': print each alarm once when it turns on | 'stop': end the run on it
kl_ceiling = 0.0                # nats per sequence; KL above it while the score rises = reward hacking (0 = off)
# model
block_size = 1024
lora_rank = 0                   # LoRA: the reference is the policy with adapters disabled (no copy)
lora_alpha = 16.0
lora_dropout = 0.0               # must be 0: no dropout in PPO (a LoRA init_from's own is switched off too)
lora_targets = 'attn'
ref_dtype = 'float32'           # 'bfloat16' halves the frozen reference copy
gradient_checkpointing = False  # recompute each block in backward: far less activation memory, ~30% more compute
# AdamW
learning_rate = 1e-6
max_iters = 500
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
decay_lr = False
warmup_iters = 0
lr_decay_iters = 500
min_lr = 1e-7
optimizer = 'adamw'             # 'adamw' | 'adamw8bit' (bitsandbytes, CUDA only: 2 bytes of state per parameter, not 8)
# system
device = 'auto'
dtype = 'auto'
compile = False                 # torch.compile the log-prob/value pass (CUDA only; generation stays eager)
check_memory = True             # print the predicted peak GPU memory; on CUDA, refuse a config that does not fit
# -----------------------------------------------------------------------------
config = configure(globals())
require_positive(config, 'batch_size', 'block_size', 'mini_batch_size', 'max_new_tokens', 'ppo_epochs', 'group_size',
                 'eval_interval', 'log_interval')
single_process(os.path.basename(__file__))  # no DDP here yet: refuse torchrun's copies
# -----------------------------------------------------------------------------

# checks that need no model: fail before any GPU work
if advantage_estimator not in ('gae', 'grpo', 'rloo'):
    raise UserError(f"advantage_estimator must be 'gae', 'grpo' or 'rloo', got {advantage_estimator!r}")
if reward_dtype not in ('float32', 'bfloat16'):
    raise UserError(f"reward_dtype must be 'float32' or 'bfloat16', got {reward_dtype!r}")
if reward_device not in ('', 'cpu') and not reward_device.startswith('cuda'):
    raise UserError(f"reward_device must be '' (= device), 'cpu' or 'cuda[:N]', got {reward_device!r}")
if lora_dropout != 0.0:
    raise UserError(f"lora_dropout={lora_dropout}: PPO runs without dropout (rollout and update must be the same "
                    f"function, so the first ratio of each rollout is 1); set lora_dropout=0")
if critic not in ('shared', 'separate'):
    raise UserError(f"critic must be 'shared' or 'separate', got {critic!r}")
if kl_in_loss and advantage_estimator == 'gae':
    raise UserError("kl_in_loss=True is GRPO/RLOO's KL term in the loss; PPO with GAE keeps the KL penalty in the "
                    "reward (kl_coef, kl_estimator): leave kl_in_loss=False")
if max_new_tokens >= block_size:
    raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in block_size={block_size}")
n_seq = batch_size * (group_size if advantage_estimator != 'gae' else 1)  # sequences per rollout
if n_seq % mini_batch_size != 0:
    raise UserError(f"{n_seq} sequences per rollout are not divisible by mini_batch_size={mini_batch_size}")
if advantage_estimator != 'gae' and group_size < 2:
    raise UserError(f"{advantage_estimator} needs group_size >= 2")
if temperature <= 0:
    raise UserError(f"temperature={temperature}: PPO samples (temperature > 0) and computes log-probs at it")
if top_k < 0 or not 0 < top_p <= 1:
    raise UserError(f"top_k={top_k}, top_p={top_p}: top_k must be >= 0 (0 = off) and top_p in (0, 1] (1 = off)")
if kl_estimator != 'k1':  # a penalty in the reward moves the policy by E[grad log pi * penalty]: for k1 that is
    # grad KL(pi || ref), for k3 grad KL(pi || ref) - grad KL(ref || pi), which vanishes near the reference (k2's too)
    raise UserError(f"kl_estimator={kl_estimator!r}: only 'k1' (log pi - log pi_ref) belongs in the reward; as a reward "
                    f"penalty k2's and k3's policy gradients are not the KL's (they vanish near the reference, so the "
                    f"policy drifts off it); k3 is right in the loss: kl_in_loss=True with grpo/rloo")
if advantage_estimator == 'grpo' and not kl_in_loss and kl_coef > 0:
    raise UserError("advantage_estimator='grpo' divides each group's rewards by their std: a KL penalty in the reward "
                    "would be divided too (a group of tied scores turns KL noise into full-size advantages); set "
                    "kl_in_loss=True (DeepSeekMath's KL in the loss), or kl_coef=0, or use 'rloo'")

device, device_type, dtype, ctx = setup_device(device, dtype)
plan_memory(__file__, config, device, check_memory)  # before any model is loaded
print_config(config)
make_out_dir(out_dir, resume=init_from == 'resume')  # one line, not a traceback, when out_dir is a file
torch.manual_seed(seed)
tokenizer = get_tokenizer(tokenizer, strict=True)
eos = tokenizer.eot_token

# -----------------------------------------------------------------------------
# reward: a function of texts, checked on a dummy call before anything heavy
if reward_fn:
    module_name, _, fn_name = reward_fn.partition(':')
    sys.path.insert(0, os.getcwd())
    try:
        score_fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"reward_fn={reward_fn!r} cannot be imported: {e}") from None
else:
    if reward_model.endswith('.pt') and not os.path.exists(reward_model):
        raise UserError(f"reward_model {reward_model} not found (train one with reward_train.py, or set reward_fn)")
    where = dict(device=resolve_device(reward_device) if reward_device else device, weights_dtype=reward_dtype)
    # an HF model runs in its own dtype (reward_dtype), outside the policy's autocast
    scorer = RewardModel(reward_model, dtype=dtype, **where) if reward_model.endswith('.pt') \
        else HFRewardModel(reward_model, template=reward_template, **where)
    score_fn = lambda prompts, responses: scorer.score(prompts, responses, normalize=normalize_reward).tolist()
    if isinstance(scorer, RewardModel) and max_new_tokens + 2 > scorer.model.config.block_size:  # + EOS, + a prompt token
        raise UserError(f"max_new_tokens={max_new_tokens}: a response and its EOS do not fit the reward model's "
                        f"block_size={scorer.model.config.block_size} with a prompt token; lower max_new_tokens")


def score(prompts, responses):
    scores = score_fn(prompts, responses)
    if len(scores) != len(prompts):
        raise UserError(f"reward function returned {len(scores)} scores for {len(prompts)} responses")
    return torch.tensor([float(s) for s in scores], device=device)


# -----------------------------------------------------------------------------
# prompts
def prompt_text(record, where):
    if isinstance(record.get('prompt'), str):
        return record['prompt']
    if 'messages' in record:  # the dialogue before the assistant's answer (an SFT record's ends with one)
        messages = record['messages']
        ends_with_answer = isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict) \
            and messages[-1].get('role') == 'assistant'
        asked = isinstance(messages, list) and any(isinstance(m, dict) and m.get('role') != 'system'
                                                   for m in messages[:len(messages) - ends_with_answer])
        if not asked:  # [], only the answer or only a system message: the prompt would be a bare
            # "\n\nAssistant:" (after the system text), a question nobody asked
            raise UserError(f"{where}: 'messages' needs a list with at least one user message before the "
                            f"assistant's answer (the prompt), got {str(messages)[:80]}")
        if ends_with_answer:
            return render_chat(messages, where)[0]
        return render_chat(messages + [{'role': 'assistant', 'content': ''}], where)[0]
    return preference_triple(record, where)[0]


max_prompt = block_size - max_new_tokens
prompts = [tokenizer.encode(prompt_text(r, f"{prompt_data}: record {i}"))
           for i, r in enumerate(read_records(prompt_data, prompt_split))]
n_long, n_empty = sum(len(p) > max_prompt for p in prompts), sum(len(p) == 0 for p in prompts)
prompts = [p for p in prompts if 0 < len(p) <= max_prompt]
if not prompts:
    raise UserError(f"{prompt_data}: no prompt fits block_size - max_new_tokens = {max_prompt} tokens"
                    + (f" ({n_empty} empty)" if n_empty else ""))
print(f"prompts: {len(prompts)} ({n_long} longer than block_size - max_new_tokens = {max_prompt} skipped"
      + (f", {n_empty} empty skipped" if n_empty else "") + ")")


if len(prompts) < batch_size:
    raise UserError(f"{prompt_data}: {len(prompts)} usable prompts, fewer than batch_size={batch_size}")
prompt_loader = EpochBatches(prompts, batch_size, seed, collate=lambda batch: batch, drop_last=True)  # full rollouts

# -----------------------------------------------------------------------------
# models: policy (+ value head when the critic is shared), reference, optional separate critic
lora = lora_overrides(lora_rank, lora_alpha, lora_dropout, lora_targets)  # {} without LoRA
shared_critic = advantage_estimator == 'gae' and critic == 'shared'
iter_num, checkpoint, rollout_seeding = 0, None, 'stream'  # rollout_seeding: see stream_seed
if init_from == 'resume':
    policy, checkpoint = GPT.from_checkpoint(os.path.join(out_dir, 'ckpt.pt'), dropout=0.0)
    check_resumable(checkpoint, 'ppo_train.py', os.path.join(out_dir, 'ckpt.pt'))
    for key in ('advantage_estimator', 'critic'):  # the run's algorithm and its critic's place stay as begun
        if key in checkpoint['config'] and checkpoint['config'][key] != config[key]:
            raise UserError(f"this run used {key}={checkpoint['config'][key]!r}, not {config[key]!r}: a resume "
                            f"continues it as begun; start a new run (another out_dir) to change it")
    iter_num, ref_source = checkpoint['iter_num'], checkpoint['ref_source']
    ref_fingerprint = checkpoint.get('ref_fingerprint')
    rollout_seeding = checkpoint.get('rollout_seeding', 'seed+iter')  # a run from before stream_seed goes on as begun
    if lora_rank != policy.config.lora_rank:  # the run's adapters (or none) decide what the reference is
        print(f"lora_rank {policy.config.lora_rank} from the checkpoint (config says {lora_rank})")
        lora_rank = policy.config.lora_rank
    if not lora_rank:  # the reference is loaded again from init_from's path: it must not have changed
        check_source_unchanged(ref_source, ref_fingerprint, 'the reference (init_from)')
    if adaptive_kl:  # the controller's state; a fixed kl_coef is the config's (--kl_coef on resume changes it)
        kl_coef = checkpoint['kl_coef']
    elif kl_coef != checkpoint['kl_coef']:
        print(f"kl_coef {kl_coef} from the config (the checkpoint's run used {checkpoint['kl_coef']})")
else:
    policy = run_adapters(GPT.from_pretrained(init_from, dropout=0.0, value_head=shared_critic), lora, init_from)
    ref_source = init_from  # the reference is the initial policy, also after a resume
    ref_fingerprint = None if lora_rank else weights_fingerprint(ref_source)  # checked when a resumed run reloads it
check_tokenizer_vocab(tokenizer, policy.config.vocab_size, init_from)
if block_size < policy.config.block_size:
    policy.crop_block_size(block_size)
elif block_size > policy.config.block_size:  # prompts were kept for block_size: they would not fit the policy
    raise UserError(f"block_size={block_size} is larger than {init_from}'s context {policy.config.block_size}; "
                    f"set --block_size={policy.config.block_size}")
policy.to(device)
if lora_rank:
    reference = None  # the policy with its adapters disabled
else:
    # on resume the policy has moved: the reference is loaded again from where the run started
    # (merged, as the policy started: a LoRA init_from's adapters folded in, so the resumed reference is the same
    # weights to the bit, not the same function up to rounding)
    reference = copy.deepcopy(policy) if checkpoint is None else GPT.from_pretrained(ref_source, dropout=0.0).merge_lora()
    if block_size < reference.config.block_size:
        reference.crop_block_size(block_size)
    reference.to(device=device, dtype={'float32': torch.float32, 'bfloat16': torch.bfloat16}[ref_dtype])
    reference.requires_grad_(False).eval()
critic_model = None
if advantage_estimator == 'gae' and critic == 'separate':
    if reward_fn or not reward_model.endswith('.pt'):
        raise UserError("critic='separate' starts from this project's reward checkpoint (a .pt file); "
                        "with reward_fn or a Hugging Face reward model use critic='shared'")
    critic_model = GPT.from_pretrained(reward_model, dropout=0.0).to(device).eval()  # its value head: the reward head
    if critic_model.config.block_size < block_size:  # it reads whole rollouts, prompt and response
        raise UserError(f"critic='separate' starts from {reward_model}, whose context {critic_model.config.block_size} "
                        f"is shorter than block_size={block_size}: lower block_size or use critic='shared'")
    saved_critic = checkpoint['critic'] if checkpoint is not None else None
    if critic_model.config.lora_rank and not (saved_critic and any('.lora_' in k for k in saved_critic)):
        critic_model.merge_lora()  # a LoRA reward model: every weight of the critic trains, as the policy's do
    if saved_critic is not None:
        critic_model.load_state_dict(saved_critic)
    elif normalize_reward:  # the scores it predicts are (r - mean) / std: its head starts on that scale
        with torch.no_grad():
            head = critic_model.value_head
            head.weight.div_(scorer.std)
            head.bias.sub_(scorer.mean).div_(scorer.std)
trained = [m for m in (policy, critic_model) if m is not None]
for m in trained:
    m.config.gradient_checkpointing = gradient_checkpointing
# weight_decay on matrices only, not on biases and layer norms (model.param_groups, as the other scripts)
groups = [m.param_groups(weight_decay) for m in trained]
param_groups = [{'params': [p for g in groups for p in g[i]['params']], 'weight_decay': groups[0][i]['weight_decay']}
                for i in range(2)]
params = [p for m in trained for p in m.parameters() if p.requires_grad]  # (grad_clip's norm over them)
if checkpoint is not None and len(checkpoint['optimizer']['param_groups']) == 1:  # saved before the two groups:
    param_groups = params  # its one group, in its order
optimizer = make_optimizer(param_groups, optimizer, learning_rate, (beta1, beta2), device_type, weight_decay=weight_decay)
scaler = grad_scaler(device_type, dtype, checkpoint and checkpoint.get('scaler'))  # a no-op unless float16
monitor = HealthMonitor('ppo' if advantage_estimator == 'gae' else advantage_estimator, on_alarm, kl_ceiling=kl_ceiling)
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint['optimizer'])
    prompt_loader.load_state_dict(checkpoint['prompt_loader'])
    monitor.load_state_dict(checkpoint['monitor'])
    set_rng_state(checkpoint['rng'])
    checkpoint = None
generator = torch.Generator(device=device)  # sampling: reseeded every rollout (exact resume), see stream_seed
start_iter = iter_num


# the training-time pass (policy, critic, reference): compiled with dynamic shapes, as response
# lengths change every rollout (checked on CPU: equal to eager, adapters on and off)
logprob_pass = torch.compile(response_forward, dynamic=True) if compile and device_type == 'cuda' else response_forward


def forward(model, ids, attention_mask, n_prompt, with_values, with_entropy=False):
    with ctx:
        return logprob_pass(model, ids, attention_mask, n_prompt, temperature, with_values, with_entropy)


def critic_forward(ids, attention_mask, n_prompt):  # a separate critic's values: no vocabulary projection
    with ctx:
        return response_values(critic_model, ids, attention_mask, n_prompt)


def reference_logprobs(ids, attention_mask, n_prompt):
    with torch.no_grad():
        if reference is None:
            with policy.disable_adapters():
                return forward(policy, ids, attention_mask, n_prompt, False)[0]
        return forward(reference, ids, attention_mask, n_prompt, False)[0]


def checkpoint_state():
    state = {'model': policy.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
             'model_args': asdict(policy.config), 'iter_num': iter_num, 'kl_coef': kl_coef, 'config': config,
             'rng': get_rng_state(), 'prompt_loader': prompt_loader.state_dict(), 'ref_source': ref_source,
             'ref_fingerprint': ref_fingerprint, 'rollout_seeding': rollout_seeding,
             'monitor': monitor.state_dict(), 'script': 'ppo_train.py'}
    if critic_model is not None:
        state['critic'] = critic_model.state_dict()
    return state


logger = Logger(os.path.join(out_dir, 'log.csv'), wandb_log, wandb_project, wandb_run_name, config,
                resume_step=iter_num if init_from == 'resume' else None)

# -----------------------------------------------------------------------------
# training loop
pbar = tqdm(total=max_iters, initial=iter_num, disable=None, dynamic_ncols=True)
say = tqdm.write
while iter_num < max_iters:
    t0 = time.time()
    lr = get_lr(iter_num, learning_rate, warmup_iters, lr_decay_iters, min_lr, decay_lr)
    for group in optimizer.param_groups:
        group['lr'] = lr

    # 1. rollout. Eval mode throughout, the PPO epochs too: no dropout anywhere (dropout=0.0, and a LoRA
    # checkpoint's lora_dropout is inactive), so old_logp/old_values and the update are one function
    policy.eval()
    batch_prompts = [p for p in prompt_loader.next() for _ in range(n_seq // batch_size)]  # groups adjacent
    prompt_ids, prompt_mask = pad_left(batch_prompts, eos, device)
    n_prompt = prompt_ids.size(1)
    generator.manual_seed(stream_seed(seed, 'rollout', iter_num) if rollout_seeding == 'stream' else seed + iter_num)
    with torch.no_grad(), ctx:
        ids, sample_logp = policy.generate(prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k or None,
                                           top_p=top_p, attention_mask=prompt_mask, eos_token_id=eos,
                                           pad_token_id=eos, generator=generator, return_logprobs=True)
    responses = ids[:, n_prompt:]  # (B, n)
    n = responses.size(1)
    # response mask: 1 up to and including the first EOS (found by position, not by comparing with a pad id)
    has_eos = (responses == eos).any(dim=1)
    first_eos = torch.where(has_eos, (responses == eos).float().argmax(dim=1), torch.full_like(has_eos, n - 1, dtype=torch.long))
    response_mask = (torch.arange(n, device=device)[None, :] <= first_eos[:, None]).float()  # (B, n)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)
    t_rollout = time.time() - t0

    # 2. score the texts (without EOS; the scorer appends it)
    prompt_texts = [tokenizer.decode(p) for p in batch_prompts]
    response_tokens = [r[:int(f) + (0 if e else 1)].tolist() for r, f, e in zip(responses, first_eos, has_eos)]
    response_texts = [tokenizer.decode(t) for t in response_tokens]
    scores = score(prompt_texts, response_texts)  # (B,)
    raw_scores = scores.clone()
    if reward_clip > 0:
        scores = scores.clamp(-reward_clip, reward_clip)
    scores = scores - missing_eos_penalty * (~has_eos).float()

    # 3. log-probs at the sampling temperature, reference log-probs, values
    with torch.no_grad():
        old_logp, entropy, old_values = forward(policy, ids, attention_mask, n_prompt, shared_critic, True)
        if critic_model is not None:
            old_values = critic_forward(ids, attention_mask, n_prompt)
        ref_logp = reference_logprobs(ids, attention_mask, n_prompt)
    if iter_num == start_iter:  # invariant: training log-probs are the sampling log-probs
        # float32: every token to 1e-3. 16-bit: the mean over response tokens to 5e-2 nats, since bf16 rounding
        # differs between cached decoding and the full forward (0.003 mean, 0.03 max on a tiny model on CPU,
        # more over 36 layers), while a sampling temperature 20 % off moves the mean by ~0.24
        diff = (old_logp - sample_logp).abs()
        gap_max, gap_mean = (diff * response_mask).max().item(), masked_mean(diff, response_mask).item()
        if not ((gap_max <= 1e-3) if dtype == 'float32' else (gap_mean <= 5e-2)):  # NaN fails too
            raise UserError(f"training log-probs differ from sampling log-probs by {gap_mean:.2e} on average "
                            f"({gap_max:.2e} at most, {dtype}): the sampling temperature, dropout or weights "
                            f"differ between generation and training")
    kl = kl_estimate(old_logp, ref_logp, 'k1') * response_mask  # (B, n): objective/kl (unbiased; < 0 by noise only)
    kl_seq = kl.sum(1)  # nats per sequence
    if iter_num == start_iter == 0 and (reference is None or ref_dtype == 'float32') and not kl.abs().max() <= 1e-4:  # invariant
        raise UserError(f"KL to the reference is {kl.abs().max().item():.2e} before any update, not 0: "
                        f"the reference is not the initial policy")

    # 4./5. advantages
    if advantage_estimator == 'gae':
        rewards = -kl_coef * kl  # per token
        rewards[torch.arange(n_seq), first_eos] += scores  # the score lands on the last real token
        advantages, returns = gae(rewards, old_values, response_mask, gamma, lam)
    else:
        seq_scores = scores if kl_in_loss else scores - kl_coef * kl.sum(1)
        adv = grpo_advantages(seq_scores, group_size) if advantage_estimator == 'grpo' \
            else rloo_advantages(seq_scores, group_size)
        advantages, returns = adv[:, None] * response_mask, None
    if whiten_advantages and advantage_estimator == 'gae' and response_mask.sum() >= 2:  # (a variance needs 2)
        advantages = masked_whiten(advantages, response_mask)
    t_score = time.time() - t0 - t_rollout

    # 6. PPO epochs over shuffled mini-batches
    stats, n_steps, stop, ratio_max = {}, 0, False, 0.0
    for epoch in range(ppo_epochs):
        perm = torch.randperm(n_seq, device=device)
        for start in range(0, n_seq, mini_batch_size):
            mb = perm[start:start + mini_batch_size]
            logp, _, values = forward(policy, ids[mb], attention_mask[mb], n_prompt, shared_critic)
            if critic_model is not None:
                values = critic_forward(ids[mb], attention_mask[mb], n_prompt)
            pg_loss, pg_stats = ppo_policy_loss(logp, old_logp[mb], advantages[mb], response_mask[mb],
                                                cliprange, cliprange_high, loss_aggregation)
            loss = pg_loss
            if advantage_estimator == 'gae':
                vf_loss, vf_stats = ppo_value_loss(values, old_values[mb], returns[mb], response_mask[mb], cliprange_value)
                loss = loss + vf_coef * vf_loss
                pg_stats = {**pg_stats, **vf_stats, 'vf_loss': vf_loss.detach()}
            elif kl_in_loss:
                loss = loss + kl_coef * masked_mean(kl_estimate(logp, ref_logp[mb], 'k3'), response_mask[mb])
            if not torch.isfinite(loss):  # skip the step, keep the weights
                say(f"iter {iter_num}: non-finite loss, step skipped")
                optimizer.zero_grad(set_to_none=True)
                stats['skipped'] = stats.get('skipped', 0) + 1
                continue
            if epoch == 0 and start == 0 and iter_num == 0:  # invariant: nothing changed yet, so ratio == 1
                # float32: the largest ratio to 1e-4. 16-bit: the mean |log ratio| to 1e-2, since a mini-batch
                # and the whole rollout may take GEMM kernels that round differently on a GPU
                log_ratio = masked_mean((logp - old_logp[mb]).abs(), response_mask[mb]).item()
                if not ((abs(pg_stats['ratio_max'].item() - 1) <= 1e-4) if dtype == 'float32' else (log_ratio <= 1e-2)):
                    raise UserError(f"first PPO ratio is {pg_stats['ratio_max'].item():.6f} at most (mean |log "
                                    f"ratio| {log_ratio:.2e}, {dtype}), not 1: training log-probs differ from "
                                    f"sampling ones (temperature, dropout, stale state)")
            scaler.scale(loss).backward()
            if grad_clip != 0.0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(optimizer)  # float16: skipped (and the scale lowered) when a gradient overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            pg_stats['pg_loss'] = pg_loss.detach()
            for k, v in pg_stats.items():
                stats[k] = stats.get(k, 0.0) + v.item()
            n_steps += 1
            ratio_max = max(ratio_max, pg_stats['ratio_max'].item())
            if max_approx_kl > 0 and pg_stats['approxkl'].item() > max_approx_kl:
                stop = True
                break
        if stop:
            break

    # KL controller, logging, checkpoints
    mean_kl = kl_seq.mean().item()
    iter_num += 1
    pbar.update(1)
    dt = time.time() - t0
    if (iter_num - 1) % log_interval == 0:
        avg = {k: v / n_steps for k, v in stats.items() if k != 'skipped'} if n_steps else {}
        none = 0.0 if n_steps else float('nan')  # no update happened (every step skipped): NaN, not an empty mean's 0
        metrics = {'objective/kl': mean_kl, 'objective/entropy': masked_mean(entropy, response_mask).item(),
                   'objective/scores': raw_scores.mean().item(),
                   'objective/rlhf_reward': (scores - kl_coef * kl.sum(1)).mean().item(),
                   'objective/kl_coef': kl_coef,
                   'policy/approxkl': avg.get('approxkl', none), 'policy/clipfrac': avg.get('clipfrac', none),
                   'loss/policy': avg.get('pg_loss', none), 'loss/value': avg.get('vf_loss', none),
                   'val/clipfrac': avg.get('vf_clipfrac', none), 'val/ratio': avg.get('ratio_mean', none),
                   'val/num_eos_tokens': has_eos.sum().item(), 'response_length': response_mask.sum(1).mean().item(),
                   'skipped_steps': stats.get('skipped', 0), **step_metrics(dt, response_mask.sum().item(), device_type),
                   'time/rollout': t_rollout, 'time/score': t_score, 'time/train': dt - t_rollout - t_score, 'lr': lr,
                   # for the health alarms (alarms.py)
                   'policy/ratio_max': ratio_max if n_steps else none, 'val/num_sequences': n_seq,
                   'objective/distinct_2': distinct_n(response_tokens, 2, max_len=16),
                   'objective/duplicate_frac': duplicate_fraction(response_texts, prompt_texts)}
        if advantage_estimator == 'gae':
            metrics['val/explained_variance'] = explained_variance(old_values, returns, response_mask)
        else:
            metrics['objective/zero_std_groups_frac'] = zero_std_fraction(scores, group_size)
        say(f"iter {iter_num - 1}: score {metrics['objective/scores']:.4f}, kl {mean_kl:.4f}, "
            f"clipfrac {metrics['policy/clipfrac']:.3f}, eos {int(has_eos.sum())}/{n_seq}, "
            f"len {metrics['response_length']:.1f}, {dt:.2f}s")
        logger.log({**metrics, **monitor.check(metrics, iter_num - 1, say, logger=logger)}, iter_num - 1)
    if adaptive_kl:  # after logging: the row shows the kl_coef this rollout's rewards used
        kl_coef = adaptive_kl_coef(kl_coef, mean_kl, target_kl, kl_horizon, n_seq)
    if sample_interval and (iter_num - 1) % sample_interval == 0:  # 2 on stdout, all to samples.csv (+ wandb)
        samples = [{'prompt': p, 'response': r, 'score': s}
                   for p, r, s in zip(prompt_texts, response_texts, raw_scores.tolist())]
        for x in samples[:2]:
            say(f"  [{x['score']:+.3f}] {x['prompt'][-80:]!r} -> {x['response'][:120]!r}")
        logger.log_table('samples', samples, iter_num - 1)
    if iter_num % eval_interval == 0 or iter_num == max_iters:
        save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), checkpoint_state(), policy)
pbar.close()
print(monitor.summary())
logger.finish()
