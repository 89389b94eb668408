"""plot.py on logs written by common.Logger: a PNG of the right size for train, reward and PPO logs,
overlaid runs, smoothing, and one-line errors (incl. matplotlib missing)."""
import importlib.util
import os
import struct
import sys

import pytest

from common import Logger
from conftest import ROOT, load_definitions, run_python

# matplotlib is optional (requirements.txt); .ci/run installs it, so CI draws every PNG below
needs_mpl = pytest.mark.skipif(importlib.util.find_spec('matplotlib') is None,
                               reason='matplotlib not installed (pip install matplotlib)')

PPO_METRICS = ['objective/kl', 'objective/entropy', 'objective/scores', 'objective/rlhf_reward',
               'objective/kl_coef', 'policy/approxkl', 'policy/clipfrac', 'loss/policy', 'loss/value',
               'val/clipfrac', 'val/ratio', 'val/num_eos_tokens', 'response_length', 'tokens_per_s',
               'time/rollout', 'time/score', 'time/train', 'lr']  # what ppo_train.py logs


def plot(*args, env=None):
    env = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg', **(env or {}))
    return run_python([sys.executable, os.path.join(ROOT, 'plot.py'), *args],
                      capture_output=True, text=True, timeout=120, env=env)


def png_size(path):
    """(width, height) in pixels from a PNG's IHDR chunk."""
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n', f"{path} is not a PNG"
    return struct.unpack('>II', head[16:24])


def write_train_log(out_dir, scale=1.0):
    """A train.py-like log: per-step train loss, an eval row every 10 steps (other columns empty)."""
    logger = Logger(os.path.join(out_dir, 'log.csv'))
    for step in range(50):
        if step % 10 == 0:
            logger.log({'train/loss': scale * 4 / (1 + step), 'val/loss': scale * 4.2 / (1 + step), 'lr': 1e-3}, step)
        logger.log({'train/loss_step': scale * 4 / (1 + step) + 0.1 * (step % 3), 'lr': 1e-3,
                    'time_ms': 12.0, 'mfu': 0.01}, step)
    return out_dir


def write_ppo_log(out_dir):
    logger = Logger(os.path.join(out_dir, 'log.csv'))
    for step in range(30):
        logger.log({k: (step % 7) * 0.1 + i for i, k in enumerate(PPO_METRICS)}, step)
    return out_dir


@needs_mpl
def test_train_log_one_loss_panel(tmp_path):
    run = write_train_log(str(tmp_path / 'out-train'))
    r = plot(f'--logs={run}')
    assert r.returncode == 0, r.stderr
    png = os.path.join(run, 'curves.png')
    assert png_size(png) == (450, 300)  # one panel (train/loss_step, train/loss, val/loss): 4.5 x 3 in at 100 dpi
    assert os.path.getsize(png) > 5000
    assert '1 panels (loss)' in r.stdout


@needs_mpl
def test_reward_log_panels(tmp_path):
    logger = Logger(str(tmp_path / 'log.csv'))
    for step in range(0, 40, 10):
        logger.log({'train/loss': 0.69 - step / 100, 'train/accuracy': 0.5 + step / 100,
                    'train/margin': step / 50, 'lr': 1e-5}, step)
        logger.log({'val/loss': 0.7, 'val/accuracy': 0.55, 'val/margin': 0.1, 'val/reward_mean': 0.0,
                    'alarm/accuracy_at_chance': 1.0}, step)  # an alarm's flag column: not a panel of its own
    out = str(tmp_path / 'plots' / 'reward.png')
    r = plot(f'--logs={tmp_path / "log.csv"}', f'--out={out}')
    assert r.returncode == 0, r.stderr
    assert png_size(out) == (3 * 450, 300)  # loss, accuracy, margin
    assert '(loss, accuracy, margin)' in r.stdout


@needs_mpl
def test_ppo_log_grid_smoothed(tmp_path):
    run = write_ppo_log(str(tmp_path / 'out-ppo'))
    out = str(tmp_path / 'ppo.png')
    r = plot(f'--logs={run}', f'--out={out}', '--smooth=0.9')
    assert r.returncode == 0, r.stderr
    assert '12 panels' in r.stdout and 'val/clipfrac' in r.stdout and 'time/rollout' not in r.stdout
    assert png_size(out) == (3 * 450, 4 * 300)  # 12 panels, 3 a row
    assert os.path.getsize(out) > 20000


