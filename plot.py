"""
Curves of a run's log.csv (common.Logger: a header row, then one row per logged step, a 'step'
column and one column per metric, empty where a metric was not logged at that step) as a PNG.

    python plot.py --logs=out-shakespeare-char                       # -> out-shakespeare-char/curves.png
    python plot.py --logs=out-ppo/log.csv --smooth=0.9               # PPO: a grid of its metrics
    python plot.py --logs=out-dpo-a,out-dpo-b --labels=beta0.1,beta0.5 --out=dpo.png   # overlaid runs
    python plot.py --logs=out-reward --columns=val/accuracy,train/loss
    python plot.py --logs=out-ppo --envelope=assets/healthy_envelope_ppo.csv   # over healthy runs

Which metrics, unless `columns` names them:
- a PPO/GRPO/RLOO log (it has objective/scores): PPO_COLUMNS below, one panel each (TRL's names:
  val/clipfrac there is the value loss's clip fraction, not a validation metric);
- any other log (train.py, SFT, reward_train.py, dpo_train.py): the loss-like columns (names with
  loss, acc or margin); train/X, val/X and train/X_step share one panel (solid, dashed, faint).
Several logs are overlaid in every panel, one colour each, labelled. matplotlib is optional
(pip install matplotlib) and imported only here.
"""

import math
import os

from common import UserError, configure, print_config, read_log, require_positive

# -----------------------------------------------------------------------------
logs = 'out/log.csv'        # a log.csv or a run directory holding one; several comma-separated are overlaid
labels = ''                 # legend labels, comma-separated, one per log ('' = each log's directory name)
out = ''                    # the image ('' = curves.png next to the first log); its extension picks the format (.png, .pdf, .svg, ...)
columns = ''                # metrics to plot, comma-separated ('' = chosen by the kind of log, see above)
smooth = 0.0                # exponential moving average weight in [0, 1): 0 = raw; 0.9 for noisy PPO curves
panel_width = 4.5           # inches per panel (the PNG is n_cols * panel_width * dpi pixels wide)
panel_height = 3.0          # inches per panel
max_cols = 3                # panels per row
dpi = 100
envelope = ''               # a reference envelope CSV (step, <metric>/min, /median, /max; demo.py --envelope_seeds)
                            # drawn as a grey band (min-max) and a dashed median behind the matching metrics
# -----------------------------------------------------------------------------
config = configure(globals())
# -----------------------------------------------------------------------------

print_config(config)
if not 0.0 <= smooth < 1.0:
    raise UserError(f"smooth must be in [0, 1), got {smooth}")
require_positive(config, 'max_cols', 'dpi', 'panel_width', 'panel_height')
if out and os.path.isdir(out):
    raise UserError(f"out={out!r} is a directory; give the image's file name, e.g. {os.path.join(out, 'curves.png')}")
PPO_COLUMNS = ['objective/scores', 'objective/rlhf_reward', 'objective/kl', 'objective/entropy',
               'loss/policy', 'loss/value', 'policy/clipfrac', 'policy/approxkl', 'val/clipfrac',
               'objective/kl_coef', 'response_length', 'val/num_eos_tokens']
LOSS_LIKE = ('loss', 'acc', 'margin')  # substrings of the metrics plotted for non-PPO logs


def ema(steps, values, weight, unit=1):
    """Exponential moving average over steps, not over logged points: s_t = w_t s_{t-1} + (1 - w_t) x_t
    with w_t = weight ** ((step_t - step_{t-1}) / unit) (weight for the first point), from s_0 = 0 and
    debiased by the same average of ones, so the curve starts at the first value; with a point every
    unit steps this is TensorBoard's smoothing. A series logged every step and one logged every
    eval_interval steps then lag alike: per point, identical train and val curves were drawn apart
    (the sparse one smoothed over 10 evals, hundreds of steps)."""
    out, s, norm, prev = [], 0.0, 0.0, None
    for step, x in zip(steps, values):
        w = weight if prev is None else weight ** ((step - prev) / unit)
        s, norm, prev = w * s + (1 - w) * x, w * norm + (1 - w), step
        out.append(s / norm)
    return out


def panel_of(column, ppo):
    """The panel a column is drawn in: train/X, val/X, X and train/X_step share panel X, except in
    PPO logs (whose val/ prefix is the value function's)."""
    if ppo:
        return column
    name = column.removeprefix('train/').removeprefix('val/')
    return name.removesuffix('_step')


def style_of(column, ppo):
    """Line style by split: val dashed with markers (not in PPO logs), per-step train faint, the
    rest solid."""
    if column.startswith('val/') and not ppo:
        return dict(linestyle='--', marker='o', markersize=3)
    if column.endswith('_step'):
        return dict(alpha=0.35, linewidth=0.8)
    return dict()


# -----------------------------------------------------------------------------
# the logs, their labels, the panels
paths = [p.strip() for p in logs.split(',') if p.strip()]
if not paths:
    raise UserError("logs is empty: give a log.csv or a run directory")
