"""
Training health: alarms over the metrics a run already logs, so that a PPO/GRPO/RLOO, DPO or
reward-model run says *why* it is going wrong (and which config key to change) while it runs,
instead of after 500 iterations of a flat curve.

    from alarms import HealthMonitor
    monitor = HealthMonitor('ppo', on_alarm='warn', kl_ceiling=20.0)   # 'grpo' | 'rloo' | 'dpo' | 'reward'
    for alarm in monitor.update(metrics, step=iter_num):               # a dict of floats per iteration
        print(f"alarm: {alarm}")
    print(monitor.summary())                                           # at the end of the run

Each alarm is a pure function `rule(history, th) -> message or None` over the list of metric
dicts seen so far (oldest first) and the thresholds `th` (DEFAULTS, overridden by keyword
arguments of HealthMonitor). A rule only reads the entries that hold its metrics, so train and
eval dicts may be passed to `update` separately and a missing metric silences its rule. A message
is one line: what was seen, the likely causes, and the config keys to change.

The monitor reports an alarm once, when it turns on; while the rule keeps firing it stays on
(counted, not repeated); when the rule stops firing it turns off and may fire again later.
Severities: 'warn' (on_alarm='stop' raises TrainingHealthError), 'info' (common and often
harmless: reported, never stops), 'fatal' (non-finite metrics: always stops, the run is lost).

Metrics this module defines (the scripts compute them with the helpers below):
    'val/num_sequences'              responses in the rollout (or HealthMonitor(num_sequences=...))
    'policy/ratio_max'               largest token importance ratio over the iteration's optimiser steps
    'objective/zero_std_groups_frac' grpo/rloo: fraction of prompt groups whose scores are all equal
    'objective/distinct_2'           distinct bigrams / all bigrams over the rollout's responses
    'objective/duplicate_frac'       fraction of responses whose text is also another prompt's response
    'val/explained_variance'         1 - Var[returns - values] / Var[returns] over response tokens
No torch here: the helpers take lists (or anything with .tolist(), e.g. a tensor).
"""

import difflib
import math
import numbers
from dataclasses import dataclass

from common import UserError

NUM_SEQUENCES = 'val/num_sequences'
RATIO_MAX = 'policy/ratio_max'
ZERO_STD_GROUPS = 'objective/zero_std_groups_frac'
DISTINCT_2 = 'objective/distinct_2'
DUPLICATE_FRAC = 'objective/duplicate_frac'
EXPLAINED_VARIANCE = 'val/explained_variance'

# thresholds: every rule reads its own; HealthMonitor(**thresholds) overrides them by name
DEFAULTS = {
    'kl_negative_tol': 0.1,         # nats per sequence: objective/kl below -tol counts as negative (noise is smaller)
    'kl_negative_iters': 3,         # ... for this many consecutive iterations
    'ratio_max_limit': 10.0,        # policy/ratio_max above this: exploded (the clip bounds it in [1-c, 1+c] on purpose) ...
    'ratio_max_iters': 2,           # ... for this many consecutive iterations (one token's spike in one iteration
                                    #     happens in healthy runs: 3 of 9 seeded demo runs had one, up to 79)
    'ratio_mean_tol': 0.5,          # val/ratio (mean ratio) further than this from 1
    'clipfrac_limit': 0.3,          # policy/clipfrac above this (healthy: < 0.2) ...
    'clipfrac_iters': 3,            # ... for this many consecutive iterations
    'num_sequences': None,          # responses per rollout, when the metrics do not carry 'val/num_sequences'
    'eos_min_frac': 0.5,            # fewer than this fraction of responses end with EOS ...
    'eos_iters': 3,                 # ... for this many consecutive iterations
    'zero_std_max': 0.5,            # grpo/rloo: more than this fraction of groups with zero score spread ...
    'zero_std_iters': 3,            # ... for this many consecutive iterations
    'collapse_baseline_iters': 3,   # distinct-2 of the first this many iterations is the baseline
    'distinct_min_ratio': 0.5,      # distinct-2 below this fraction of the baseline ...
    'duplicate_max': 0.5,           # or more than this fraction of responses duplicated across prompts ...
    'collapse_iters': 2,            # ... for this many consecutive iterations
    'kl_ceiling': None,             # nats per sequence; None or 0 = off. KL above it while the score rises
    'hack_window': 5,               # "rising": least-squares slope of the score over this many iterations > 0
    'ev_iters': 10,                 # val/explained_variance below -ev_tol for this many consecutive iterations
    'ev_tol': 0.05,                 # a fresh (zero) value head hovers at 0 +- 0.02 for its first iterations
    'value_loss_window': 10,        # loss/value: mean of the last window vs the window before it ...
    'value_loss_growth': 3.0,       # ... grown by more than this factor
    'dpo_window': 10,               # DPO: mean of the first window (baseline) vs the last window
    'dpo_logp_drop': 0.1,           # both logps/chosen and logps/rejected fell by more than this fraction of |baseline|
    'chance_after_evals': 3,        # reward/DPO: from the this-many-th val accuracy on (the first eval is at step 0) ...
    'chance_margin': 0.05,          # ... a val accuracy <= 0.5 + margin is chance
}


