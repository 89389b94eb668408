"""The one-command demo (demo.py): its true reward, preference-pair rule, per-step log view and
envelope reduction on hand-computed values (taken out of the script with conftest.load_definitions,
without running it); then the whole pipeline shrunk with --quick=True: every stage runs one of the
project's scripts and leaves its output; the evaluation has one row per policy; a second run skips
every stage that has its output."""
import csv
import json
import math
import os
import sys

import pytest
import torch

from common import Logger
from conftest import ROOT, SHARED, load_definitions, run_python

INPUT = os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')
demo = load_definitions(os.path.join(ROOT, 'demo.py'), 'POSITIVE', 'NEGATIVE', 'positivity', 'preference_pairs',
                        'log_by_step', 'envelope_table', 'mean_se', 'paired_z', 'unfinished')


def test_load_definitions_runs_nothing_of_the_script(capsys):
    load_definitions(os.path.join(ROOT, 'demo.py'), 'positivity', 'POSITIVE', 'NEGATIVE')
    assert capsys.readouterr().out == ''  # the script itself prints its config first thing
    with pytest.raises(KeyError, match='defines no positivty at top level'):
        load_definitions(os.path.join(ROOT, 'demo.py'), 'positivty')


def test_positivity_counts_whole_lexicon_words():
    """Positive minus negative words, lower-cased, a word = a run of letters: punctuation and case
    do not matter, repeats count, a lexicon word inside another word does not."""
    assert {'love', 'lovely', 'good'} <= demo.POSITIVE and {'death', 'kill', 'false'} <= demo.NEGATIVE
    texts = ['Love, SWEET love!',                # 3: case and punctuation
             'death death, DEATH.',              # -3: every repeat
             'lovely',                           # 1: a lexicon word of its own
             'gloves lovelier unkind',           # 0: love and kind only inside other words
             'skill killer',                     # 0: kill likewise
             "heaven's love2hate",               # 1 + 1 - 1: letters split at ' and digits
             'Good friend, false villain',       # 2 - 2
             '']
    got = demo.positivity(None, texts)
    assert got == [3.0, -3.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert all(type(r) is float for r in got)


def pair_tuples(pairs, with_prompt=False):
    return [((p['prompt'],) if with_prompt else ()) + (p['chosen'], p['rejected'], p['chosen_reward'],
                                                     p['rejected_reward']) for p in pairs]


# three prompts x three samples: P0 all complete, rewards differ; P1 its best line unfinished, the
# other two tied; P2 all tied, one length each. Each group's pairs, in order, by hand below.
PROMPTS = ['P0', 'P1', 'P2']
TEXTS = ['good', 'meh', 'bad', 'best!', 'fine', 'fine too', 'a', 'bb', 'c']
REWARDS = [1.0, 0.0, -1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]
ENDED = [True, True, True, False, True, True, True, True, True]


def test_preference_pairs_strict_within_each_prompt_complete_lines_only():
    pairs = demo.preference_pairs(PROMPTS, TEXTS, REWARDS, ENDED, 3, quick=False)
    assert pair_tuples(pairs, with_prompt=True) == [
        ('P0', 'good', 'meh', 1.0, 0.0), ('P0', 'good', 'bad', 1.0, -1.0), ('P0', 'meh', 'bad', 0.0, -1.0)]
    # P1: 'best!' is unfinished, its two others tie; P2: all tie; none pairs with another prompt's lines
    assert set(pairs[0]) == {'prompt', 'chosen', 'rejected', 'chosen_reward', 'rejected_reward'}


def test_preference_pairs_quick_keeps_unfinished_lines_and_breaks_ties_by_length():
    pairs = demo.preference_pairs(PROMPTS, TEXTS, REWARDS, ENDED, 3, quick=True)
    assert pair_tuples(pairs, with_prompt=True) == [
        ('P0', 'good', 'meh', 1.0, 0.0), ('P0', 'good', 'bad', 1.0, -1.0), ('P0', 'meh', 'bad', 0.0, -1.0),
        ('P1', 'best!', 'fine', 2.0, 0.0), ('P1', 'best!', 'fine too', 2.0, 0.0),  # reward before length
        ('P1', 'fine too', 'fine', 0.0, 0.0),  # a tie: the longer line chosen
        ('P2', 'bb', 'a', 0.0, 0.0), ('P2', 'bb', 'c', 0.0, 0.0)]  # 'a' and 'c': same reward, same length


def test_preference_pairs_identical_texts_never_pair():
    """Even where their given rewards differ (the rule trusts the rewards it is handed)."""
    for quick in (False, True):
        assert demo.preference_pairs(['P'], ['same', 'same'], [1.0, 0.0], [True, True], 2, quick) == []
        pairs = demo.preference_pairs(['P'], ['same', 'same', 'other'], [1.0, 0.0, -1.0], [True] * 3, 3, quick)
        assert pair_tuples(pairs) == [('same', 'other', 1.0, -1.0), ('same', 'other', 0.0, -1.0)]


def test_log_by_step_merges_a_steps_rows(tmp_path):
    """The per-step view of a log.csv: a step's train and eval rows in one dict, the later row's
    value where both have a metric, integer steps (the envelope CSV's step column), numbers only."""
    log = Logger(str(tmp_path / 'log.csv'))
    log.log({'loss': 0.5, 'lr': 1e-3}, 0)  # train row
    log.log({'val/loss': 0.75, 'lr': 2e-3}, 0)  # eval row of the same step
    log.log({'loss': 0.25, 'lr': 5e-4}, 1)
    log.log({'val/loss': 0.125, 'note': 'text'}, 2)
    steps = demo.log_by_step(str(tmp_path))
    assert steps == {0: {'loss': 0.5, 'lr': 2e-3, 'val/loss': 0.75}, 1: {'loss': 0.25, 'lr': 5e-4},
                     2: {'val/loss': 0.125}}
    assert all(type(s) is int for s in steps)  # (0.0 == 0 as a dict key: checked apart)


def test_envelope_table_min_median_max_over_common_steps():
    runs = [{1: {'loss': 4.0}, 0: {'loss': 3.0, 'acc': 0.25}, 2: {'loss': 0.5}},
            {0: {'loss': 1.0, 'acc': 0.75}, 1: {'loss': 0.25}},  # no step 2
            {0: {'loss': 2.0}, 1: {'loss': 0.5}, 3: {'loss': 0.1}}]
    table = demo.envelope_table(runs, ['loss', 'acc', 'kl'])
    assert table == [
        ['step', 'loss/min', 'loss/median', 'loss/max', 'acc/min', 'acc/median', 'acc/max', 'kl/min', 'kl/median', 'kl/max'],
        [0, 1.0, 2.0, 3.0, 0.25, 0.5, 0.75, '', '', ''],  # acc: the two runs that have it; kl: none
        [1, 0.25, 0.5, 4.0, '', '', '', '', '', '']]  # the median, not the mean (1.58); steps 2, 3 not in every run
    assert demo.envelope_table(runs[:1], ['loss'])[1:] == [[0, 3.0, 3.0, 3.0], [1, 4.0, 4.0, 4.0], [2, 0.5, 0.5, 0.5]]
    late_first = [{8: {'loss': 1.0}, 1: {'loss': 2.0}}] * 2  # (a set of 8 and 1 iterates 8 first)
    assert [row[0] for row in demo.envelope_table(late_first, ['loss'])[1:]] == [1, 8]  # steps in order


def test_mean_se():
    m, se = demo.mean_se([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and se == pytest.approx(math.sqrt(5 / 3 / 4))  # sample variance (n - 1), over n
    assert demo.mean_se([3.0]) == (3.0, 0.0)  # one sample: no spread, no division by zero


def test_paired_z_uses_the_differences_of_the_same_prompts():
    """Differences 1, 1, 2, 0: mean 1, sample sd sqrt(2/3), se sqrt(2/3)/2, z = 2.449. As if the
    samples were independent, z would be 1 / hypot(se(xs), se(base)) = 0.926: the shared prompts'
    correlation (here strong) is what the paired test sees."""
    xs, base = [3.0, 1.0, 4.0, 0.0], [2.0, 0.0, 2.0, 0.0]
    assert demo.paired_z(xs, base) == pytest.approx(1 / (math.sqrt(2 / 3) / 2))
    assert demo.paired_z(base, base) == 0.0  # the pretrained model against itself


def test_demo_pipeline_end_to_end(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'demo.py'), '--quick=True', '--envelope_seeds=1', f'--input_txt={INPUT}']
    p = run_python(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    out = tmp_path / 'out-demo-quick'  # --quick=True never writes into out-demo
    assert not (tmp_path / 'out-demo').exists()
    for path in ['pretrain/ckpt.pt', 'reward/best.pt', 'dpo_beta0.1/ckpt.pt', 'dpo_beta0.5/ckpt.pt',
                 'ppo/ckpt.pt', 'grpo/ckpt.pt', 'ppo/log.csv', 'prompts_train.jsonl']:
        assert (out / path).is_file(), path
    pairs = [json.loads(line) for line in open(out / 'pairs.jsonl')]
    assert pairs and all(p['chosen'] != p['rejected'] and p['chosen_reward'] >= p['rejected_reward'] for p in pairs)
    rows = list(csv.DictReader(open(out / 'eval.csv')))
    assert [r['policy'] for r in rows] == ['pretrained', 'dpo beta=0.1', 'dpo beta=0.5', 'ppo', 'grpo']
    assert float(rows[0]['kl']) == 0.0  # the reference against itself
    for r in rows:
        assert int(r['n']) == 16 and float(r['kl_se']) >= 0 and 0 <= float(r['eos_rate']) <= 1
    for algo, metric in [('ppo', 'true_reward/median'), ('grpo', 'objective/kl/max'), ('dpo', 'rewards/margins/min')]:
        rows = list(csv.DictReader(open(out / f'envelope_{algo}.csv')))
        assert rows and metric in rows[0] and (all if algo != 'dpo' else any)(r[metric] != '' for r in rows)
        # (DPO logs its train metrics every log_interval steps; its eval-only steps have them empty)
    # a second run: every stage is skipped, only the evaluation runs again
    p = run_python(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count('exists, skipped') == 8, p.stdout  # data, pretrain, pairs, reward, 2 x DPO, PPO, GRPO
    assert p.stdout.count('$ ') == 0, p.stdout  # and the envelope's runs are not repeated
    # without --input_txt the lines the data came from are not at hand: one line, not a traceback
    if os.path.isfile(os.path.join(ROOT, 'data', 'shakespeare_char', 'input.txt')):
        return  # a downloaded copy is there (prepare.py without --input): the demo reads that one
    p = run_python(cmd[:-1], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith('error: ') \
        and 'pass --input_txt=path/to/input.txt again' in p.stderr, p.stderr[-2000:]


def test_a_stage_whose_run_was_interrupted_is_not_taken_as_done(tmp_path):
    """The scripts write ckpt.pt/best.pt at every eval: after a demo stopped mid-stage (Ctrl-C) the
    file of a half-trained run is there. It counted as done, so the next demo evaluated a half-trained
    "DPO" or ran PPO against a reward model without its normalisation stats."""
    path = str(tmp_path / 'ckpt.pt')
    torch.save({'iter_num': 50, 'config': {'max_iters': 100}}, path)
    assert demo.unfinished(path) == 'its run stopped at iteration 50 of 100'
    torch.save({'iter_num': 100, 'config': {'max_iters': 100}}, path)
    assert demo.unfinished(path) is None
    torch.save({'iter_num': 40, 'config': {'max_iters': 100}}, path)  # a reward model's best.pt: any iteration,
    assert demo.unfinished(path, key='reward_std') == 'it has no reward_std (its run did not finish)'
    torch.save({'iter_num': 40, 'config': {'max_iters': 100}, 'reward_mean': 0.1, 'reward_std': 2.0}, path)
    assert demo.unfinished(path, key='reward_std') is None  # the stats come last: the run finished
    assert demo.unfinished(str(tmp_path / 'pairs.jsonl')) is None  # written whole (tmp + rename)

