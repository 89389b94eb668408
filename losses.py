"""
The algorithm math, as pure tensor functions: tensors in, tensors out, no config, no model.
Every formula is in its function's docstring, with shapes; every function has a unit test on
hand-computed values (tests/test_losses.py). Scripts compose these; they never re-implement them.

Conventions: B = batch, T = sequence length, V = vocabulary. `mask` tensors are 1.0 on the
positions that count and 0.0 elsewhere (prompt, padding); they come from lengths or attention
masks, never from comparing token ids with a pad id (GPT-2's pad is often its EOS).
"""

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# log-probabilities: the one path SFT, reward, DPO and PPO share

def token_logprobs(logits, targets, temperature=1.0):
    """log softmax(logits / temperature)[targets] for every position: (B, T, V), (B, T) -> (B, T),
    in float32. Computed as logit[target] - logsumexp(logits), which never materialises the
    (B, T, V) log-softmax. temperature must equal the sampling temperature wherever the
    log-probs stand for the sampling policy (PPO)."""
    logits = logits.float() / temperature
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logprobs(logits, ids, mask, temperature=1.0):
    """Sum of log p(ids[:, t] | ids[:, :t]) over the positions t where mask[:, t] = 1 (the response
    and its EOS): logits (B, T, V) from model(ids), ids (B, T), mask (B, T) -> (B,).
    logits[:, t] predicts ids[:, t + 1], hence the shift: position 0 is never scored."""
    logps = token_logprobs(logits[:, :-1], ids[:, 1:], temperature)  # (B, T-1): logps[:, t] is for ids[:, t+1]
    return (logps * mask[:, 1:]).sum(-1)


def gather_last(x, attention_mask):
    """x (B, T) at each row's last real token (the last 1 of attention_mask (B, T)), for right-
    and left-padded rows alike: (B,). The reward model's score is its value head here."""
    T = attention_mask.size(1)
    last = T - 1 - attention_mask.flip(-1).float().argmax(-1)  # index of the last 1 in each row
    return x.gather(1, last.unsqueeze(1)).squeeze(1)


# ----------------------------------------------------------------------------------------------
# reward modelling

def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None):
    """Pairwise reward-model loss (Bradley-Terry; Ouyang et al. 2022, eq. 1; Llama 2's margin):
        loss = -log sigmoid(r_chosen - r_rejected - margin)
    chosen_rewards, rejected_rewards, margin: (B,) -> per-pair losses (B,). margin=None is 0."""
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)
