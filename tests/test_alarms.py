"""Training health (alarms.py): each alarm on a crafted metric stream where it must fire (name and
the key words of its message), healthy streams of every kind where none may fire, fire-once and
re-arm, on_alarm='stop', the summary, and the metric helpers on hand-computed values. Pure Python."""
import ast
import math
import os
import re

import pytest

from alarms import (DEFAULTS, DISTINCT_2, DUPLICATE_FRAC, EXPLAINED_VARIANCE, NUM_SEQUENCES, RATIO_MAX, RULES,
                    ZERO_STD_GROUPS, HealthMonitor, TrainingHealthError, distinct_n, duplicate_fraction,
                    explained_variance, zero_std_fraction)
import alarms
from common import UserError, script_defaults
from conftest import ROOT

N = 40  # iterations of a crafted stream


def healthy_rl(kind='ppo', n=N):
    """A run going well: score rising smoothly 0 -> 1, KL 0 -> 3 nats with a little noise, clipfrac 0.05,
    ratio max 1.5, 90 % of responses ending with EOS, diverse responses, and for PPO explained variance
    from -0.1 (a fresh value head) rising to 0.5 and a falling value loss."""
    stream = []
    for i in range(n):
        t = i / (n - 1)
        noise = 0.02 * (-1) ** i
        m = {'objective/kl': 3 * t + noise, 'objective/entropy': 2.0 - 0.5 * t, 'objective/scores': t + noise,
             'objective/rlhf_reward': t - 0.05 * 3 * t, 'objective/kl_coef': 0.05, 'policy/approxkl': 0.01,
             'policy/clipfrac': 0.05 + noise, 'loss/policy': -0.01, 'val/clipfrac': 0.02, 'val/ratio': 1.0 + noise / 10,
             RATIO_MAX: 1.5, 'val/num_eos_tokens': 18, NUM_SEQUENCES: 20, 'response_length': 40.0 + 10 * t,
             DISTINCT_2: 0.8 - 0.1 * t, DUPLICATE_FRAC: 0.0, 'tokens_per_s': 1000.0, 'lr': 1e-6}
        if kind == 'ppo':
            m.update({'loss/value': 1.0 * 0.95 ** i, EXPLAINED_VARIANCE: -0.1 if i < 3 else min(0.5, 0.05 * i)})
        else:
            m.update({'loss/value': 0.0, ZERO_STD_GROUPS: 0.25})
        stream.append(m)
    return stream


def healthy_dpo(n=N):
    """DPO going well: both log-probs drift down a little (chosen 2 %), the margin and accuracy rise;
    a val dict every 10 iterations, passed as its own update."""
    stream = []
    for i in range(n):
        t = i / (n - 1)
        stream.append({'loss': 0.69 - 0.2 * t, 'rewards/chosen': 0.1 * t, 'rewards/rejected': -0.5 * t,
                       'rewards/accuracies': 0.5 + 0.2 * t, 'rewards/margins': 0.6 * t,
                       'logps/chosen': -100.0 - 2 * t, 'logps/rejected': -100.0 - 8 * t, 'lr': 1e-6, 'time_ms': 50.0})
        if i % 10 == 0:
            stream.append({'val/loss': 0.69 - 0.1 * t, 'val/rewards/accuracies': 0.5 + 0.3 * t,
                           'val/rewards/margins': 0.4 * t, 'val/logps/chosen': -100.0, 'lr': 1e-6})
    return stream


def healthy_reward(n=N):
    """A reward model learning: train accuracy rising, val accuracy 0.5 (step 0) -> 0.68."""
    stream = []
    for i in range(n):
        if i % 10 == 0:
            stream.append({'val/loss': 0.69 - 0.01 * i, 'val/accuracy': 0.5 + 0.006 * i, 'val/margin': 0.02 * i,
                           'val/reward_mean': 0.0, 'val/reward_std': 0.1 + 0.01 * i, 'lr': 1e-5})
        stream.append({'train/loss': 0.69 - 0.005 * i, 'train/accuracy': 0.5 + 0.005 * i, 'train/margin': 0.01 * i})
    return stream


def run(kind, stream, **kw):
    """Every alarm a monitor raises over the stream, in order, and the monitor."""
    monitor = HealthMonitor(kind, **kw)
    alarms = [a for step, m in enumerate(stream) for a in monitor.update(m, step)]
    return alarms, monitor


def only(alarms, name):
    """The one alarm of the stream, which must be `name`."""
    assert [a.name for a in alarms] == [name], [str(a) for a in alarms]
    return alarms[0]


