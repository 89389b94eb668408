"""RLHF math (losses.py, section 'RLHF: PPO, GRPO, RLOO'): masked statistics, GAE against a slow
per-row, per-token loop, the KL estimators against Monte Carlo, PPO's clipped losses, GRPO/RLOO
advantages and entropy, each on hand-computed values. Pure tensors on CPU; runs in about a second."""
import math

import pytest
import torch

from losses import (entropy_from_logits, gae, grpo_advantages, kl_estimate, masked_mean, masked_var,
                    masked_whiten, ppo_policy_loss, ppo_value_loss, rloo_advantages)


def close(actual, expected, atol=1e-6):
    """assert_close against a Python number or list, in float32, with a small absolute tolerance."""
    expected = torch.as_tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(actual.float(), expected, atol=atol, rtol=0)


def lengths_to_mask(lengths, T):
    """(B,) lengths -> (B, T) float mask, 1 on the first lengths[b] positions of row b."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()


# ----------------------------------------------------------------------------------------------
# masked_mean, masked_var, masked_whiten

# the masked entries are 1, 2, 4; the 3, 5, 6 are out
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_masked_mean_hand_computed():
    close(masked_mean(X, M), 7 / 3)                 # (1 + 2 + 4) / 3; unmasked mean would be 3.5
    close(masked_mean(X, M, dim=-1), [1.5, 4.0])    # rows: (1 + 2) / 2, 4 / 1
    close(masked_mean(X[:, :2], M[:, :2], dim=0), [2.5, 2.0])  # columns: (1 + 4) / 2, 2 / 1


def test_masked_var_hand_computed():
    # mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 14/3; biased 14/9, unbiased (n - 1 = 2) 7/3
    close(masked_var(X, M), 7 / 3)
    close(masked_var(X, M, unbiased=False), 14 / 9)
    with pytest.raises(ValueError, match='at least 2'):
        masked_var(X, torch.tensor([[1.0, 0, 0], [0, 0, 0]]))  # one entry: Bessel divides by 0


def test_masked_whiten_hand_computed():
    # (x - 7/3) / sqrt(7/3): 1 -> -0.872872, 2 -> -0.218218, 4 -> 1.091089; masked-out positions 0
    close(masked_whiten(X, M), [[-0.8728715609, -0.2182178902, 0.0], [1.0910894512, 0.0, 0.0]])
    # shift_mean=False adds 7/3 back on the masked entries only
    close(masked_whiten(X, M, shift_mean=False),
          [[-0.8728715609 + 7 / 3, -0.2182178902 + 7 / 3, 0.0], [1.0910894512 + 7 / 3, 0.0, 0.0]])


def test_masked_whiten_ignores_masked_positions():
    torch.manual_seed(0)
    x, mask = torch.randn(4, 7), lengths_to_mask([7, 3, 1, 5], 7)
    garbage = torch.where(mask > 0, x, 1e3 * torch.randn(4, 7))  # same masked entries, wild others
    for shift_mean in (True, False):
        torch.testing.assert_close(masked_whiten(garbage, mask, shift_mean), masked_whiten(x, mask, shift_mean))
    torch.testing.assert_close(masked_mean(garbage, mask), masked_mean(x, mask))
    torch.testing.assert_close(masked_var(garbage, mask), masked_var(x, mask))


def test_masked_whiten_gives_mean_0_var_1_on_masked_entries():
    torch.manual_seed(1)
    x, mask = 3.0 + 5.0 * torch.randn(4, 7), lengths_to_mask([7, 3, 1, 5], 7)
    w = masked_whiten(x, mask)
    close(masked_mean(w, mask), 0.0, atol=1e-5)
    close(masked_var(w, mask), 1.0, atol=1e-5)
    assert (w[mask == 0] == 0).all()


# ----------------------------------------------------------------------------------------------
# gae

def slow_gae(rewards, values, lengths, gamma, lam):
    """GAE row by row, token by token, from each row's length: the episode is rewards[b, :L],
    the value after its last token is 0, and everything past L is 0."""
    B, T = rewards.shape
    advantages = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        L = lengths[b]
        next_adv = 0.0
        for t in reversed(range(L)):
            next_value = values[b, t + 1].item() if t + 1 < L else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            next_adv = delta + gamma * lam * next_adv
            advantages[b, t] = next_adv
    returns = advantages.clone()
    for b in range(B):
        returns[b, :lengths[b]] += values[b, :lengths[b]].double()
    return advantages, returns


@pytest.mark.parametrize('gamma, lam', [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_slow_loop_on_ragged_rows(gamma, lam):
    torch.manual_seed(2)
    lengths, T = [6, 1, 4, 3, 6, 2], 6  # includes a length-1 row and full rows
    rewards, values = torch.randn(len(lengths), T), torch.randn(len(lengths), T)
    mask = lengths_to_mask(lengths, T)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected_advantages, expected_returns = slow_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(advantages.double(), expected_advantages, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(returns.double(), expected_returns, atol=1e-5, rtol=1e-5)


def test_gae_hand_computed():
    # gamma = lam = 1: A_t = sum_{k >= t} r_k - V_t (the values telescope away)
    # row 0, all 3 real: r = 1, 2, 3; V = 0.5, 1, 1.5 -> A = 6 - 0.5, 5 - 1, 3 - 1.5 = 5.5, 4, 1.5
    #                                                  returns = A + V = 6, 5, 3
    # row 1, 2 real then padding: r = 1, 2; V = 0.5, 1 -> A = 3 - 0.5, 2 - 1 = 2.5, 1; returns 3, 2
    #   (the 99 and 77 after EOS must not enter: bootstrapping from V = 77 would give A_1 = 78)
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 99.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 77.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(advantages, [[5.5, 4.0, 1.5], [2.5, 1.0, 0.0]])
    close(returns, [[6.0, 5.0, 3.0], [3.0, 2.0, 0.0]])
    # gamma = 1, lam = 0.5, row 0: delta = r + V_next - V = 1.5, 2.5, 1.5
    #   A_2 = 1.5, A_1 = 2.5 + 0.5 * 1.5 = 3.25, A_0 = 1.5 + 0.5 * 3.25 = 3.125
    advantages, _ = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    close(advantages[0], [3.125, 3.25, 1.5])


def test_gae_ignores_rewards_and_values_after_eos():
    torch.manual_seed(3)
    lengths, T = [5, 2, 1, 4], 5
    mask = lengths_to_mask(lengths, T)
    rewards, values = torch.randn(4, T), torch.randn(4, T)
    noise = torch.where(mask > 0, 0.0, 1e4 * torch.randn(4, T))
    nan_after = torch.where(mask > 0, 0.0, float('nan'))
    expected = gae(rewards, values, mask, 0.9, 0.8)
    for other_rewards, other_values in [(rewards + noise, values), (rewards, values - noise),
                                        (rewards + nan_after, values + nan_after)]:
        for got, want in zip(gae(other_rewards, other_values, mask, 0.9, 0.8), expected):
            torch.testing.assert_close(got, want)


def test_gae_outputs_carry_no_gradient():
    values = torch.randn(2, 3, requires_grad=True)
    advantages, returns = gae(torch.randn(2, 3), values, torch.ones(2, 3))
    assert not advantages.requires_grad and not returns.requires_grad


# ----------------------------------------------------------------------------------------------
# kl_estimate

def test_kl_estimators_hand_computed():
    # token 0: pi = 0.5, pi_ref = 0.25 -> logp - ref_logp = log 2 = 0.693147
    #   k1 = 0.693147; k2 = 0.5 * 0.480453 = 0.240227; k3 = 1/2 - (-log 2) - 1 = 0.193147
    # token 1: pi = 0.25, pi_ref = 0.5 -> logp - ref_logp = -log 2
    #   k1 = -0.693147; k2 = 0.240227; k3 = 2 - log 2 - 1 = 0.306853
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref_logp = torch.log(torch.tensor([[0.25, 0.5]]))
    close(kl_estimate(logp, ref_logp, 'k1'), [[0.6931471806, -0.6931471806]])
    close(kl_estimate(logp, ref_logp), [[0.6931471806, -0.6931471806]])  # k1 is the default
    close(kl_estimate(logp, ref_logp, 'k2'), [[0.2402265070, 0.2402265070]])
    close(kl_estimate(logp, ref_logp, 'k3'), [[0.1931471806, 0.3068528194]])


def test_kl_k3_nonnegative_and_all_zero_when_equal():
    torch.manual_seed(4)
    logp, ref_logp = 3 * torch.randn(8, 16), 3 * torch.randn(8, 16)
    assert (kl_estimate(logp, ref_logp, 'k3') >= 0).all()
    assert (kl_estimate(logp, ref_logp, 'k2') >= 0).all()
    for kind in ('k1', 'k2', 'k3'):
        assert (kl_estimate(logp, logp, kind) == 0).all()


def test_kl_unknown_kind_names_the_valid_ones():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), 'k4')


def test_kl_k1_and_k3_are_unbiased_for_kl_pi_ref_by_monte_carlo():
    # pi = (0.6, 0.3, 0.1), pi_ref = (0.2, 0.3, 0.5):
    #   KL(pi || pi_ref) = 0.6 log 3 + 0.1 log 0.2 = 0.498224; the reverse KL(pi_ref || pi) = 0.584996
    #   k2 is biased: E[k2] = 0.5 (0.6 log^2 3 + 0.1 log^2 5) = 0.491599, close here by chance; not tested
    pi, pi_ref = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.3, 0.5])
    true_kl = (pi * (pi / pi_ref).log()).sum().item()
    assert abs(true_kl - 0.4982235820) < 1e-6
    g = torch.Generator().manual_seed(0)
    samples = torch.multinomial(pi, 200_000, replacement=True, generator=g)  # tokens from pi
    logp, ref_logp = pi.log()[samples], pi_ref.log()[samples]
    # standard errors: k1 ~ 0.86 / sqrt(2e5) = 0.002, k3 ~ 0.66 / sqrt(2e5) = 0.0015; tolerance 0.01
    assert abs(kl_estimate(logp, ref_logp, 'k1').mean().item() - true_kl) < 0.01
    assert abs(kl_estimate(logp, ref_logp, 'k3').mean().item() - true_kl) < 0.01


# ----------------------------------------------------------------------------------------------
# ppo_policy_loss

def test_ppo_policy_loss_at_ratio_one_is_minus_mean_advantage():
    torch.manual_seed(5)
    mask = lengths_to_mask([5, 2, 4], 5)
    logp, advantages = torch.randn(3, 5), torch.randn(3, 5)
    loss, stats = ppo_policy_loss(logp, logp.clone(), advantages, mask)
    close(loss, -masked_mean(advantages, mask))
    close(stats['clipfrac'], 0.0)
    close(stats['approxkl'], 0.0)
    close(stats['ratio_mean'], 1.0)
    close(stats['ratio_max'], 1.0)


# ratios 1.5, 0.5, 1.5, 0.5 with advantages +1, +1, -1, -1, cliprange 0.2 -> clip to [0.8, 1.2]
#   t0: A > 0, ratio 1.5: max(-1.5, -1.2)  = -1.2  clipped term active (no gradient)
#   t1: A > 0, ratio 0.5: max(-0.5, -0.8)  = -0.5  unclipped: PPO only caps improvement
#   t2: A < 0, ratio 1.5: max( 1.5,  1.2)  =  1.5  unclipped: never caps a worsening
#   t3: A < 0, ratio 0.5: max( 0.5,  0.8)  =  0.8  clipped term active (no gradient)
# loss = (-1.2 - 0.5 + 1.5 + 0.8) / 4 = 0.15; clipfrac 2/4
# approxkl = 0.5 * mean(log^2 1.5, log^2 0.5, ...) = 0.5 * (0.164402 + 0.480453) / 2 = 0.161214
RATIOS = torch.tensor([[1.5, 0.5, 1.5, 0.5]])
ADVANTAGES = torch.tensor([[1.0, 1.0, -1.0, -1.0]])


def test_ppo_policy_loss_hand_computed_clipping():
    old_logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    logp = (old_logp + RATIOS.log()).requires_grad_()
    loss, stats = ppo_policy_loss(logp, old_logp, ADVANTAGES, torch.ones(1, 4), cliprange_low=0.2)
    close(loss, 0.15)
    close(stats['clipfrac'], 0.5)
    close(stats['approxkl'], 0.1612137420)
    close(stats['ratio_mean'], 1.0)
    close(stats['ratio_max'], 1.5)
    assert all(not v.requires_grad for v in stats.values())
    loss.backward()
    # d pg / d logp = -A ratio where unclipped, 0 where clipped; / 4 tokens: 0, -0.125, 0.375, 0
    close(logp.grad, [[0.0, -0.125, 0.375, 0.0]])


def test_ppo_policy_loss_asymmetric_clip_higher():
    # low = 0.2, high = 0.28 -> clip to [0.8, 1.28]
    #   ratio 1.5,  A = +1: max(-1.5,  -1.28) = -1.28 clipped   (symmetric 0.2: -1.2)
    #   ratio 1.25, A = +1: max(-1.25, -1.25) = -1.25 inside    (symmetric 0.2: -1.2, clipped)
    #   ratio 0.5,  A = -1: max( 0.5,   0.8)  =  0.8  clipped
    #   ratio 0.75, A = -1: max( 0.75,  0.8)  =  0.8  clipped
    # loss = (-1.28 - 1.25 + 0.8 + 0.8) / 4 = -0.2325, clipfrac 3/4; symmetric: -0.2, clipfrac 1
    ratios = torch.tensor([[1.5, 1.25, 0.5, 0.75]])
    old_logp = torch.zeros(1, 4)
    logp = (old_logp + ratios.log()).requires_grad_()
    loss, stats = ppo_policy_loss(logp, old_logp, ADVANTAGES, torch.ones(1, 4),
                                  cliprange_low=0.2, cliprange_high=0.28)
    close(loss, -0.2325)
    close(stats['clipfrac'], 0.75)
    loss.backward()
    close(logp.grad, [[0.0, -1.25 / 4, 0.0, 0.0]])  # only the ratio-1.25 token moves
    loss_symmetric, stats_symmetric = ppo_policy_loss(logp, old_logp, ADVANTAGES, torch.ones(1, 4), 0.2)
    close(loss_symmetric, -0.2)
    close(stats_symmetric['clipfrac'], 1.0)


def test_ppo_policy_loss_token_vs_sequence_aggregation():
    # ratio 1, so pg = -A; row 0 has 3 tokens, row 1 has 1 (the 100s are padding)
    #   'token':    -(1 + 2 + 3 + 6) / 4          = -3
    #   'sequence': mean(-(1 + 2 + 3) / 3, -6 / 1) = mean(-2, -6) = -4
    advantages = torch.tensor([[1.0, 2.0, 3.0], [6.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    logp = torch.zeros(2, 3)
    close(ppo_policy_loss(logp, logp, advantages, mask)[0], -3.0)
    close(ppo_policy_loss(logp, logp, advantages, mask, aggregation='token')[0], -3.0)
    close(ppo_policy_loss(logp, logp, advantages, mask, aggregation='sequence')[0], -4.0)
    with pytest.raises(ValueError, match='token, sequence'):
        ppo_policy_loss(logp, logp, advantages, mask, aggregation='batch')


def test_ppo_policy_loss_stats_ignore_masked_tokens():
    # a ratio of e^5 = 148.4 and clipping at the padded position must not show in the stats
    old_logp = torch.zeros(1, 3)
    logp = torch.tensor([[0.0, math.log(1.1), 5.0]])
    loss, stats = ppo_policy_loss(logp, old_logp, torch.ones(1, 3), torch.tensor([[1.0, 1.0, 0.0]]))
    close(loss, -(1.0 + 1.1) / 2)
    close(stats['ratio_max'], 1.1)
    close(stats['ratio_mean'], 1.05)
    close(stats['clipfrac'], 0.0)


def test_ppo_policy_loss_gradient_only_through_logp():
    logp = torch.zeros(1, 2, requires_grad=True)
    old_logp = torch.zeros(1, 2, requires_grad=True)
    advantages = torch.ones(1, 2, requires_grad=True)
    ppo_policy_loss(logp, old_logp, advantages, torch.ones(1, 2))[0].backward()
    assert old_logp.grad is None and advantages.grad is None
    close(logp.grad, [[-0.5, -0.5]])


# ----------------------------------------------------------------------------------------------
# ppo_value_loss

def test_ppo_value_loss_hand_computed():
    # cliprange 0.2:
    #   t0: old 1, v 1.5, R 2:    v_clip 1.2;  (1.5-2)^2 = 0.25 < (1.2-2)^2 = 0.64 -> 0.64 clipped active
    #   t1: old 1, v 1.5, R 1:    v_clip 1.2;  0.25 > 0.04                    -> 0.25 clipping inactive
    #   t2: old 1, v 1.1, R 2:    v_clip 1.1;  0.81 = 0.81                    -> 0.81 inside the range
    #   t3: old 0, v -1,  R 0.5:  v_clip -0.2; 2.25 > 0.49                    -> 2.25 clipping inactive
    #   t4: padding (its 1000 must not count)
    # loss = 1/2 (0.64 + 0.25 + 0.81 + 2.25) / 4 = 0.49375; vf_clipfrac 1/4
    values = torch.tensor([[1.5, 1.5, 1.1, -1.0, 1000.0]], requires_grad=True)
    old_values = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 2.0, 0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, stats = ppo_value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    close(loss, 0.49375)
    close(stats['vf_clipfrac'], 0.25)
    loss.backward()
    # d/dv of 1/2 (v - R)^2 / 4 = (v - R) / 4 where unclipped; 0 at t0 (clipped); 0 at padding
    # t2 ties (both branches equal, both differentiable): (1.1 - 2) / 4 = -0.225
    close(values.grad, [[0.0, 0.125, -0.225, -0.375, 0.0]])
    # a wide clip range turns clipping off: 1/2 (0.25 + 0.25 + 0.81 + 2.25) / 4 = 0.445
    close(ppo_value_loss(values, old_values, returns, mask, cliprange_value=10.0)[0], 0.445)


# ----------------------------------------------------------------------------------------------
# grpo_advantages, rloo_advantages

# two prompts, three responses each
SCORES = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0])


def test_grpo_advantages_hand_computed():
    # group 0: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> (-1, 0, 1) / (1 + 1e-4)
    # group 1: mean 1, unbiased std sqrt((1 + 1 + 4) / 2) = sqrt 3 = 1.732051
    #          -> (-1, -1, 2) / (1.732051 + 1e-4) = -0.577317, -0.577317, 1.154634
    #   (a biased std, sqrt 2 = 1.414214, would give -0.707057, ...)
    close(grpo_advantages(SCORES, 3),
          [-0.9999000100, 0.0, 0.9999000100, -0.5773169378, -0.5773169378, 1.1546338756])


def test_rloo_advantages_hand_computed():
    # group 0: 1 - (2 + 3) / 2 = -1.5;  2 - (1 + 3) / 2 = 0;  3 - (1 + 2) / 2 = 1.5
    # group 1: 0 - (0 + 3) / 2 = -1.5;  -1.5;                 3 - (0 + 0) / 2 = 3
    close(rloo_advantages(SCORES, 3), [-1.5, 0.0, 1.5, -1.5, -1.5, 3.0])


def test_equal_scores_give_zero_advantages():
    scores = torch.tensor([2.0, 2.0, 2.0, 1.0, 5.0, 3.0])
    grpo = grpo_advantages(scores, 3)
    assert torch.isfinite(grpo).all()
    close(grpo[:3], [0.0, 0.0, 0.0])                 # 0 / (0 + eps), not 0 / 0
    close(rloo_advantages(scores, 3)[:3], [0.0, 0.0, 0.0])


def test_group_advantages_reject_bad_group_sizes():
    with pytest.raises(ValueError, match='divisible'):
        grpo_advantages(torch.zeros(7), 3)
    with pytest.raises(ValueError, match='divisible'):
        rloo_advantages(torch.zeros(7), 3)
    with pytest.raises(ValueError, match='at least 2'):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match='at least 2'):
        grpo_advantages(torch.zeros(4), 1)  # the unbiased std of one score is nan


# ----------------------------------------------------------------------------------------------
# entropy_from_logits

def test_entropy_uniform_is_log_vocab():
    close(entropy_from_logits(torch.full((2, 3, 50), 7.0)), torch.full((2, 3), math.log(50)).tolist())


def test_entropy_one_hot_is_zero():
    logits = torch.zeros(1, 2, 50)
    logits[..., 0] = 100.0  # every other token has probability e^-100
    close(entropy_from_logits(logits), [[0.0, 0.0]])


def test_entropy_matches_softmax_times_log_softmax():
    torch.manual_seed(6)
    logits = 4 * torch.randn(3, 5, 64)
    expected = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    out = entropy_from_logits(logits.bfloat16())
    assert out.dtype == torch.float32 and out.shape == (3, 5)


def test_entropy_of_filtered_logits_is_finite():
    # two tokens left after top-k filtering: log 2, and finite gradients
    logits = torch.tensor([[[0.0, 0.0, float('-inf'), float('-inf')]]], requires_grad=True)
    entropy = entropy_from_logits(logits)
    close(entropy, [[math.log(2)]])
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_adaptive_kl_coef_hand_values():
    """Ziegler et al.'s controller: e = clip(KL / target - 1, -0.2, 0.2), beta * (1 + e * n / horizon). A KL
    twice the target is clipped to +0.2 (beta up), half the target to -0.2 (beta down), 10 % over moves by
    exactly 0.1 (the only test before checked that beta changed at all)."""
    from losses import adaptive_kl_coef
    assert adaptive_kl_coef(0.1, 12.0, 6.0, 10000, 512) == pytest.approx(0.1 * (1 + 0.2 * 512 / 10000))  # 0.101024
    assert adaptive_kl_coef(0.1, 3.0, 6.0, 10000, 512) == pytest.approx(0.1 * (1 - 0.2 * 512 / 10000))   # 0.098976
    assert adaptive_kl_coef(0.1, 6.6, 6.0, 1000, 100) == pytest.approx(0.1 * (1 + 0.1 * 100 / 1000))     # 0.101


def test_ppo_policy_loss_stats_are_means_over_real_tokens():
    """approxkl, like the loss, averages over the masked (real) tokens only: padding after the response
    (log-ratio 0 there) must not dilute it. The hand case above plus two padded tokens: the same 0.161214."""
    old_logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.0, -1.0]])
    logp = old_logp + torch.cat([RATIOS.log(), torch.zeros(1, 2)], 1)
    loss, stats = ppo_policy_loss(logp, old_logp, torch.cat([ADVANTAGES, torch.zeros(1, 2)], 1),
                                  torch.tensor([[1.0, 1, 1, 1, 0, 0]]), cliprange_low=0.2)
    close(loss, 0.15)
    close(stats['approxkl'], 0.1612137420)