@needs_mpl
def test_several_logs_overlaid(tmp_path):
    a = write_train_log(str(tmp_path / 'a'), scale=1.0)
    b = write_train_log(str(tmp_path / 'b'), scale=1.5)
    out = str(tmp_path / 'both.png')
    r = plot(f'--logs={a},{b}/log.csv', '--labels=lr 1e-3,lr 3e-4', f'--out={out}',
             '--columns=val/loss,train/loss_step')
    assert r.returncode == 0, r.stderr
    assert 'from 2 log(s)' in r.stdout
    assert png_size(out) == (450, 300)
    single = str(tmp_path / 'a.png')
    assert plot(f'--logs={a}', f'--out={single}', '--columns=val/loss,train/loss_step').returncode == 0
    assert open(out, 'rb').read() != open(single, 'rb').read()  # the second run is drawn


@needs_mpl
def test_run_overlaid_on_reference_envelope(tmp_path):
    """--envelope: a min/median/max CSV (as demo.py --envelope_seeds writes it) drawn behind the
    matching metrics; the picture differs from the run alone; an envelope without any plotted
    metric is a one-line error."""
    run = write_ppo_log(str(tmp_path / 'out-ppo'))
    env = tmp_path / 'env.csv'
    cols = ['objective/scores', 'objective/kl']
    env.write_text('step,' + ','.join(f'{c}/{q}' for c in cols for q in ('min', 'median', 'max')) + '\n'
                   + ''.join(f"{s},{','.join(str(v) for _ in cols for v in (0.1 * s, 0.2 * s, 0.3 * s))}\n"
                             for s in range(30)))
    out, alone = str(tmp_path / 'with.png'), str(tmp_path / 'alone.png')
    r = plot(f'--logs={run}', f'--out={out}', f'--envelope={env}')
    assert r.returncode == 0, r.stderr
    assert plot(f'--logs={run}', f'--out={alone}').returncode == 0
    assert png_size(out) == png_size(alone) and open(out, 'rb').read() != open(alone, 'rb').read()
    bad = tmp_path / 'bad.csv'
    bad.write_text('step,loss/min,loss/median,loss/max\n0,1,2,3\n')
    r = plot(f'--logs={run}', f'--out={out}', f'--envelope={bad}')
    assert r.returncode == 1 and 'has none of the plotted metrics' in r.stderr, r.stderr
    r = plot(f'--logs={run}', f'--out={out}', f'--envelope={tmp_path / "missing.csv"}')
    assert r.returncode == 1 and r.stderr.strip().endswith('missing.csv not found'), r.stderr
    bad.write_text('objective/scores/min,objective/scores/median,objective/scores/max\n1,2,3\n')  # no step
    r = plot(f'--logs={run}', f'--out={out}', f'--envelope={bad}')
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].endswith("(no 'step' column)"), r.stderr


@pytest.mark.parametrize('args, message', [
    (['--logs=nowhere/log.csv'], 'not found'),
    (['--logs={a}', '--columns=val/los'], "no column 'val/los'"),
    (['--logs={a},{a}', '--labels=one'], '1 labels for 2 logs'),
    (['--logs={a}', '--smooth=1.0'], 'smooth must be in'),
    (['--logs={a}', '--max_cols=0'], 'max_cols=0 must be > 0'),  # before: ZeroDivisionError
    (['--logs={a}', '--dpi=0'], 'dpi=0 must be > 0'),  # before: matplotlib's ValueError tracebacks
    (['--logs={a}', '--panel_width=-1'], 'panel_width=-1.0 must be > 0'),
    (['--logs={a}', '--panel_height=0'], 'panel_height=0.0 must be > 0'),
    (['--logs={a}', '--out={a}'], 'is a directory'),  # before: IsADirectoryError from savefig
])
def test_one_line_errors(tmp_path, args, message):
    a = write_train_log(str(tmp_path / 'a'))
    r = plot(*[x.format(a=a) for x in args])
    assert r.returncode == 1 and r.stderr.startswith('error: ') and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@needs_mpl
def test_out_extension_matplotlib_cannot_write_is_one_line(tmp_path):
    """Refused before drawing, naming the formats it can write (before: a ValueError traceback
    from savefig, after drawing); .pdf / .svg are fine."""
    a = write_train_log(str(tmp_path / 'a'))
    r = plot(f'--logs={a}', f'--out={tmp_path / "curves.xyz"}')
    assert r.returncode == 1 and r.stderr.startswith('error: '), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'cannot write .xyz' in r.stderr and '.png' in r.stderr and '.pdf' in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / 'curves.xyz')
    r = plot(f'--logs={a}', f'--out={tmp_path / "curves.svg"}')
    assert r.returncode == 0, r.stderr
    assert open(tmp_path / 'curves.svg').read(200).lstrip().startswith('<?xml')