# ----------------------------------------------------------------------------------------------
# healthy streams: nothing fires

@pytest.mark.parametrize('kind,stream', [('ppo', healthy_rl('ppo')), ('grpo', healthy_rl('grpo')),
                                         ('rloo', healthy_rl('rloo')), ('dpo', healthy_dpo()),
                                         ('reward', healthy_reward())])
def test_healthy_stream_raises_no_alarm(kind, stream):
    alarms, monitor = run(kind, stream, on_alarm='stop', kl_ceiling=5.0)  # stop: any alarm would raise
    assert alarms == []
    assert monitor.summary() == f"training health ({kind}, {len(stream)} logged rows checked): no alarms"


# ----------------------------------------------------------------------------------------------
# each alarm fires on its stream, with its name and the key words of its message

def with_tail(stream, k, **changes):
    """The stream with the last k entries changed: changes maps a metric name (with '/' written '__')
    to a value or to a function of the index within the tail."""
    out = [dict(m) for m in stream]
    for j, m in enumerate(out[-k:]):
        for key, v in changes.items():
            m[key.replace('__', '/')] = v(j) if callable(v) else v
    return out


def test_kl_negative_fires_after_n_iterations_below_noise():
    stream = with_tail(healthy_rl(), 3, objective__kl=-0.5)
    a = only(run('ppo', stream)[0], 'kl_negative')
    assert a.step == N - 1 and a.severity == 'warn'
    for word in ('objective/kl', 'top_k', 'top_p', 'temperature', 'stale log-probs'):
        assert word in a.message
    # two iterations are not enough, and a dip within noise (-0.05 > -0.1) never is
    assert run('ppo', with_tail(healthy_rl(), 2, objective__kl=-0.5))[0] == []
    assert run('ppo', with_tail(healthy_rl(), 10, objective__kl=-0.05))[0] == []


def test_ratio_explosion_on_ratio_max_mean_ratio_or_clipfrac():
    a = only(run('ppo', with_tail(healthy_rl(), 2, **{'policy__ratio_max': 50.0}))[0], 'ratio_explosion')
    assert 'policy/ratio_max 50, 50 > 10 for 2 iterations' in a.message and 'learning_rate' in a.message
    assert 'max_approx_kl' in a.message
    # one token's ratio spiking in one iteration is not an explosion (it happened in healthy seeded demo runs)
    assert run('ppo', with_tail(healthy_rl(), 1, **{'policy__ratio_max': 80.0}))[0] == []
    a = only(run('grpo', with_tail(healthy_rl('grpo'), 1, val__ratio=2.0))[0], 'ratio_explosion')
    assert 'val/ratio' in a.message
    a = only(run('ppo', with_tail(healthy_rl(), 3, policy__clipfrac=0.45))[0], 'ratio_explosion')
    assert 'policy/clipfrac' in a.message and 'ppo_epochs' in a.message
    assert run('ppo', with_tail(healthy_rl(), 2, policy__clipfrac=0.45))[0] == []  # a short spike is not


def test_missing_eos_from_metric_or_monitor_argument():
    stream = with_tail(healthy_rl(), 3, val__num_eos_tokens=3)  # 3 of 20
    a = only(run('ppo', stream)[0], 'missing_eos')
    for word in ('EOS', 'max_new_tokens', 'missing_eos_penalty', 'response_length'):
        assert word in a.message
    # without 'val/num_sequences' in the metrics the count comes from the monitor, or the rule is silent
    bare = [{k: v for k, v in m.items() if k != NUM_SEQUENCES} for m in stream]
    assert run('ppo', bare)[0] == []
    only(run('ppo', bare, num_sequences=20)[0], 'missing_eos')


def test_zero_spread_fires_for_grpo_and_rloo_only():
    stream = with_tail(healthy_rl('grpo'), 3, **{ZERO_STD_GROUPS.replace('/', '__'): 0.75})
    for kind in ('grpo', 'rloo'):
        a = only(run(kind, stream)[0], 'zero_spread')
        assert 'zero reward spread' in a.message and 'group_size' in a.message and 'temperature' in a.message
    assert run('ppo', stream + healthy_rl('ppo')[-1:])[0] == []  # PPO has no groups


def test_collapse_on_falling_distinct_2_or_duplicates():
    a = only(run('ppo', with_tail(healthy_rl(), 2, objective__distinct_2=0.1))[0], 'collapse')
    assert 'objective/distinct_2' in a.message and 'kl_coef' in a.message
    a = only(run('rloo', with_tail(healthy_rl('rloo'), 2, objective__duplicate_frac=0.9))[0], 'collapse')
    assert 'same response for different prompts' in a.message


