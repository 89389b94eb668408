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


# ----------------------------------------------------------------------------------------------
# direct preference optimisation and its variants

def _sigmoid_loss(h, beta, label_smoothing):
    # DPO (Rafailov et al. 2023, eq. 7); label_smoothing > 0: conservative DPO (Mitchell 2023)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def _ipo_loss(h, beta, label_smoothing):
    return (h - 1 / (2 * beta)) ** 2  # IPO (Azar et al. 2023, eq. 17): h itself, not beta * h


def _hinge_loss(h, beta, label_smoothing):
    return torch.relu(1 - beta * h)  # SLiC-HF's calibration hinge (Zhao et al. 2023) on h


DPO_LOSSES = {'sigmoid': _sigmoid_loss, 'ipo': _ipo_loss, 'hinge': _hinge_loss}


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta, loss_type='sigmoid', label_smoothing=0.0):
    """Per-pair preference losses from summed response log-probs, all (B,) -> three (B,) tensors:
    (losses, chosen_rewards, rejected_rewards). With y_w chosen, y_l rejected, eps = label_smoothing,
        h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
        'sigmoid': -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   DPO, Rafailov et al. 2023 eq. 7;
                   eps > 0 is conservative DPO (cDPO, Mitchell 2023): labels flipped with probability eps
        'ipo':     (h - 1 / (2 beta))^2                                        IPO, Azar et al. 2023 eq. 17
        'hinge':   relu(1 - beta h)                                            SLiC-HF (Zhao et al. 2023)
    Rewards are DPO's implicit rewards beta (log pi(y|x) - log pi_ref(y|x)) (eq. 5, without the
    beta log Z(x) that cancels in a pair), detached: diagnostics, never trained on.
    An unknown loss_type, or label_smoothing outside [0, 0.5) or with a loss other than 'sigmoid',
    is a ValueError."""
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose among {', '.join(DPO_LOSSES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing > 0 and loss_type != 'sigmoid':
        raise ValueError(f"label_smoothing applies to loss_type='sigmoid' only, not {loss_type!r}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps        # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    losses = DPO_LOSSES[loss_type](chosen_logratios - rejected_logratios, beta, label_smoothing)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def lm_loss(logits, ids, mask):
    """Mean negative log-likelihood per counted token: -sum_t mask[t] log p(ids[t] | ids[<t]) / sum_t mask[t],
    over the whole batch; logits (B, T, V) from model(ids), ids (B, T), mask (B, T) -> scalar.
    The same number as model(ids[:, :-1], targets)'s cross-entropy with uncounted targets ignored."""
    return -sequence_logprobs(logits, ids, mask).sum() / mask[:, 1:].sum()