# the counts and windows (integers): the least each rule can use (a slope needs 2 points, a mean 1)
MINIMUM = {'kl_negative_iters': 1, 'ratio_max_iters': 1, 'clipfrac_iters': 1, 'eos_iters': 1, 'zero_std_iters': 1,
           'collapse_baseline_iters': 1, 'collapse_iters': 1, 'hack_window': 2, 'ev_iters': 1,
           'value_loss_window': 1, 'dpo_window': 1, 'chance_after_evals': 1}


class TrainingHealthError(UserError):
    """An alarm stopped the run (on_alarm='stop', or non-finite metrics). One line at the top."""

    def __init__(self, message, alarms=()):
        super().__init__(message)
        self.alarms = list(alarms)


@dataclass
class Alarm:
    name: str
    message: str
    severity: str = 'warn'  # 'warn' | 'info' | 'fatal'
    step: int = None

    def __str__(self):
        return f"[{self.name}] {self.message}"


# ----------------------------------------------------------------------------------------------
# helpers the scripts call to compute the metrics above (pure; lists or anything with .tolist())

def _flat(x):
    """A flat list of floats from a number, a nested list/tuple or a tensor/array."""
    if hasattr(x, 'tolist'):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [f for item in x for f in _flat(item)]
    return [float(x)]