def test_reward_hacking_needs_a_ceiling_and_a_rising_score():
    stream = with_tail(healthy_rl(), 5, objective__kl=lambda j: 20.0 + j)
    assert run('ppo', stream)[0] == []  # kl_ceiling off by default
    a = only(run('ppo', stream, kl_ceiling=10.0)[0], 'reward_hacking')
    assert 'kl_ceiling 10' in a.message and 'kl_coef' in a.message and 'target_kl' in a.message
    flat = with_tail(stream, 10, objective__scores=lambda j: 1.0 - 0.01 * j)  # KL high, score falling: not this alarm
    assert run('ppo', flat, kl_ceiling=10.0)[0] == []


def test_value_failing_on_negative_explained_variance_or_growing_loss():
    a = only(run('ppo', with_tail(healthy_rl(), 10, val__explained_variance=-0.3))[0], 'value_failing')
    assert 'val/explained_variance' in a.message and 'vf_coef' in a.message
    assert run('ppo', with_tail(healthy_rl(), 9, val__explained_variance=-0.3))[0] == []
    # a fresh value head hovering just under 0 (the demo's healthy seeds: -0.002 to -0.02) is not failing
    assert run('ppo', with_tail(healthy_rl(), 20, val__explained_variance=-0.02))[0] == []
    assert only(run('ppo', with_tail(healthy_rl(), 10, val__explained_variance=-0.06))[0], 'value_failing')
    a = only(run('ppo', with_tail(healthy_rl(), 10, loss__value=5.0))[0], 'value_failing')
    assert 'loss/value grew' in a.message
    assert run('grpo', with_tail(healthy_rl('grpo'), 10, loss__value=5.0))[0] == []  # no critic


def test_dpo_logps_falling_is_info_and_never_stops():
    stream = [dict(m) for m in healthy_dpo()]
    for i, m in enumerate(x for x in stream if 'logps/chosen' in x):
        m['logps/chosen'], m['logps/rejected'] = -100.0 - 2 * i, -100.0 - 3 * i  # both fall ~80 %
    alarms, monitor = run('dpo', stream, on_alarm='stop')  # info: returned, not raised
    a = only(alarms, 'dpo_logps_falling')
    assert a.severity == 'info' and 'Common in DPO' in a.message and 'beta' in a.message
    assert 'dpo_logps_falling (info)' in monitor.summary()


@pytest.mark.parametrize('kind,key', [('reward', 'val/accuracy'), ('dpo', 'val/rewards/accuracies')])
def test_val_accuracy_at_chance_after_warm_up(kind, key):
    stream = [dict(m) for m in (healthy_reward() if kind == 'reward' else healthy_dpo())]
    for m in stream:
        if key in m:
            m[key] = 0.51
    a = only(run(kind, stream)[0], 'accuracy_at_chance')
    assert a.step == [i for i, m in enumerate(stream) if key in m][2]  # the third eval, not the first two
    assert key in a.message and 'chance' in a.message and 'learning_rate' in a.message


def test_nonfinite_metric_stops_even_when_warning():
    stream = with_tail(healthy_rl(), 1, objective__kl=math.nan, loss__value=math.inf)
    monitor = HealthMonitor('ppo', on_alarm='warn')
    for m in stream[:-1]:
        monitor.update(m)
    with pytest.raises(TrainingHealthError, match=r'non-finite metrics objective/kl, loss/value') as e:
        monitor.update(stream[-1])
    assert isinstance(e.value, UserError) and e.value.alarms[0].severity == 'fatal'
    assert 'nonfinite' in monitor.summary()
    # a NaN in the past does not poison the other rules: their series skip it
    assert RULES['kl_negative'](stream + healthy_rl()[-1:], DEFAULTS) is None


# ----------------------------------------------------------------------------------------------
# the monitor: fire once, re-arm, stop, summary, bad arguments

def test_alarm_fires_once_while_on_and_again_after_it_turned_off():
    stream = healthy_rl()
    stream = stream[:10] + with_tail(stream[10:20], 10, objective__kl=-0.5) + stream[20:30] \
        + with_tail(stream[30:], 10, objective__kl=-0.5)
    alarms, monitor = run('ppo', stream)
    assert [(a.name, a.step) for a in alarms] == [('kl_negative', 12), ('kl_negative', 32)]
    assert monitor.fired == {'kl_negative': 2} and monitor.updates_on == {'kl_negative': 16}  # 8 + 8
    summary = monitor.summary()
    assert "training health (ppo, 40 logged rows checked): 1 alarm\n" in summary
    assert 'kl_negative (warn): turned on 2x, on for 16 updates (still on), first at step 12' in summary