runs = [read_log(p) for p in paths]
names = [lbl.strip() for lbl in labels.split(',')] if labels else []
if names and len(names) != len(runs):
    raise UserError(f"{len(names)} labels for {len(runs)} logs")
if not names:  # the run directory's name; the whole path where two runs share a name
    names = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p, _ in runs]
    if len(set(names)) < len(names):
        names = [p for p, _ in runs]
available = list(dict.fromkeys(c for _, series in runs for c in series))  # in logging order
ppo = any('objective/scores' in series for _, series in runs)
if not available:
    raise UserError(f"nothing to plot: {', '.join(p for p, _ in runs)} "
                    f"{'has' if len(runs) == 1 else 'have'} no column of numbers besides 'step'")
if columns:
    wanted = [c.strip() for c in columns.split(',') if c.strip()]
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise UserError(f"no column {unknown[0]!r} in the logs; they have: {', '.join(available)}")
elif ppo:
    wanted = [c for c in PPO_COLUMNS if c in available]
else:
    wanted = [c for c in available if any(s in c.lower() for s in LOSS_LIKE) and not c.startswith('alarm/')]
if not wanted:
    raise UserError(f"nothing to plot by default; choose --columns among: {', '.join(available)}")
panels = {}  # panel title -> its columns, in order
for c in wanted:
    panels.setdefault(panel_of(c, ppo), []).append(c)

band = {}  # metric -> (steps, min, median, max) of the reference envelope
if envelope:
    if not os.path.isfile(envelope):
        raise UserError(f"envelope {envelope} not found")
    _, env = read_log(envelope)  # the same CSV shape as a log: step, then <metric>/min, /median, /max
    for c in wanted:
        if f'{c}/min' in env:  # the three are written together, so they share their steps
            (steps, lo), (_, mid), (_, hi) = (env[f'{c}/{q}'] for q in ('min', 'median', 'max'))
            band[c] = (steps, lo, mid, hi)
    if not band:
        raise UserError(f"envelope {envelope} has none of the plotted metrics ({', '.join(wanted)})")

# -----------------------------------------------------------------------------
# draw
try:
    import matplotlib
except ImportError:
    raise UserError("plot.py needs matplotlib, an optional dependency: pip install matplotlib") from None
matplotlib.use('Agg')  # files only, no display needed
import matplotlib.pyplot as plt
from matplotlib.backend_bases import FigureCanvasBase

formats = FigureCanvasBase.get_supported_filetypes()  # extension -> description: png, pdf, svg, jpg, ...
extension = os.path.splitext(out)[1].lstrip('.').lower()
if extension and extension not in formats:  # (no extension: savefig writes a PNG)
    raise UserError(f"out={out!r}: matplotlib cannot write .{extension} files; "
                    f"use one of: {', '.join('.' + f for f in sorted(formats))}")

n_cols = min(max_cols, len(panels))
n_rows = math.ceil(len(panels) / n_cols)
fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * panel_width, n_rows * panel_height),
                         dpi=dpi, squeeze=False)
colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
# the smoothing's step unit: the smallest gap between logged points of any plotted series (1 for a
# log written every iteration; log_interval otherwise), so the densest series smooths as per point
gaps = [b - a for _, series in runs for c in wanted if c in series for a, b in zip(series[c][0], series[c][0][1:])]
unit = max(min((g for g in gaps if g > 0), default=1), 1e-12)
for ax, (title, cols) in zip(axes.flat, panels.items()):
    for c in cols:
        if c in band:
            steps, lo, mid, hi = band[c]
            if smooth > 0 and len(steps) > 1:  # the band smoothed as the runs drawn over it
                lo, mid, hi = (ema(steps, q, smooth, unit) for q in (lo, mid, hi))
            ax.fill_between(steps, lo, hi, color='0.5', alpha=0.25, linewidth=0, label='healthy runs (min-max)')
            ax.plot(steps, mid, color='0.4', linestyle='--', linewidth=1, label='healthy runs (median)')
    for i, (name, (_, series)) in enumerate(zip(names, runs)):
        for c in cols:
            if c not in series:
                continue
            steps, values = series[c]
            label = c if len(runs) == 1 else f"{name}: {c}"
            kw = dict(color=colors[i % len(colors)], **style_of(c, ppo))
            if smooth > 0 and len(values) > 1:
                ax.plot(steps, values, color=kw['color'], alpha=0.2, linewidth=0.8)  # raw, faint
                values = ema(steps, values, smooth, unit)
            ax.plot(steps, values, label=label, **kw)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')  # the empty rest of the last row
fig.tight_layout()
if not out:
    out = os.path.join(os.path.dirname(runs[0][0]) or '.', 'curves.png')
os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
fig.savefig(out)
print(f"wrote {out}: {len(panels)} panels ({', '.join(panels)}) from {len(runs)} log(s)")
