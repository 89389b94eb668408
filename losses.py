"""
The algorithm math, as pure tensor functions: tensors in, tensors out, no config, no model.
Every formula is in its function's docstring, with shapes; every function has a unit test on
hand-computed values (tests/test_ppo_math.py, test_dpo.py, test_reward.py). Scripts compose these; they never
re-implement them.

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
    in float32. Computed as -cross_entropy (PyTorch's fused log-softmax + pick): one (B, T, V)
    log-softmax is kept for the backward, no further full-vocabulary temporaries (logit[target] -
    logsumexp(logits) builds two in the forward and more in the backward, and ran 1.8x slower on
    CPU). temperature must equal the sampling temperature wherever the log-probs stand for the
    sampling policy (PPO)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction='none')
    return -nll.view(targets.shape)


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
                   (on summed log-probs, as eric-mitchell's and OpenRLHF's; TRL averages per token)
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


# ----------------------------------------------------------------------------------------------
# ---- RLHF: PPO, GRPO, RLOO

def masked_mean(x, mask, dim=None):
    """sum(x * mask) / sum(mask): over every entry (dim=None) -> scalar, or along dim -> x.sum(dim)'s
    shape. x, mask broadcastable (mask float 1/0). A slice with no masked entry gives 0/0 = nan."""
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_var(x, mask, unbiased=True):
    """Variance of x over the entries where mask = 1 -> scalar:
        var = sum(mask (x - mean)^2) / sum(mask),   times n / (n - 1) if unbiased (Bessel), n = sum(mask).
    Fewer than 1 entry (2 if unbiased) is a ValueError (checking costs one device sync)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if n.item() < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} masked entries, got {n.item():g}")
    if unbiased:
        var = var * n / (n - 1)
    return var


def masked_whiten(x, mask, shift_mean=True, eps=1e-8):
    """(x - mean) / sqrt(var + eps) with mean and (unbiased) var over the masked entries only:
    x, mask (B, T) -> (B, T). shift_mean=False adds the mean back (only the scale is normalised:
    TRL does this for rewards, and whitens advantages with shift_mean=True).
    The output is 0 at masked-out positions, whatever x holds there."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al. 2016, eqs. 11-16) over response tokens:
    rewards, values, mask (B, T) -> (advantages, returns), both (B, T), detached.
    mask is 1 on each row's response tokens up to and including its EOS, 0 after (right padding,
    ragged lengths). With m the mask and V_T = m_T = 0,
        delta_t = r_t + gamma V_{t+1} m_{t+1} - V_t
        A_t     = delta_t + gamma lam m_{t+1} A_{t+1}
        returns = A + V,   both then multiplied by m
    so nothing flows back from post-EOS positions, and the value after the last real token is 0
    (the episode ends there; no bootstrapping). Rewards and values at masked positions are ignored.
    Vectorised over B; a reverse loop over T."""
    mask = mask.detach()
    real = mask > 0
    rewards = torch.where(real, rewards.detach(), 0.0)  # (B, T); where, not *: a nan after EOS stays out
    values = torch.where(real, values.detach(), 0.0)    # (B, T); detached: advantages are targets
    B, T = rewards.shape
    zeros = rewards.new_zeros(B)
    next_value, next_adv, next_mask = zeros, zeros, zeros  # V_{t+1}, A_{t+1}, m_{t+1}; 0 past the end
    advantages = []
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]  # TD residual (eq. 12)
        next_adv = delta + gamma * lam * next_mask * next_adv                  # eq. 16, truncated at the mask
        next_value, next_mask = values[:, t], mask[:, t]
        advantages.append(next_adv)
    advantages = torch.stack(advantages[::-1], dim=1) * mask  # (B, T)
    returns = (advantages + values) * mask                    # (B, T): the value head's targets
    return advantages, returns


def _kl_k1(logr):
    return -logr                    # k1: unbiased, high variance, can be negative per sample


def _kl_k2(logr):
    return 0.5 * logr ** 2          # k2: biased, low variance, >= 0


def _kl_k3(logr):
    return torch.expm1(logr) - logr  # k3 = (r - 1) - log r: unbiased and >= 0; expm1 keeps r ~ 1 precise


KL_ESTIMATORS = {'k1': _kl_k1, 'k2': _kl_k2, 'k3': _kl_k3}


def kl_estimate(logp, ref_logp, kind='k1'):
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020,
    "Approximating KL divergence", http://joschu.net/blog/kl-approx.html): logp, ref_logp (B, T) of
    the sampled tokens -> (B, T). With log r = ref_logp - logp,
        'k1': logp - ref_logp                       = -log r
        'k2': 1/2 (logp - ref_logp)^2               = 1/2 (log r)^2
        'k3': exp(ref_logp - logp) - (ref_logp - logp) - 1 = r - 1 - log r
    k1 and k3 are unbiased for KL(pi || pi_ref); k2 is biased. Unknown kind is a ValueError."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose among {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](ref_logp - logp)


def _aggregate_token(x, mask):
    return masked_mean(x, mask)                  # every token of the batch weighs the same (DAPO, Yu et al. 2025, §3.3)


def _aggregate_sequence(x, mask):
    return masked_mean(x, mask, dim=-1).mean()   # every sequence weighs the same (GRPO, Shao et al. 2024, eq. 3)


PG_AGGREGATIONS = {'token': _aggregate_token, 'sequence': _aggregate_sequence}