def test_on_alarm_stop_raises_a_user_error_naming_the_alarm():
    monitor = HealthMonitor('grpo', on_alarm='stop')
    stream = with_tail(healthy_rl('grpo'), 3, val__num_eos_tokens=0)
    with pytest.raises(TrainingHealthError, match=r"step 39, stopping \(on_alarm='stop'\): \[missing_eos\]") as e:
        for step, m in enumerate(stream):
            monitor.update(m, step)
    assert isinstance(e.value, UserError) and '\n' not in str(e.value)  # one line under the excepthook
    assert monitor.fired == {'missing_eos': 1}


def test_monitor_rejects_bad_kind_mode_and_threshold():
    with pytest.raises(UserError, match='kind must be one of'):
        HealthMonitor('sft')
    with pytest.raises(UserError, match="on_alarm must be 'warn' or 'stop'"):
        HealthMonitor('ppo', on_alarm='raise')
    with pytest.raises(UserError, match="unknown alarm threshold 'kl_ceil'; did you mean kl_ceiling"):
        HealthMonitor('ppo', kl_ceil=3.0)


def test_monitor_rejects_windows_a_rule_cannot_use():
    """A count or window below its minimum is refused when the monitor is built, not met later as a
    ZeroDivisionError in the middle of the run (the slope needs 2 points, a mean 1 value)."""
    for key, bad in (('hack_window', 1), ('collapse_baseline_iters', 0), ('value_loss_window', 0),
                     ('dpo_window', 0), ('kl_negative_iters', 0), ('hack_window', 2.5), ('ev_iters', 3.0)):
        with pytest.raises(UserError, match=f"alarm threshold {key} must be an integer >= "):
            HealthMonitor('ppo', **{key: bad})
    HealthMonitor('ppo', hack_window=2, collapse_baseline_iters=1, value_loss_window=1)  # the smallest usable


def test_thresholds_override_defaults():
    stream = with_tail(healthy_rl(), 3, policy__clipfrac=0.25)
    assert run('ppo', stream)[0] == []
    only(run('ppo', stream, clipfrac_limit=0.2)[0], 'ratio_explosion')


# ----------------------------------------------------------------------------------------------
# helpers that compute the new metrics

def test_distinct_n_hand_values():
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 3 / 4          # bigrams 12 23 12 24: 3 distinct of 4
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 1) == 4 / 6
    assert distinct_n([[5, 5, 5, 5]], 2) == 1 / 3                  # degenerate repetition
    assert distinct_n([[1], []], 2) == 0.0                          # no bigrams at all
    assert distinct_n([[1, 2, 3, 9, 9], [1, 2, 4]], 2, max_len=3) == 3 / 4  # each cut to its first 3 tokens