def distinct_n(sequences, n=2, max_len=None):
    """Distinct-n (Li et al. 2016) over a batch: distinct n-grams / all n-grams, pooled over every
    sequence (token lists; pass each response without its EOS), each cut to its first max_len tokens
    when given. 1.0 = no n-gram repeats anywhere, near 0 = the same few n-grams everywhere
    (degenerate repetition or one answer for all prompts). Pooled distinct-n falls as sequences grow
    (a fixed vocabulary's n-grams repeat across more text: 32 different Shakespeare lines, char-level,
    0.54 at 10 characters, 0.21 at 50), so ppo_train.py logs it over the first 16 tokens, a measure
    that longer but different responses leave alone. No n-grams at all gives 0.0."""
    grams = []
    for seq in sequences:
        seq = list(seq.tolist() if hasattr(seq, 'tolist') else seq)[:max_len]
        grams += [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def duplicate_fraction(texts, prompts=None):
    """Fraction of responses whose text (whitespace-stripped) is also the response to a different
    prompt. With prompts=None every response counts as its own prompt (any repeat is a duplicate);
    pass the prompts for GRPO/RLOO so that a group's repeated answers to one prompt do not count."""
    owners = {}  # response text -> the prompts (or indices) it answered
    for i, t in enumerate(texts):
        owners.setdefault(t.strip(), set()).add(i if prompts is None else prompts[i])
    return sum(len(owners[t.strip()]) > 1 for t in texts) / len(texts) if texts else 0.0


def zero_std_fraction(scores, group_size, tol=1e-6):
    """Fraction of prompt groups (group_size adjacent scores, as ppo_train lays them out) whose
    scores all lie within tol of each other: GRPO/RLOO advantages are 0 there, the group teaches
    nothing. Pass the task scores (after reward_clip and the EOS penalty, before any KL term)."""
    scores = _flat(scores)
    if len(scores) % group_size != 0:
        raise ValueError(f"{len(scores)} scores are not whole groups of {group_size}")
    groups = [scores[i:i + group_size] for i in range(0, len(scores), group_size)]
    return sum(max(g) - min(g) <= tol for g in groups) / len(groups) if groups else 0.0


def explained_variance(values, returns, mask=None):
    """1 - Var[returns - values] / Var[returns] over the masked entries (population variances;
    values/returns/mask of the same shape, e.g. (B, T) tensors or nested lists). 1 = the critic
    predicts the returns, 0 = no better than their mean, < 0 = worse than a constant. Fewer than 2
    masked entries or constant returns give 0.0 (not NaN: a degenerate batch is not an alarm)."""
    v, r = _flat(values), _flat(returns)
    m = _flat(mask) if mask is not None else [1.0] * len(v)
    if not len(v) == len(r) == len(m):
        raise ValueError(f"values, returns and mask differ in size: {len(v)}, {len(r)}, {len(m)}")
    pairs = [(vi, ri) for vi, ri, mi in zip(v, r, m) if mi]
    if len(pairs) < 2:
        return 0.0
    var_returns = _var([ri for _, ri in pairs])
    return 1.0 - _var([ri - vi for vi, ri in pairs]) / var_returns if var_returns > 0 else 0.0


def _var(xs):
    mu = sum(xs) / len(xs)
    return sum((x - mu) ** 2 for x in xs) / len(xs)


# ----------------------------------------------------------------------------------------------
# the rules: rule(history, th) -> one-line message or None

def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _series(history, key):
    """The finite values of `key`, oldest first, from the entries that hold it."""
    return [float(h[key]) for h in history if _is_number(h.get(key)) and math.isfinite(h[key])]


def _last_n(xs, n, predicate):
    """True when there are at least n values and the last n all satisfy predicate."""
    return len(xs) >= n and all(predicate(x) for x in xs[-n:])


def _mean(xs):
    return sum(xs) / len(xs)


def _slope(ys):
    """Least-squares slope of ys against 0, 1, 2, ..."""
    n = len(ys)
    x_mean, y_mean = (n - 1) / 2, _mean(ys)
    return sum((i - x_mean) * (y - y_mean) for i, y in enumerate(ys)) / sum((i - x_mean) ** 2 for i in range(n))


def _fmt(xs):
    return ', '.join(f"{x:.3g}" for x in xs)


def nonfinite(history, th):
    """Any metric of the latest entry is NaN or inf. Fatal: the weights or the reward are broken
    and every later number is meaningless."""
    bad = [k for k, v in history[-1].items() if _is_number(v) and not math.isfinite(v)]
    if not bad:
        return None
    return (f"non-finite metrics {', '.join(bad)}. Likely: learning rate too high, float16 overflow, a reward "
            f"returning nan/inf, a division by an empty mask. Change: learning_rate (lower), dtype='bfloat16', "
            f"grad_clip=1.0, check the reward function; resume from the last checkpoint (NaN weights are never saved)")


def kl_negative(history, th):
    """objective/kl (the k1 estimate, nats per sequence) below -kl_negative_tol for kl_negative_iters
    iterations in a row. The KL of the sampling policy to the reference is >= 0 and its batch mean
    is negative only by noise, so a lasting negative estimate means the responses were not sampled
    from the distribution the log-probs are computed for."""
    kl, n, tol = _series(history, 'objective/kl'), th['kl_negative_iters'], th['kl_negative_tol']
    if not _last_n(kl, n, lambda x: x < -tol):
        return None
    return (f"objective/kl below -{tol:g} nats for {n} iterations in a row ({_fmt(kl[-n:])}): the responses are "
            f"not sampled from the distribution the log-probs are computed for. Likely: top_k/top_p truncating "
            f"the sampling, a temperature that differs between generation and the log-prob pass, stale "
            f"log-probs. Change: top_k=0, top_p=1.0 (one temperature for both passes)")


def ratio_explosion(history, th):
    """The importance ratio pi/pi_old ran away: policy/ratio_max > ratio_max_limit for
    ratio_max_iters iterations in a row, or the mean ratio (val/ratio) further than ratio_mean_tol from 1, or policy/clipfrac > clipfrac_limit for
    clipfrac_iters iterations in a row. The updates move the policy much further than the clip
    range per rollout."""
    problems = []
    ratio_max, ratio_mean = _series(history, RATIO_MAX), _series(history, 'val/ratio')
    clipfrac, n = _series(history, 'policy/clipfrac'), th['clipfrac_iters']
    k = th['ratio_max_iters']
    if _last_n(ratio_max, k, lambda x: x > th['ratio_max_limit']):
        problems.append(f"policy/ratio_max {_fmt(ratio_max[-k:])} > {th['ratio_max_limit']:g} for {k} iterations")
    if ratio_mean and abs(ratio_mean[-1] - 1) > th['ratio_mean_tol']:
        problems.append(f"val/ratio {ratio_mean[-1]:.3g} (mean ratio, should stay near 1)")
    if _last_n(clipfrac, n, lambda x: x > th['clipfrac_limit']):
        problems.append(f"policy/clipfrac > {th['clipfrac_limit']:g} for {n} iterations ({_fmt(clipfrac[-n:])})")
    if not problems:
        return None
    return (f"importance ratio explosion: {'; '.join(problems)}. Likely: learning rate too high, too many "
            f"epochs or too small mini-batches per rollout, log-probs of training and sampling that differ. "
            f"Change: learning_rate (lower), ppo_epochs (fewer), mini_batch_size (larger), max_approx_kl "
            f"(e.g. 0.1: stop a rollout's epochs early), cliprange")


def missing_eos(history, th):
    """Fewer than eos_min_frac of the responses end with EOS (val/num_eos_tokens / the number of
    sequences, from 'val/num_sequences' or the num_sequences threshold) for eos_iters iterations in
    a row: most responses are cut at max_new_tokens, so their score is mostly the EOS penalty."""
    fracs = []
    for h in history:
        count = h.get(NUM_SEQUENCES, th['num_sequences'])
        if _is_number(h.get('val/num_eos_tokens')) and _is_number(count) and count > 0:
            fracs.append(h['val/num_eos_tokens'] / count)
    n = th['eos_iters']
    if not _last_n(fracs, n, lambda x: x < th['eos_min_frac']):
        return None
    length = _series(history, 'response_length')
    seen = f", mean response_length {length[-1]:.1f} tokens" if length else ""
    rates = ', '.join(f"{f:.0%}" for f in fracs[-n:])
    return (f"only {rates} of the responses end with EOS in the last {n} iterations{seen}: most are cut "
            f"at max_new_tokens and scored mostly by missing_eos_penalty. Likely: max_new_tokens too small for "
            f"the answers this policy writes, or a policy that never learned to stop (a base model, SFT without "
            f"an EOS target). Change: max_new_tokens (larger), init_from (an SFT checkpoint), missing_eos_penalty")


def zero_spread(history, th):
    """GRPO/RLOO: more than zero_std_max of the prompt groups have all-equal scores
    (objective/zero_std_groups_frac) for zero_std_iters iterations in a row. Such groups get zero
    advantage: most of the rollout teaches nothing."""
    z, n = _series(history, ZERO_STD_GROUPS), th['zero_std_iters']
    if not _last_n(z, n, lambda x: x > th['zero_std_max']):
        return None
    return (f"{ZERO_STD_GROUPS} {_fmt(z[-n:])} in the last {n} iterations: most prompt groups have zero reward "
            f"spread and zero advantage. Likely: a coarse (e.g. 0/1) reward on prompts that are all too easy or too "
            f"hard, too few responses per prompt, sampling too cold to differ, a saturated reward_clip. Change: "
            f"group_size (larger), temperature (higher), the prompt set (mixed difficulty), reward_clip")


def collapse(history, th):
    """The responses collapse onto a few strings: objective/distinct_2 below distinct_min_ratio x its
    baseline (the mean of the first collapse_baseline_iters values), or objective/duplicate_frac
    above duplicate_max, for collapse_iters iterations in a row."""
    problems, n = [], th['collapse_iters']
    distinct, dup = _series(history, DISTINCT_2), _series(history, DUPLICATE_FRAC)
    k = th['collapse_baseline_iters']
    if len(distinct) > k:
        baseline = _mean(distinct[:k])
        if _last_n(distinct[k:], n, lambda x: x < th['distinct_min_ratio'] * baseline):
            problems.append(f"{DISTINCT_2} {_fmt(distinct[-n:])}, below {th['distinct_min_ratio']:g} x its start "
                            f"{baseline:.3g}")
    if _last_n(dup, n, lambda x: x > th['duplicate_max']):
        problems.append(f"{DUPLICATE_FRAC} {_fmt(dup[-n:])} (the same response for different prompts)")
    if not problems:
        return None
    return (f"response collapse: {'; '.join(problems)}. Likely: the policy found one answer the reward likes "
            f"(mode collapse / reward hacking), KL penalty too weak, learning rate too high. Change: kl_coef "
            f"(higher) or adaptive_kl=True with target_kl, learning_rate (lower), temperature; read the samples")


def reward_hacking(history, th):
    """objective/kl above kl_ceiling while objective/scores is still rising (least-squares slope over
    the last hack_window iterations > 0): the policy buys reward by moving far from the reference,
    which is where a learned reward model is least reliable. Off unless kl_ceiling is set."""
    ceiling, w = th['kl_ceiling'], th['hack_window']
    kl, scores = _series(history, 'objective/kl'), _series(history, 'objective/scores')
    if not ceiling or not kl or kl[-1] <= ceiling or len(scores) < w or _slope(scores[-w:]) <= 0:
        return None
    return (f"reward hacking suspected: objective/kl {kl[-1]:.3g} nats > kl_ceiling {ceiling:g} while "
            f"objective/scores still rises ({_fmt(scores[-w:])}). Likely: the policy exploits the reward model "
            f"far from the reference. Change: kl_coef (higher) or adaptive_kl=True with target_kl below the "
            f"ceiling, learning_rate (lower), max_iters (stop earlier); read the samples before trusting the score")


def value_failing(history, th):
    """PPO's critic is not learning: val/explained_variance < -ev_tol for ev_iters iterations in a
    row (worse than predicting a constant; a fresh zero-initialised value head sits at 0 +- 0.02 for
    its first iterations, which is not failing), or loss/value over the last value_loss_window iterations above value_loss_growth x the window
    before. Advantages from such a critic are noise (or worse: biased)."""
    problems = []
    ev, n = _series(history, EXPLAINED_VARIANCE), th['ev_iters']
    if _last_n(ev, n, lambda x: x < -th['ev_tol']):
        problems.append(f"{EXPLAINED_VARIANCE} < -{th['ev_tol']:g} for {n} iterations (last {ev[-1]:.3g})")
    vl, w = _series(history, 'loss/value'), th['value_loss_window']
    if len(vl) >= 2 * w:
        before, last = _mean(vl[-2 * w:-w]), _mean(vl[-w:])
        if before > 0 and last > th['value_loss_growth'] * before:
            problems.append(f"loss/value grew from {before:.3g} to {last:.3g} (mean of {w} iterations)")
    if not problems:
        return None
    return (f"value function failing: {'; '.join(problems)}. Likely: the critic's learning is too weak or "
            f"too strong against the policy's, returns on a scale the value head cannot follow, a shared trunk "
            f"pulled by the policy loss. Change: vf_coef, cliprange_value, learning_rate, critic='separate', "
            f"normalize_reward=True or reward_clip")


def dpo_logps_falling(history, th):
    """DPO: logps/chosen and logps/rejected both fell by more than dpo_logp_drop x |baseline| (mean of
    the first dpo_window iterations vs the last dpo_window) while rewards/margins grew. Severity
    'info': this is the usual course of DPO (the loss sees only the difference of the two)."""
    w, drop = th['dpo_window'], th['dpo_logp_drop']
    chosen, rejected = _series(history, 'logps/chosen'), _series(history, 'logps/rejected')
    margins = _series(history, 'rewards/margins')
    if min(len(chosen), len(rejected), len(margins)) < 2 * w:
        return None
    falls = []
    for xs in (chosen, rejected):
        start, now = _mean(xs[:w]), _mean(xs[-w:])
        falls.append((start, now, start - now > drop * abs(start) and start > now))
    if not (falls[0][2] and falls[1][2] and _mean(margins[-w:]) > _mean(margins[:w])):
        return None
    (c0, c1, _), (r0, r1, _) = falls
    return (f"logps/chosen {c0:.4g} -> {c1:.4g} and logps/rejected {r0:.4g} -> {r1:.4g} both fall while "
            f"rewards/margins grows. Common in DPO: the loss only widens the gap, so probability leaves both "
            f"responses for others. It matters when the policy's own samples degrade (longer, repetitive, off "
            f"topic) or chosen log-probs keep falling after val accuracy stops improving. Then change: beta "
            f"(higher), learning_rate (lower), max_iters (stop earlier, keep best.pt), loss_type='ipo'")


def accuracy_at_chance(history, th):
    """Reward model or DPO: the latest val accuracy ('val/accuracy', or DPO's
    'val/rewards/accuracies') is <= 0.5 + chance_margin from the chance_after_evals-th eval on
    (the first eval, at step 0, is before any training: a zero reward head ties every pair, 0.5;
    DPO's policy equals its reference, every margin is 0 and its accuracy reads 0.0, as TRL's)."""
    for key in ('val/accuracy', 'val/rewards/accuracies'):
        acc = _series(history, key)
        if len(acc) >= th['chance_after_evals'] and acc[-1] <= 0.5 + th['chance_margin']:
            return (f"{key} {acc[-1]:.3f} after {len(acc)} evals: the model ranks val pairs at chance. Likely: "
                    f"learning rate too low (nothing moves) or too high (diverged), pairs truncated so that chosen "
                    f"and rejected no longer differ, swapped or noisy labels. Change: learning_rate, block_size "
                    f"or truncation, check the pairs the data script printed")
    return None


RULES = {f.__name__: f for f in (nonfinite, kl_negative, ratio_explosion, missing_eos, zero_spread, collapse,
                                 reward_hacking, value_failing, dpo_logps_falling, accuracy_at_chance)}
SEVERITY = {'nonfinite': 'fatal', 'dpo_logps_falling': 'info'}  # the rest: 'warn'
_RL = ('nonfinite', 'kl_negative', 'ratio_explosion', 'missing_eos', 'collapse', 'reward_hacking')
KIND_RULES = {
    'ppo': _RL + ('value_failing',),
    'grpo': _RL + ('zero_spread',),
    'rloo': _RL + ('zero_spread',),
    'dpo': ('nonfinite', 'dpo_logps_falling', 'accuracy_at_chance'),
    'reward': ('nonfinite', 'accuracy_at_chance'),
}


# ----------------------------------------------------------------------------------------------
# the monitor: history, on/off state per alarm, counts, the end-of-run summary

class HealthMonitor:
    """Runs the rules of one kind of run on every update. kind: 'ppo' | 'grpo' | 'rloo' | 'dpo' |
    'reward'; on_alarm: 'warn' (update returns the new alarms) | 'stop' (a new 'warn' alarm raises
    TrainingHealthError); thresholds: any key of DEFAULTS."""

    def __init__(self, kind, on_alarm='warn', **thresholds):
        if kind not in KIND_RULES:
            raise UserError(f"health monitor kind must be one of {', '.join(KIND_RULES)}, got {kind!r}")
        if on_alarm not in ('warn', 'stop'):
            raise UserError(f"on_alarm must be 'warn' or 'stop', got {on_alarm!r}")
        for key in thresholds:
            if key not in DEFAULTS:
                close = difflib.get_close_matches(key, DEFAULTS, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise UserError(f"unknown alarm threshold '{key}'{hint}")
            if key in MINIMUM and not (isinstance(thresholds[key], int) and thresholds[key] >= MINIMUM[key]):
                raise UserError(f"alarm threshold {key} must be an integer >= {MINIMUM[key]}, got {thresholds[key]!r}")
        self.kind, self.on_alarm, self.th = kind, on_alarm, {**DEFAULTS, **thresholds}
        self.rules = KIND_RULES[kind]
        self.history = []
        self.active = set()    # alarms on now
        self.fired = {}        # name -> how many times it turned on
        self.updates_on = {}   # name -> updates during which it was on
        self.first = {}        # name -> the first Alarm of that name

    def update(self, metrics, step=None):
        """Add one iteration's metrics (name -> float); return the alarms that turned on now."""
        step = len(self.history) if step is None else step
        self.history.append(dict(metrics))
        new = []
        for name in self.rules:
            message = RULES[name](self.history, self.th)
            if message is None:
                self.active.discard(name)
                continue
            self.updates_on[name] = self.updates_on.get(name, 0) + 1
            if name in self.active:
                continue  # still on: counted, not repeated
            self.active.add(name)
            self.fired[name] = self.fired.get(name, 0) + 1
            alarm = Alarm(name, message, SEVERITY.get(name, 'warn'), step)
            self.first.setdefault(name, alarm)
            new.append(alarm)
        stops = [a for a in new if a.severity == 'fatal' or (a.severity == 'warn' and self.on_alarm == 'stop')]
        if stops:
            why = 'non-finite metrics' if stops[0].severity == 'fatal' else "on_alarm='stop'"
            raise TrainingHealthError(f"training health alarm at step {step}, stopping ({why}): "
                                      + ' | '.join(str(a) for a in stops), new)
        return new

    def state_dict(self):
        """Everything update() depends on, for a checkpoint (so a resumed run alarms as a straight one)."""
        return {'history': self.history, 'active': sorted(self.active), 'fired': self.fired,
                'updates_on': self.updates_on,
                'first': {k: (a.name, a.message, a.severity, a.step) for k, a in self.first.items()}}

    def load_state_dict(self, state):
        self.history, self.active = list(state['history']), set(state['active'])
        self.fired, self.updates_on = dict(state['fired']), dict(state['updates_on'])
        self.first = {k: Alarm(*v) for k, v in state['first'].items()}

    def check(self, metrics, step=None, say=print, logger=None):
        """What a script calls after computing an iteration's metrics: update(), print each new
        alarm with `say`, and return {'alarm/<name>': 1.0} for the new ones, for the CSV/wandb
        row. On a stop, the summary is printed and, when the script's common.Logger is given, the
        row the run stopped on (its metrics and alarms, which the caller will never log) is
        written to the CSV/wandb before TrainingHealthError propagates."""
        try:
            new = self.update(metrics, step)
        except TrainingHealthError as e:
            say(self.summary())
            if logger is not None:
                logger.log({**metrics, **{f"alarm/{a.name}": 1.0 for a in e.alarms}}, step)
            raise
        for alarm in new:
            say(f"alarm: {alarm}")
        return {f"alarm/{a.name}": 1.0 for a in new}

    def summary(self):
        """The alarms of the run so far, for the end of the run: one line each with its counts."""
        head = f"training health ({self.kind}, {len(self.history)} logged rows checked)"
        if not self.fired:
            return f"{head}: no alarms"
        lines = [f"{head}: {len(self.fired)} alarm{'s' if len(self.fired) > 1 else ''}"]
        for name in self.rules:
            if name in self.fired:
                first = self.first[name]
                lines.append(f"  {name} ({first.severity}): turned on {self.fired[name]}x, on for "
                             f"{self.updates_on[name]} updates{' (still on)' if name in self.active else ''}, "
                             f"first at step {first.step}: {first.message}")
        return '\n'.join(lines)