def test_log_without_numeric_columns_is_one_line(tmp_path):
    """A log whose columns are all text: said plainly (before: 'choose --columns among: ', an
    empty list)."""
    (tmp_path / 'log.csv').write_text('step,note\n0,started\n1,running\n')
    for args in ([], ['--columns=note']):
        r = plot(f'--logs={tmp_path}', *args)
        assert r.returncode == 1 and r.stderr.startswith('error: '), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "no column of numbers besides 'step'" in r.stderr, r.stderr


def test_missing_matplotlib_is_one_line_error(tmp_path):
    a = write_train_log(str(tmp_path / 'a'))
    blocker = tmp_path / 'block' / 'matplotlib'  # an importable 'matplotlib' that fails to import
    blocker.mkdir(parents=True)
    (blocker / '__init__.py').write_text("raise ImportError('blocked for the test')\n")
    r = plot(f'--logs={a}', env={'PYTHONPATH': str(tmp_path / 'block')})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == 'error: plot.py needs matplotlib, an optional dependency: pip install matplotlib'


def test_ema_smooths_over_steps_so_sparse_and_dense_series_lag_alike():
    """Hand values: weight 0.5, unit 1. A series logged every 2 steps decays by 0.5**2 per point;
    a constant stays constant and the first point is the first value (debiased). The same curve
    logged every step and every 50 steps ends in the same place (per point, the sparse one lagged
    by 10 evals: 0.49 against 0.30 where the curve was 0.29)."""
    ema = load_definitions(os.path.join(ROOT, 'plot.py'), 'ema').ema
    assert ema([0, 1], [1.0, 3.0], 0.5) == pytest.approx([1.0, 1.75 / 0.75])  # s 0.5, 1.75; norm 0.5, 0.75
    assert ema([0, 2], [1.0, 3.0], 0.5) == pytest.approx([1.0, 2.375 / 0.875])  # w 0.25: s 0.125 + 2.25
    assert ema([10, 20], [1.0, 3.0], 0.5, unit=10) == ema([0, 1], [1.0, 3.0], 0.5)
    assert ema([0, 5, 7], [4.0] * 3, 0.9) == pytest.approx([4.0] * 3)
    curve = lambda t: 0.25 + 2.0 * 0.98 ** t
    dense = ema(list(range(201)), [curve(t) for t in range(201)], 0.9)
    sparse = ema(list(range(0, 201, 50)), [curve(t) for t in range(0, 201, 50)], 0.9)
    assert abs(dense[-1] - curve(200)) < 0.02 and abs(sparse[-1] - curve(200)) < 0.02


@needs_mpl
def test_smoothed_run_and_envelope_band_use_the_same_filter(tmp_path, monkeypatch):
    """With --smooth and --envelope, the band is smoothed as the run is: a run that is the envelope's
    median is drawn exactly on the band's median (the raw band left 24 of 60 smoothed points of
    such a run outside it)."""
    import runpy
    from common import read_log
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.axes import Axes
    env_path = os.path.join(ROOT, 'assets', 'healthy_envelope_ppo.csv')
    _, env = read_log(env_path)
    logger = Logger(str(tmp_path / 'run' / 'log.csv'))
    steps, median = env['objective/scores/median']
    for s, v in zip(steps, median):
        logger.log({'objective/scores': v}, int(s))
    drawn = {}
    plot_line = Axes.plot

    def record(self, x, y, *args, **kw):
        drawn[kw.get('label')] = list(y)
        return plot_line(self, x, y, *args, **kw)

    monkeypatch.setattr(Axes, 'plot', record)
    monkeypatch.setattr(sys, 'argv', ['plot.py', f'--logs={tmp_path / "run"}', '--smooth=0.9', f'--envelope={env_path}',
                                      '--columns=objective/scores', f'--out={tmp_path / "c.png"}'])
    runpy.run_path(os.path.join(ROOT, 'plot.py'), run_name='__main__')
    assert drawn['objective/scores'] == pytest.approx(drawn['healthy runs (median)'], abs=1e-9)
    assert drawn['objective/scores'] != pytest.approx(list(median), abs=1e-3)  # it was smoothed