def test_distinct_2_over_the_first_16_tokens_does_not_fall_with_length_alone():
    """32 different Shakespeare lines a batch, char-level, growing from 10 to 50 characters: pooled
    over whole responses distinct_2 fell from 0.52 to 0.21 and the collapse alarm fired on healthy,
    longer answers; over the first 16 tokens (what ppo_train.py logs) it stays within 0.5x of its
    start, and one answer for every prompt still fires it."""
    import random
    from conftest import SHARED
    text = open(os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')).read()
    lines = [line for line in text.split('\n') if len(line) >= 50]
    rng = random.Random(0)
    monitor = HealthMonitor('ppo')
    for it, length in enumerate([10, 10, 10, 30, 50, 50, 50]):
        batch = [list(line[:length]) for line in rng.sample(lines, 32)]
        assert not monitor.update({DISTINCT_2: distinct_n(batch, 2, max_len=16), DUPLICATE_FRAC: 0.0}, it), it
    one = [list(rng.choice(lines)[:50])] * 32
    fired = [monitor.update({DISTINCT_2: distinct_n(one, 2, max_len=16), DUPLICATE_FRAC: 0.0}, it) for it in (7, 8)]
    assert [a.name for a in fired[-1]] == ["collapse"]


def test_duplicate_fraction_counts_repeats_across_prompts_only():
    texts = ['yes', 'yes ', 'no', 'maybe']
    assert duplicate_fraction(texts) == 0.5                         # 'yes' twice (whitespace ignored)
    assert duplicate_fraction(texts, prompts=['p', 'p', 'q', 'r']) == 0.0   # same prompt: a group, not collapse
    assert duplicate_fraction(texts, prompts=['p', 'q', 'q', 'r']) == 0.5
    assert duplicate_fraction([]) == 0.0


def test_zero_std_fraction_over_adjacent_groups():
    assert zero_std_fraction([1, 1, 0, 1, 0.5, 0.5], 2) == 2 / 3
    assert zero_std_fraction([0, 0, 0, 0], 4) == 1.0
    with pytest.raises(ValueError, match='whole groups'):
        zero_std_fraction([1, 2, 3], 2)


def test_explained_variance_hand_values_and_mask():
    returns = [[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]]
    mask = [[1, 1, 1], [1, 0, 0]]                                   # masked returns 1, 2, 3, 4: variance 1.25
    assert explained_variance(returns, returns, mask) == 1.0
    assert explained_variance([[0.0] * 3] * 2, returns, mask) == 0.0   # a constant predictor
    # errors 0.5, -0.5, 0.5, -0.5 (variance 0.25): 1 - 0.25 / 1.25 = 0.8; the unmasked 9s do not count
    values = [[0.5, 2.5, 2.5], [4.5, 0.0, 0.0]]
    assert explained_variance(values, returns, mask) == pytest.approx(0.8)
    # a predictor anti-correlated with the returns is worse than a constant: negative
    assert explained_variance([[4.0, 3.0, 2.0], [1.0, 0, 0]], returns, mask) < 0
    assert explained_variance([1.0], [2.0]) == 0.0 and explained_variance([1.0, 2.0], [3.0, 3.0]) == 0.0


def test_explained_variance_takes_tensors():
    torch = pytest.importorskip('torch')
    v, r, m = torch.tensor([[0.5, 2.5, 2.5]]), torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    # masked: returns 1, 2 (variance 0.25), errors 0.5, -0.5 (variance 0.25): 0
    assert explained_variance(v, r, m) == pytest.approx(0.0)
    assert distinct_n(torch.tensor([[1, 2, 3], [1, 2, 4]]), 2) == 3 / 4


def test_readme_thresholds_are_the_defaults():
    """Every `threshold` (number) the README's alarm table names is alarms.DEFAULTS' value."""
    import os
    import re
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')).read()
    section = text[text.index('## Training health (alarms)'):]
    section = section[:section.index('\n## ')]
    claims = re.findall(r"`(\w+)` \(([\d.]+)\)", section)
    assert len(claims) >= 15
    for key, value in claims:
        assert DEFAULTS[key] == float(value), key
    assert set(re.findall(r"^\| `(\w+)` \(", section, re.M)) == set(RULES)  # one row per alarm


def test_every_key_an_alarm_tells_to_change_is_a_config_key_of_its_scripts():
    """The advice after 'Change:' names config keys (snake_case words); each must be a key of every
    script the rule runs in (kl_negative once told PPO users to set dropout=0.0, a key ppo_train.py
    does not have: the run would stop on 'unknown config key')."""
    script = {'ppo': 'ppo_train.py', 'grpo': 'ppo_train.py', 'rloo': 'ppo_train.py', 'dpo': 'dpo_train.py',
              'reward': 'reward_train.py'}
    keys = {kind: set(script_defaults(os.path.join(ROOT, s))) for kind, s in script.items()}
    tree = ast.parse(open(os.path.join(ROOT, 'alarms.py')).read())
    checked = 0
    for rule in [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name in alarms.RULES]:
        for message in [j for j in ast.walk(rule) if isinstance(j, ast.JoinedStr)]:
            text = ''.join(v.value if isinstance(v, ast.Constant) else '{}' for v in message.values)
            if 'hange:' not in text:
                continue
            advice = text.split('hange:', 1)[1]  # snake_case words, and any word given a value (top_k=0, dropout=0.0)
            words = set(re.findall(r"(?<![/\w.])([a-z][a-z0-9]*_[a-z0-9_]+)\b", advice) + re.findall(r"\b(\w+)=", advice))
            for kind in [k for k, rules in alarms.KIND_RULES.items() if rule.name in rules]:
                assert words <= keys[kind], f"{rule.name} tells {script[kind]} users to change {sorted(words - keys[kind])}"
            checked += 1
    assert checked == len(alarms.RULES)  # every rule's message has its advice