def ppo_policy_loss(logp, old_logp, advantages, mask, cliprange_low=0.2, cliprange_high=None,
                    aggregation='token'):
    """PPO's clipped surrogate as a loss to minimise (Schulman et al. 2017, eq. 7):
    logp, old_logp, advantages, mask (B, T) -> (loss scalar, stats dict of detached scalars).
        ratio = exp(logp - old_logp)
        pg    = max(-A ratio, -A clip(ratio, 1 - cliprange_low, 1 + cliprange_high))
    cliprange_high=None means cliprange_low; a larger one is DAPO's clip-higher (Yu et al. 2025, §3.1).
    Only logp carries gradient (old_logp and advantages are detached here); a token whose clipped
    term is the active one gets zero gradient.
    aggregation: 'token' = masked mean over all tokens of the batch; 'sequence' = each row's masked
    mean, then the mean over rows (every row needs at least one masked token). Unknown: ValueError.
    stats: 'clipfrac' (fraction of masked tokens where the clipped term is active, pg_clipped >
    pg_unclipped), 'approxkl' (masked mean of 1/2 (logp - old_logp)^2; TRL's mean also counts
    padding as 0, so it reads lower), 'ratio_mean' and 'ratio_max' (over masked tokens)."""
    if aggregation not in PG_AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose among {', '.join(PG_AGGREGATIONS)}")
    if cliprange_high is None:
        cliprange_high = cliprange_low
    advantages = advantages.detach()
    log_ratio = logp - old_logp.detach()                                                  # (B, T)
    ratio = torch.exp(log_ratio)                                                          # (B, T)
    pg_unclipped = -advantages * ratio                                                    # (B, T)
    pg_clipped = -advantages * torch.clamp(ratio, 1 - cliprange_low, 1 + cliprange_high)  # (B, T)
    pg = torch.maximum(pg_unclipped, pg_clipped)  # eq. 7: min of the objectives = max of the losses
    loss = PG_AGGREGATIONS[aggregation](pg, mask)
    with torch.no_grad():
        stats = {
            'clipfrac': masked_mean((pg_clipped > pg_unclipped).float(), mask),
            'approxkl': masked_mean(0.5 * log_ratio ** 2, mask),
            'ratio_mean': masked_mean(ratio, mask),
            'ratio_max': torch.where(mask > 0, ratio, float('-inf')).max(),
        }
    return loss, stats


def ppo_value_loss(values, old_values, returns, mask, cliprange_value=0.2):
    """Clipped value loss (OpenAI baselines ppo2, as TRL; not in the PPO paper):
    values, old_values, returns, mask (B, T) -> (loss scalar, stats dict of detached scalars).
        v_clipped = old_values + clamp(values - old_values, -cliprange_value, cliprange_value)
        loss      = 1/2 masked_mean(max((values - returns)^2, (v_clipped - returns)^2))
    old_values and returns are detached here. vf_coef is not applied: the caller scales the loss.
    stats: 'vf_clipfrac' (fraction of masked tokens where the clipped error is the larger)."""
    old_values, returns = old_values.detach(), returns.detach()
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)  # (B, T)
    vf_unclipped = (values - returns) ** 2     # (B, T)
    vf_clipped = (v_clipped - returns) ** 2    # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(vf_unclipped, vf_clipped), mask)
    with torch.no_grad():
        stats = {'vf_clipfrac': masked_mean((vf_clipped > vf_unclipped).float(), mask)}
    return loss, stats


def _groups(scores, group_size):
    """scores (N,) -> (N / group_size, group_size), checking that the groups tile N."""
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2, got {group_size}")
    if scores.dim() != 1 or scores.numel() % group_size != 0:
        raise ValueError(f"expected scores of shape (N,) with N divisible by group_size={group_size}, "
                         f"got shape {tuple(scores.shape)}")
    return scores.view(-1, group_size)


def grpo_advantages(scores, group_size, eps=1e-4):
    """GRPO's outcome advantages (Shao et al. 2024, DeepSeekMath §4.1.2; as TRL's GRPOTrainer):
    scores (N,), laid out as consecutive groups of group_size responses to one prompt -> (N,).
        A_i = (s_i - mean(group)) / (std(group) + eps),   std unbiased (torch's default)
    A group of equal scores gets advantages 0. group_size < 2 or N % group_size != 0: ValueError."""
    groups = _groups(scores, group_size)                 # (N / G, G)
    mean = groups.mean(dim=1, keepdim=True)              # (N / G, 1)
    std = groups.std(dim=1, keepdim=True)                # (N / G, 1), Bessel-corrected
    return ((groups - mean) / (std + eps)).view(-1)


def rloo_advantages(scores, group_size):
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, eq. 6): scores (N,), laid out as
    consecutive groups of group_size responses to one prompt -> (N,).
        A_i = s_i - 1/(G - 1) sum_{j != i} s_j       (= G/(G - 1) (s_i - mean(group)))
    group_size < 2 or N % group_size != 0: ValueError."""
    groups = _groups(scores, group_size)                                  # (N / G, G)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # mean of the others, eq. 6
    return (groups - baseline).view(-1)


def entropy_from_logits(logits):
    """Entropy of softmax(logits) at every position, in float32: (B, T, V) -> (B, T).
        H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v
    which never takes the log of an underflowed probability. Logits of -inf (filtered tokens)
    contribute 0, with finite gradients."""
    z = logits.float()
    p = torch.softmax(z, dim=-1)
    z = z.masked_fill(z == float('-inf'), 0.0)  # p = 0 there; avoids 0 * -inf = nan
    return torch.logsumexp(logits.float(), dim=-1) - (p * z).sum(-1)


def adaptive_kl_coef(kl_coef, current_kl, target_kl, horizon, n_steps):
    """Ziegler et al. 2019's adaptive KL controller (section 2.2): move beta so the KL tracks the target.
        e = clip(current_kl / target_kl - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon)
    current_kl: the rollout's mean KL per sequence; n_steps: sequences in the rollout. Returns the new beta."""
    error = min(max(current_kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
