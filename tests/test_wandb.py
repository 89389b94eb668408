"""wandb, offline (WANDB_MODE=offline, as in CI; no network): the metrics and sample tables reach a
wandb run that `wandb sync` can upload later, and a missing wandb is one clear error.
Online mode is the same code path with a network and a login; it cannot be tested here."""
import csv
import glob
import importlib.util
import json
import os
import sys

import pytest

from common import Logger, UserError

needs_wandb = pytest.mark.skipif(importlib.util.find_spec('wandb') is None,
                                 reason='wandb is optional; .ci/run installs it')


def offline_run(wandb_dir):
    runs = glob.glob(os.path.join(wandb_dir, 'wandb', 'offline-run-*'))
    assert len(runs) == 1, runs
    records = open(glob.glob(os.path.join(runs[0], 'run-*.wandb'))[0], 'rb').read()
    tables = {}
    for path in glob.glob(os.path.join(runs[0], 'files', 'media', 'table', '*.table.json')):
        tables[os.path.basename(path)] = json.load(open(path))
    return records, tables


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    return tmp_path


@needs_wandb
def test_logger_sends_metrics_and_tables_to_an_offline_run(offline):
    logger = Logger(str(offline / 'out' / 'log.csv'), wandb_log=True, wandb_project='proj',
                    wandb_run_name='run-name', config={'learning_rate': 3e-4})
    logger.log({'train/loss_step': 1.5}, 1)
    logger.log({'train/loss_step': 1.2578125}, 2)
    logger.log_table('samples', [{'prompt': 'Hi', 'response': ' there', 'score': 0.5}], 2)
    logger.finish()
    import wandb
    wandb.teardown()  # wait for wandb's service to write everything out, as at a script's exit (finish alone
    # left the run file empty once in ~5 runs with another wandb run in a parallel test worker)
    records, tables = offline_run(offline)
    # the run's records (protobuf) hold the metric name, its values as JSON text, the run name and config
    for needle in (b'train/loss_step', b'1.2578125', b'run-name', b'learning_rate'):
        assert needle in records, needle
    assert list(tables.values()) == [{'columns': ['step', 'prompt', 'response', 'score'],
                                      'data': [[2, 'Hi', ' there', 0.5]]}]
    assert [r['train/loss_step'] for r in csv.DictReader(open(offline / 'out' / 'log.csv'))] == ['1.5', '1.2578125']


@needs_wandb
def test_ppo_run_logs_to_wandb_offline(offline, tmp_path):
    """A real script with --wandb_log=True: every CSV metric name goes to the wandb run, and the
    samples table equals samples.csv."""
    from test_ppo import run_ppo
    from conftest import make_hf_gpt2
    make_hf_gpt2(str(tmp_path / 'hf'), vocab_size=50257, n_positions=64, n_embd=32)
    p = run_ppo(tmp_path, tmp_path, ['--batch_size=4', '--mini_batch_size=4', '--max_iters=2', '--eval_interval=2',
                                     '--sample_interval=2', '--wandb_log=True', '--wandb_run_name=ppo-offline'])
    assert p.returncode == 0, p.stderr[-3000:]
    records, tables = offline_run(offline)
    fields = next(csv.reader(open(tmp_path / 'out' / 'log.csv')))
    assert 'objective/kl' in fields and b'ppo-offline' in records
    for name in fields[1:]:
        assert name.encode() in records, name
    samples = list(csv.DictReader(open(tmp_path / 'out' / 'samples.csv')))
    (table,) = tables.values()
    assert table['columns'] == ['step', 'prompt', 'response', 'score']
    assert [[str(v) for v in row[:3]] for row in table['data']] == [[r['step'], r['prompt'], r['response']] for r in samples]
    assert [row[3] for row in table['data']] == pytest.approx([float(r['score']) for r in samples])


def test_missing_wandb_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # `import wandb` raises ImportError
    with pytest.raises(UserError, match='wandb_log=True needs wandb: pip install wandb'):
        Logger(str(tmp_path / 'log.csv'), wandb_log=True)
