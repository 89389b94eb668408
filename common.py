"""
Plumbing every script needs, written once: config overrides, device/dtype/autocast, DDP, the
learning-rate schedule, RNG state, atomic checkpoints, logging (stdout + CSV + optional wandb)
and tokenizers. No algorithm math lives here.

Errors a user can fix (a bad config key, a missing file) are raised as UserError; when one
reaches the top of a script it is printed as one line, `error: ...`, and the exit code is 1.
"""

import ast
import csv
import difflib
import gc
import gzip
import hashlib
import json
import math
import os
import pickle
import random
import sys
import time
import traceback
from contextlib import nullcontext

import numpy as np
import torch


class UserError(Exception):
    """Something the user can fix: bad config, missing file. Shown as one line, exit code 1."""


def _excepthook(exc_type, exc, tb, _default=sys.excepthook):
    from model import ModelLoadError  # model.py raises its own (it must not import this module)
    if issubclass(exc_type, (UserError, ModelLoadError)):
        print(f"error: {exc}", file=sys.stderr)
    else:
        _default(exc_type, exc, tb)


sys.excepthook = _excepthook


# ----------------------------------------------------------------------------------------------
# config: a script's module-level globals are its config (nanoGPT's configurator, checked)

CONFIG_TYPES = (int, float, bool, str, type(None), tuple, list)


def require_positive(config, *names):
    """A count or interval that must be > 0 (batch_size=0 would otherwise fail later, obscurely):
    one error line naming the key."""
    for name in names:
        if name in config and not config[name] > 0:
            raise UserError(f"{name}={config[name]!r} must be > 0")


def require_at_least(config, **minimums):
    """A count whose minimum is not 1 (threads=0 means torch's default; bench.py's threads=-1 was a
    RuntimeError traceback from torch.set_num_threads): one error line naming the key."""
    for name, low in minimums.items():
        if not config[name] >= low:
            raise UserError(f"{name}={config[name]!r} must be >= {low}")


def config_keys(scope):
    """The config of a script: its public module globals of plain types, in definition order;
    UPPER_CASE names are constants (e.g. model.IGNORE_INDEX imported by train.py), not config."""
    return [k for k, v in scope.items()
            if not k.startswith('_') and not k.isupper() and isinstance(v, CONFIG_TYPES) and not isinstance(v, type)]


def _check_type(key, new, old, where):
    """Accept `new` for a key whose default is `old`: same type, int where float is expected, a
    list for a tuple, and any plain value where the default is None. None is not 'off' for a key
    whose default is something else (0 and '' are; a None there crashed later, in a traceback)."""
    if isinstance(new, np.generic):  # a numpy scalar from a config file's arithmetic: the Python value
        new = new.item()
    if not isinstance(new, CONFIG_TYPES):
        raise UserError(f"{where}: {key} must be a number, string, bool, tuple or list, got {new!r}")
    if old is None or type(new) is type(old):
        return new
    if isinstance(old, float) and type(new) is int:
        return float(new)
    if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
        return type(old)(new)
    off = " (None is for keys whose default is None; 'off' is 0 or '')" if new is None else ""
    raise UserError(f"{where}: {key} must be {type(old).__name__} (default {old!r}), got {new!r}{off}")


def _unknown(key, keys, where):
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(f"{where}: unknown config key '{key}'{hint}")


def parse_value(text):
    """A command-line value: a Python literal (3, 1e-4, True, None, (0.9, 0.95), 'x') or else the
    plain string. true/false in any case are booleans."""
    if text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def configure(scope, argv=None):
    """Override the config in `scope` (a script's globals()) from argv: first config files
    (`config/x.py`, run with the current config visible), then `--key=value` flags, in order.
    Every key must exist and keep its type. Returns the effective config dict."""
    argv = sys.argv[1:] if argv is None else argv
    keys = config_keys(scope)
    default = {k: scope[k] for k in keys}  # types are checked against the script's own defaults
    if '-h' in argv or '--help' in argv:
        print(config_help(scope, keys))
        sys.exit(0)
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise UserError(f"config file {arg} not found")
            file_scope = {k: scope[k] for k in keys}
            try:
                with open(arg) as f:
                    exec(compile(f.read(), arg, 'exec'), file_scope)
            except SyntaxError as e:
                raise UserError(f"{arg}, line {e.lineno}: syntax error: {e.msg}") from None
            except Exception as e:  # e.g. a NameError from a typo (lr_decay_iters = max_iter)
                lines = [t.lineno for t in traceback.extract_tb(e.__traceback__) if t.filename == arg]
                raise UserError(f"{arg}, line {lines[-1] if lines else '?'}: {type(e).__name__}: {e}") from None
            for k, v in file_scope.items():
                if k in keys:  # a config key: its value is checked whatever its type (a numpy int was skipped)
                    scope[k] = _check_type(k, v, default[k], arg)
                elif not (k.startswith('_') or not isinstance(v, CONFIG_TYPES + (np.generic,))):
                    raise _unknown(k, keys, arg)  # imports, helper functions and _private names are not config
        else:
            if '=' not in arg:
                raise UserError(f"{arg}: flags are written --key=value")
            k, text = arg[2:].split('=', 1)
            if k not in keys:
                raise _unknown(k, keys, 'command line')
            value = parse_value(text)
            if isinstance(default[k], str) and not isinstance(value, str):
                value = text  # a string key takes the text as written: --wandb_run_name=2024, --out_dir=1e3
            scope[k] = _check_type(k, value, default[k], 'command line')
    return {k: scope[k] for k in keys}


def config_help(scope, keys):
    """--help: the usage line and every config key as its script defines it (default and comment)."""
    script = scope.get('__file__') or 'script.py'
    lines = {}
    if os.path.isfile(script):  # each key's first module-level assignment (not a docstring line like 'key=...')
        with open(script, encoding='utf-8') as f:
            source = f.read()
        text = source.splitlines()
        for name, node in module_assignments(ast.parse(source)):
            if name in keys and name not in lines:
                lines[name] = text[node.lineno - 1].rstrip()
    return (f"usage: python {os.path.basename(script)} [config/file.py ...] [--key=value ...]  (applied in order)\n"
            f"config keys (defaults):\n" + "\n".join('  ' + lines.get(k, f"{k} = {scope[k]!r}") for k in keys))


def print_config(config, file=None):
    width = max(len(k) for k in config)
    print0("config:\n" + "\n".join(f"  {k:<{width}} = {v!r}" for k, v in config.items()), file=file)


# ----------------------------------------------------------------------------------------------
# devices, precision, DDP

def is_master():
    return int(os.environ.get('RANK', 0)) == 0


def print0(*args, **kwargs):
    """print on rank 0 only (everything, when not under torchrun)."""
    if is_master():
        print(*args, **kwargs)


def setup_ddp(backend):
    """Initialise torch.distributed when run by torchrun. Returns (ddp, rank, local_rank, world_size)."""
    if int(os.environ.get('RANK', -1)) == -1:
        return False, 0, 0, 1
    if backend == 'nccl' and not torch.cuda.is_available():
        raise UserError("backend=nccl needs CUDA GPUs; on CPU use --backend=gloo --device=cpu")
    from torch.distributed import init_process_group
    init_process_group(backend=backend)
    return True, int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])


def ddp_device(device, local_rank):
    """This DDP rank's device: device='cpu' keeps every process on the CPU (the gloo backend),
    anything else is the rank's own GPU, cuda:local_rank, made the current device (NCCL and
    all_gather_object use the current device)."""
    if device == 'auto':  # a machine without CUDA (gloo on CPU) stays on the CPU
        device = resolve_device(device)
    if device == 'cpu':
        return device
    if device == 'mps':
        raise UserError("DDP runs on CUDA GPUs or CPU processes (--device=cpu --backend=gloo), not on mps")
    device = f'cuda:{local_rank}'
    torch.cuda.set_device(device)
    return device


def split_accumulation(gradient_accumulation_steps, world_size):
    """Each DDP rank's share of an iteration's micro-steps: gradient_accumulation_steps is the total
    across ranks (nanoGPT's convention), so an iteration averages the same number of micro-batches
    whatever the number of processes. Not divisible is an error, not a silent floor."""
    if gradient_accumulation_steps % world_size != 0:
        raise UserError(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible "
                        f"by the {world_size} DDP processes")
    return gradient_accumulation_steps // world_size


def accumulation_weights(counts, world_size=1):
    """Each micro-batch's loss weight in one optimizer step whose loss is the mean over every item
    (pair, target token) of the step, on all ranks: w_i = n_i * W / N, with n_i the items of this
    rank's micro-batch i (counts, a float tensor (k,)), N their total over every rank's micro-batches
    (an all-reduce when world_size W > 1) and the factor W because DDP averages the ranks' gradients:
    (1/W) sum_ranks sum_i w_i mean_i = sum n_i mean_i / N. Full micro-batches alike: w_i = 1/k. A
    short one (an epoch's last) weighs by its size, not as much as a full one. A collective under DDP."""
    total = counts.sum()
    if world_size > 1:
        total = total.clone()
        torch.distributed.all_reduce(total)
    return counts * world_size / total


def ddp_gather(obj):
    """Every rank's `obj` (picklable), as a list indexed by rank. A collective: all ranks call it."""
    objs = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(objs, obj)
    return objs


def ddp_mean(tensor):
    """The mean of `tensor` over the DDP ranks, on every rank (e.g. a loss averaged over each
    rank's micro-batches: the same count on every rank). A collective: all ranks call it."""
    tensor = tensor.clone()
    torch.distributed.all_reduce(tensor)
    return tensor / torch.distributed.get_world_size()


def ddp_broadcast(obj):
    """Rank 0's `obj` (picklable) on every rank. A collective: all ranks call it."""
    objs = [obj]
    torch.distributed.broadcast_object_list(objs, src=0)
    return objs[0]


def saved_rank_state(checkpoint, rank, world_size):
    """This DDP rank's RNG and data state from a checkpoint (a DDP checkpoint holds every rank's in
    'rank_states'; a single-process one is its own), or None for a rank the checkpoint has none
    for. When the process counts differ rank 0 notes that the resume is not exact."""
    states = checkpoint.get('rank_states') or [checkpoint]
    if len(states) != world_size:
        print0(f"note: the checkpoint was saved by {len(states)} process(es), this run has {world_size}: ranks "
               f"without a saved state take rank 0's data position and fresh RNGs (resume not exact)")
    if rank < len(states):
        return states[rank]
    # a rank the checkpoint has none for: rank 0's place in the epoch (the epoch and its share are the
    # same for every rank; EpochBatches rescales the index to this run's plan), no RNG state
    return {k: v for k, v in states[0].items() if k in ('train_loader', 'sft_loader')}


def ddp_wrap(model, local_rank, device_type):
    """The model in DDP, as every DDP script wraps it: gradient_as_bucket_view=True, so the gradients
    are views into DDP's all-reduce buckets instead of a second copy beside them (one gradient's memory
    per GPU). Zero them in place between steps (optimizer.zero_grad(set_to_none=False)): set to None,
    every micro-step that does not sync would allocate a fresh set beside the buckets again."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[local_rank] if device_type == 'cuda' else None,
                                   gradient_as_bucket_view=True)


def lora_summary(model):
    """A LoRA model's one line for the start of a run: rank, targets, trainable parameters of all."""
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"LoRA rank {model.config.lora_rank} on {model.config.lora_targets}: {n_train:,} trainable parameters "
            f"of {model.get_num_params():,}")


def finish_ddp(state_dict):
    """The end of a DDP run: check once that every rank's replica is bit-identical (DDP broadcasts
    rank 0's weights at the start and averages the gradients, so any difference is a bug), print
    the hashes on rank 0, leave the process group, and fail if they differ. Drop the DDP wrapper
    first (model = None): its reducer holds the process group, and a gloo group freed only at
    interpreter exit can abort the process ("terminate called without an active exception")."""
    hashes = ddp_gather(state_sha256(state_dict))
    print0(f"DDP: parameter sha256 per rank: {' '.join(h[:16] for h in hashes)}")
    gc.collect()  # frees a dropped DDP wrapper (its reducer sits in reference cycles) while Python is alive
    torch.distributed.barrier()  # no rank leaves while another is still in a collective
    torch.distributed.destroy_process_group()
    if len(set(hashes)) > 1:
        raise UserError(f"DDP ranks ended with different weights (sha256 {', '.join(h[:16] for h in hashes)})")


def single_process(script):
    """Stop a script that has no DDP when torchrun starts several copies of it: each would train
    alone on the same data and write the same out_dir."""
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:
        raise UserError(f"{script} runs in one process (only train.py, reward_train.py and dpo_train.py have "
                        f"DDP): start it with python, not torchrun")


def state_sha256(state_dict):
    """sha256 of a state dict (names and raw bytes, in sorted name order): equal hashes mean
    bit-identical weights, e.g. the replicas of every DDP rank."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def resolve_device(device):
    """'auto' picks cuda, then mps, then cpu."""
    if device == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        if torch.backends.mps.is_available():
            return 'mps'
        return 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"device={device} but CUDA is not available here; use --device=cpu")
    if device == 'mps' and not torch.backends.mps.is_available():
        raise UserError("device=mps but MPS is not available here; use --device=cpu")
    return device


def resolve_dtype(dtype, device_type):
    """'auto' is bfloat16 on GPUs that support it, float16 on other CUDA GPUs, float32 elsewhere.
    Autocast is used on CUDA only: on CPU and MPS the run is float32 whatever dtype says."""
    if dtype == 'auto':
        if device_type == 'cuda':
            # native bf16 only: T4/V100/RTX 20xx answer True by default (emulated, slow), and need fp16
            return 'bfloat16' if torch.cuda.is_bf16_supported(including_emulation=False) else 'float16'
        return 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise UserError(f"dtype must be float32, bfloat16, float16 or auto, got {dtype!r}")
    if device_type != 'cuda' and dtype != 'float32':
        print0(f"note: dtype={dtype} is used on CUDA only; running float32 on {device_type}")
        return 'float32'
    return dtype


PTDTYPE = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def autocast_context(device_type, dtype):
    """Mixed precision for forward passes: autocast on CUDA for bf16/fp16, else nothing."""
    if device_type == 'cuda' and dtype != 'float32':
        return torch.amp.autocast(device_type='cuda', dtype=PTDTYPE[dtype])
    return nullcontext()


def setup_device(device, dtype):
    """Resolve the device and dtype config keys of a script at once: (device, device_type, dtype,
    autocast context), e.g. ('cuda:1', 'cuda', 'bfloat16', autocast(bf16))."""
    device = resolve_device(device)
    device_type = 'cuda' if device.startswith('cuda') else device
    dtype = resolve_dtype(dtype, device_type)
    return device, device_type, dtype, autocast_context(device_type, dtype)


def grad_scaler(device_type, dtype, state=None):
    """GradScaler, enabled only for float16 (bf16 and fp32 need no loss scaling), resumed from a
    checkpoint's scaler `state`. A state saved without loss scaling (fp32, bf16, CPU: a disabled
    scaler saves {}) leaves a fresh scaler: GradScaler.load_state_dict({}) would raise."""
    scaler = torch.amp.GradScaler(device_type if device_type == 'cuda' else 'cpu',
                                  enabled=(device_type == 'cuda' and dtype == 'float16'))
    if state:
        scaler.load_state_dict(state)
    return scaler


# ----------------------------------------------------------------------------------------------
# schedule, RNG

def get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr, decay_lr=True):
    """Linear warmup for warmup_iters, then cosine decay to min_lr at lr_decay_iters, then min_lr
    (nanoGPT's schedule). decay_lr=False gives a constant learning_rate."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def stream_seed(seed, *keys):
    """The seed of one random stream of a run, e.g. stream_seed(seed, 'epoch', 3): 63 bits of the
    sha256 of (seed, *keys). Streams of different seeds are unrelated; with seed + k instead, seed
    s's k-th epoch or rollout would draw exactly what seed s + 1 draws one epoch or rollout earlier,
    so a sweep over seeds 1, 2, 3 would repeat its random numbers, shifted."""
    return int.from_bytes(hashlib.sha256(repr((int(seed), *keys)).encode()).digest()[:8], 'little') >> 1


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state():
    """Every RNG a run draws from, for an exact resume."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():  # saved per visible GPU; a resume may see fewer
        for i, gpu_state in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, i)


# ----------------------------------------------------------------------------------------------
# checkpoints

def nonfinite_loss_error(loss, iter_num, out_dir):
    """The one-line stop of every training script when its loss is NaN/inf: raised before the
    optimizer step, so the weights and every checkpoint already saved stay as they were."""
    return UserError(f"loss is {loss} at iteration {iter_num}; stopped before the optimizer step, checkpoints in "
                     f"{out_dir} are untouched (lower learning_rate, keep grad_clip, prefer bfloat16 to float16)")


def all_finite(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def save_checkpoint(path, checkpoint, model):
    """Write `checkpoint` to `path` atomically (a temporary file, then a rename), so a crash mid-
    write never leaves a broken file where a good one was. Refuses to save a model with NaN/inf
    weights: the existing file stays as it was."""
    if not all_finite(model):
        raise UserError(f"model has NaN/inf weights; not saving {path} (the previous file is kept)")
    save_atomic(checkpoint, path)


def checkpoint_model_args(path):
    """A checkpoint's model_args without reading its tensors (mmap): the shape a resume must keep."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} not found")
    try:
        try:
            checkpoint = torch.load(path, map_location='cpu', mmap=True, weights_only=False)
        except RuntimeError:  # torch's pre-1.6 format (_use_new_zipfile_serialization=False) has no mmap
            checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which one (as GPT.from_checkpoint does)
        raise UserError(f"checkpoint {path} could not be read: {e}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('model_args'), dict):
        raise UserError(f"{path} is not a checkpoint of this project (no 'model_args')")
    return dict(checkpoint['model_args'])


def checkpoint_script(checkpoint):
    """Which script wrote a checkpoint: its 'script' entry, or for one saved before checkpoints named
    it, the keys only that script writes (a nanoGPT checkpoint is train.py's); None for a bare
    {'model', 'model_args'}."""
    if checkpoint.get('script'):
        return checkpoint['script']
    for key, script in (('kl_coef', 'ppo_train.py'), ('ref_is_base', 'dpo_train.py'), ('best_val_acc', 'reward_train.py'),
                        ('best_val', 'reward_train.py'), ('best_val_loss', 'train.py')):
        if key in checkpoint:
            return script
    return None


def check_resumable(checkpoint, script, path):
    """init_from='resume' reads what `script` itself saved: another script's checkpoint (a DPO
    out_dir resumed by ppo_train.py) or a bare one is one line saying how to start from its weights
    instead (it was a KeyError traceback)."""
    writer = checkpoint_script(checkpoint)
    if writer != script:
        what = f"a {writer} checkpoint" if writer else "not a training run's checkpoint (no iteration, no optimizer)"
        out_dir = os.path.dirname(path) or '.'
        raise UserError(f"{path} is {what}, not {script}'s: init_from='resume' continues a {script} run; to start "
                        f"one from its weights use --init_from={out_dir} and another out_dir")


def check_tokenizer_vocab(tokenizer, vocab_size, source):
    """A model's vocabulary (vocab_size, of `source`) must cover the tokenizer's ids, and a char-level
    tokenizer's must be the model's own: a model with more ids (GPT-2's 50257) samples ids that the
    characters do not name (decoding them failed mid-run). One line otherwise."""
    if vocab_size < tokenizer.n_vocab:
        raise UserError(f"{source} has vocab_size {vocab_size}, fewer than the tokenizer's {tokenizer.n_vocab} "
                        f"tokens (a char-level model? set tokenizer to its dataset)")
    if isinstance(tokenizer, CharTokenizer) and vocab_size != tokenizer.n_vocab:
        raise UserError(f"{source} has vocab_size {vocab_size}, not the {tokenizer.n_vocab} characters of the "
                        f"char-level tokenizer (a model of GPT-2's vocabulary? its tokenizer is 'gpt2')")


def make_out_dir(out_dir, resume=False):
    """Create out_dir (and its parents) if needed; one line, not a traceback, when it cannot be
    (a file there, a file on the way, no permission). resume=True (init_from='resume'): it must
    exist already, and a missing one is an error that creates nothing."""
    if os.path.isdir(out_dir):
        return
    if os.path.exists(out_dir):
        raise UserError(f"out_dir {out_dir} is a file, not a directory")
    if resume:
        raise UserError(f"init_from='resume' but out_dir {out_dir} does not exist: nothing to resume")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"out_dir {out_dir} cannot be created: {e.strerror or e}") from None


def unwrap(model):
    """The plain GPT under DDP and/or torch.compile wrappers."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


# ----------------------------------------------------------------------------------------------
# logging: stdout, CSV (always), wandb (optional)

class Logger:
    """Metrics to a CSV file (a column per metric, grown as new metrics appear) and optionally
    wandb. On resume, rows at or after the resumed step are dropped so the CSV stays one curve.
    The file is rewritten whole (beside it, then renamed: never half a file) at the first row and
    at each new column, appended to otherwise; a run that stops before its first row leaves the
    previous run's log as it was."""

    def __init__(self, path, wandb_log=False, wandb_project=None, wandb_run_name=None, config=None,
                 resume_step=None, enabled=True):
        self.path, self.enabled, self.wandb = path, enabled, None
        self.fields, self.rows = ['step'], []
        self.resume_step, self.tables = resume_step, {}
        if not enabled:
            return
        if resume_step is not None and os.path.isfile(path):
            with open(path, newline='') as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or ['step'])
                self.rows = [r for r in reader if int(float(r['step'])) < resume_step]
        self.written = False  # the file is rewritten at the first row: a run that stops before it leaves the old log
        if wandb_log:
            try:
                import wandb  # optional; WANDB_MODE=offline works without a network
            except ImportError:
                raise UserError("wandb_log=True needs wandb: pip install wandb (or run with --wandb_log=False)")
            self.wandb = wandb.init(project=wandb_project, name=wandb_run_name, config=config)

    def _rewrite(self):
        """The whole CSV, written beside it and renamed over it: the old one or the new one, never half."""
        def write(f):
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(self.rows)
        write_atomic(self.path, write)
        self.written = True

    def log(self, metrics, step):
        if not self.enabled:
            return
        row = {'step': step, **{k: (v.item() if torch.is_tensor(v) else v) for k, v in metrics.items()}}
        self.rows.append(row)
        if any(k not in self.fields for k in row) or not self.written:
            self.fields += [k for k in row if k not in self.fields]
            self._rewrite()
        else:
            with open(self.path, 'a', newline='') as f:
                csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def log_table(self, name, rows, step):
        """Rows of text (dicts with the same keys, e.g. prompt/response/score samples) to <name>.csv
        next to the metrics CSV, one line each with its step (dropped from `step` on, on resume,
        like the metrics), and to wandb as a wandb.Table under `name`."""
        if not self.enabled or not rows:
            return
        if name not in self.tables:
            self.tables[name] = Logger(os.path.join(os.path.dirname(self.path), f'{name}.csv'),
                                       resume_step=self.resume_step)
        for row in rows:
            self.tables[name].log(row, step)
        if self.wandb is not None:
            import wandb
            columns = list(rows[0])
            data = [[step] + [row[c] for c in columns] for row in rows]
            self.wandb.log({name: wandb.Table(columns=['step'] + columns, data=data)}, step=step)

    def finish(self):
        if self.wandb is not None:
            self.wandb.finish()


def read_log(path):
    """(path, {column: ([steps], [values])}) of a Logger CSV (a log.csv or the run directory holding
    it), numbers only: a cell is skipped where its metric was not logged at that step (empty), is
    text or is not finite, so each column is the curve of its metric. A missing file, a CSV without
    a 'step' column and one with no rows yet are one-line errors (plot.py, demo.py, bench.py)."""
    if os.path.isdir(path):
        path = os.path.join(path, 'log.csv')
    if not os.path.isfile(path):
        raise UserError(f"log {path} not found")
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or 'step' not in reader.fieldnames:
            raise UserError(f"{path} is not a log.csv of this project (no 'step' column)")
        series = {k: ([], []) for k in reader.fieldnames if k != 'step'}
        n_rows = 0
        for row in reader:
            n_rows += 1
            for k, (steps, values) in series.items():
                try:
                    v = float(row[k])
                except (TypeError, ValueError):  # not logged at this step (empty), or text
                    continue
                if math.isfinite(v):
                    steps.append(float(row['step']))
                    values.append(v)
    if n_rows == 0:
        raise UserError(f"{path} has no rows yet")
    return path, {k: s for k, s in series.items() if s[0]}


def step_metrics(dt, n_tokens, device_type):
    """The speed columns every training script logs per iteration (bench.py --scripts reads them):
    time_ms (wall time of the iteration), tokens_per_s (n_tokens / dt; what counts as a token is
    the script's: the rows it trains on, padding included, or PPO's generated response tokens)
    and, on CUDA, mem/peak_gib: torch.cuda.max_memory_allocated() so far, in GiB."""
    metrics = {'time_ms': dt * 1000, 'tokens_per_s': n_tokens / dt}
    if device_type == 'cuda':
        metrics['mem/peak_gib'] = torch.cuda.max_memory_allocated() / GiB
    return metrics


class Timer:
    """Wall time between calls to lap(), in seconds."""

    def __init__(self):
        self.t = time.time()

    def lap(self):
        t, self.t = self.t, time.time()
        return self.t - t


# ----------------------------------------------------------------------------------------------
# tokenizers

class CharTokenizer:
    """Character-level tokenizer from a prepare.py meta.pkl (stoi/itos). Its EOS is the newline
    character (when the vocabulary has one): a response is one line, ended by '\n' (the demo's
    convention; char-level data has no <|endoftext|>)."""

    def __init__(self, meta):
        self.stoi, self.itos = meta['stoi'], meta['itos']
        self.n_vocab = meta['vocab_size']
        self.eot_token = self.stoi.get('\n')

    def encode(self, s, allow_eos=False):  # allow_eos: GPT2Tokenizer's signature; a newline is always EOS here
        unknown = sorted(set(c for c in s if c not in self.stoi))
        if unknown:
            raise UserError(f"characters {''.join(unknown)!r} are not in the char-level vocabulary")
        return [self.stoi[c] for c in s]

    def decode(self, ids):
        return ''.join(self.itos[i] for i in ids)


class GPT2Tokenizer:
    """GPT-2's BPE (tiktoken). Offline: point TIKTOKEN_CACHE_DIR at the cached BPE files."""

    def __init__(self):
        import tiktoken
        try:
            self.enc = tiktoken.get_encoding('gpt2')
        except Exception as e:  # no network and no cache: say how to fix it, in one line
            raise UserError(f"the GPT-2 BPE files could not be loaded ({type(e).__name__}); without internet, "
                            f"set TIKTOKEN_CACHE_DIR to a directory holding them") from None
        self.n_vocab = self.enc.n_vocab
        self.eot_token = self.enc.eot_token  # <|endoftext|>, 50256

    def encode(self, s, allow_eos=False):
        """GPT-2 BPE ids of s. Text is text: a literal '<|endoftext|>' in data (a prompt, a response
        scraped from another model's output) is ordinary tokens, never the EOS, which the scripts
        append by id where a response ends (else SFT would learn to stop there). allow_eos=True
        reads it as the EOS token: sample.py's start, as nanoGPT's sample.py does."""
        return self.enc.encode(s, allowed_special={'<|endoftext|>'}) if allow_eos else self.enc.encode_ordinary(s)

    def decode(self, ids):
        return self.enc.decode([i for i in ids if i < self.n_vocab])


def get_tokenizer(name=None, strict=False):
    """The tokenizer called `name`: 'gpt2' (or None) is GPT-2's BPE; a path to a meta.pkl, or a
    dataset name with a data/<name>/meta.pkl, is that char-level vocabulary. Any other name is
    GPT-2's BPE (a BPE dataset such as 'openwebtext' has no meta.pkl), or, with strict=True (a
    script's `tokenizer` key), a UserError; so is, with strict=True, a char-level vocabulary
    without the newline that is its EOS."""
    if name in (None, '', 'gpt2'):
        return GPT2Tokenizer()
    meta_path = name if name.endswith('.pkl') else os.path.join('data', name, 'meta.pkl')
    if os.path.isfile(meta_path):
        with open(meta_path, 'rb') as f:
            tokenizer = CharTokenizer(pickle.load(f))
        if strict and tokenizer.eot_token is None:  # the scripts end every response (and pad) with it
            raise UserError(f"tokenizer={name!r}: the char-level vocabulary {meta_path} has no newline "
                            f"character, the EOS of char-level data")
        return tokenizer
    if strict:
        raise UserError(f"tokenizer={name!r}: neither 'gpt2' nor a char-level vocabulary ({meta_path} not found)")
    return GPT2Tokenizer()


# ----------------------------------------------------------------------------------------------
# records for SFT, reward modelling and DPO: json, jsonl, jsonl.gz or a Hugging Face dataset

def read_records(source, split='train'):
    """A list of dict records from a .json file (a list of objects), a .jsonl or .jsonl.gz file
    (one object a line), or else the name of a Hugging Face dataset (its `split`). A malformed
    line is a UserError naming the file and line number; an empty source is an error too. A name
    that cannot be a hub dataset (`name` or `owner/name`) is a local path: a missing one is a
    'not found' error, not a download attempt."""
    local = (source.endswith(('.json', '.jsonl', '.gz')) or os.path.exists(source) or source.count('/') > 1
             or source.startswith(('.', '/', '~')))
    if local:
        if not os.path.isfile(source):
            raise UserError(f"data file {source} not found")
        opener = gzip.open if source.endswith('.gz') else open
        records = []
        try:
            with opener(source, 'rt', encoding='utf-8') as f:
                if source.endswith('.json'):
                    try:
                        records = json.load(f)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{source}, line {e.lineno}: invalid JSON: {e.msg}") from None
                    if not isinstance(records, list):
                        raise UserError(f"{source}: expected a JSON list of records")
                else:
                    for lineno, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise UserError(f"{source}, line {lineno}: invalid JSON: {e.msg}") from None
        except (OSError, EOFError, UnicodeDecodeError) as e:  # not gzip, cut off, not UTF-8
            raise UserError(f"{source} could not be read: {e}") from None
    else:
        import datasets  # heavy import, only for hub datasets; HF_ENDPOINT mirrors work
        try:
            records = list(datasets.load_dataset(source, split=split))
        except Exception as e:  # no such dataset or split, no network: one line, not datasets' traceback
            first = (str(e).strip().splitlines() or [''])[0][:300]
            raise UserError(f"{source}: not a local file, and the Hugging Face hub could not load it "
                            f"(split {split!r}): {type(e).__name__}: {first}") from None
    if not records:
        raise UserError(f"{source} has no records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise UserError(f"{source}: record {i} is not a JSON object")
    return records


# The plain-text chat format for GPT-2, hh-rlhf's: a system message first, as plain text, then
# each turn as "\n\nHuman: {content}" or "\n\nAssistant: {content}".
CHAT_TAGS = {'user': '\n\nHuman:', 'assistant': '\n\nAssistant:'}


def render_chat(messages, where='messages'):
    """[{"role", "content"}, ...] -> (prompt, response). The response is the last message, which
    must be the assistant's: " " + its content. The prompt is every earlier message rendered in
    the chat format, ending with "\\n\\nAssistant:" (earlier assistant turns are context, not
    trained on). prompt + response is the rendered dialogue."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    parts = []
    for i, m in enumerate(messages):
        role, content = m.get('role'), m.get('content')
        if not isinstance(content, str):
            raise UserError(f"{where}: message {i} has no string 'content'")
        if role == 'system' and i == 0:
            parts.append(content)
        elif role in CHAT_TAGS:
            parts.append(f"{CHAT_TAGS[role]} {content}")
        else:
            raise UserError(f"{where}: message {i} has role {role!r} (system first, then user/assistant)")
    if messages[-1]['role'] != 'assistant':
        raise UserError(f"{where}: the last message must be the assistant's response")
    prompt = ''.join(parts[:-1]) + CHAT_TAGS['assistant']
    return prompt, ' ' + messages[-1]['content']


def sft_pair(record, where):
    """(prompt, response) text of an SFT record: {"prompt", "response"} or {"messages": [...]}."""
    if isinstance(record.get('prompt'), str) and isinstance(record.get('response'), str):
        return record['prompt'], record['response']
    if 'messages' in record:
        return render_chat(record['messages'], where)
    raise UserError(f"{where} has neither 'prompt' and 'response' strings nor 'messages': {str(record)[:80]}")


def tokenize_pair(prompt_ids, response_ids, eos_id, block_size, truncation):
    """ids = prompt + response + [EOS] for a model that sees block_size tokens (inputs are ids[:-1],
    targets ids[1:]). Too long: truncation='left' cuts the prompt's start (keeping at least one
    prompt token and the whole response); 'drop', or a response that cannot fit, gives None. An
    empty prompt is [EOS], GPT-2's <|endoftext|> as a start token, so the response's first token is
    predicted from something (with no prompt it had no target at all). Returns (ids, n_prompt) or None."""
    prompt_ids = list(prompt_ids) or [eos_id]
    response_ids = list(response_ids) + [eos_id]
    max_len = block_size + 1
    n_over = len(prompt_ids) + len(response_ids) - max_len
    if n_over > 0:
        if truncation == 'drop' or len(response_ids) >= max_len:
            return None
        prompt_ids = prompt_ids[n_over:]
    return list(prompt_ids) + response_ids, len(prompt_ids)


def sft_batch(examples, pad_id, device):
    """Right-padded (X, Y), both (B, T), from [(ids, n_prompt), ...]. Y[t] = ids[t + 1] on response
    and EOS targets, IGNORE_INDEX on prompt and padding targets. Padding sits after the real tokens,
    so causal attention never lets a real token see it: no attention mask is needed, and the pad
    id (any valid token) never matters."""
    from model import IGNORE_INDEX
    T = max(len(ids) for ids, _ in examples) - 1
    X = torch.full((len(examples), T), pad_id, dtype=torch.long)     # (B, T)
    Y = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for i, (ids, n_prompt) in enumerate(examples):
        ids = torch.tensor(ids)
        X[i, :len(ids) - 1] = ids[:-1]
        Y[i, n_prompt - 1:len(ids) - 1] = ids[n_prompt:]  # targets from the first response token on
    return X.to(device), Y.to(device)


def token_budget_batches(lengths, tokens_per_batch, generator):
    """Lists of example indices such that len(batch) * (longest length in it) <= tokens_per_batch:
    examples are shuffled, stably sorted by length (similar lengths share a batch: little padding),
    cut greedily, and the batches shuffled. Every example is in exactly one batch."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    order.sort(key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:  # ascending lengths: lengths[i] is the longest of current + [i]
        if current and (len(current) + 1) * lengths[i] > tokens_per_batch:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]


class EpochBatches:
    """Micro-batches over a list of items, epoch after epoch: `batch_size` items at a time or, with
    tokens_per_batch > 0, token-budget batches over `lengths`. collate(list of items) makes the
    tensors. The order of epoch e comes from stream_seed(seed, 'epoch', e) and the position is (epoch, index), so
    state_dict() is all an exact resume needs. Used for SFT examples and preference pairs.
    Under DDP (rank, world_size) every rank plans the same epoch and takes every world_size-th
    micro-batch, so the ranks split each epoch between them, as torch's DistributedSampler does;
    the last len(batches) % world_size micro-batches of an epoch are dropped to keep them in step."""

    def __init__(self, items, batch_size, seed, collate, lengths=None, tokens_per_batch=0, rank=0, world_size=1,
                 drop_last=False):
        self.items, self.batch_size, self.seed, self.collate = items, batch_size, seed, collate
        self.drop_last = drop_last  # fixed-size batches: leave out an epoch's short last one
        self.lengths, self.tokens_per_batch = lengths, tokens_per_batch
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0
        self.order = 'stream'  # 'seed+epoch': a checkpoint's from before stream_seed, resumed as it began
        self.batches = self._plan()

    def _plan(self):
        seed = stream_seed(self.seed, 'epoch', self.epoch) if self.order == 'stream' else self.seed + self.epoch
        gen = torch.Generator().manual_seed(seed)
        if self.tokens_per_batch > 0:
            batches = token_budget_batches(self.lengths, self.tokens_per_batch, gen)
        else:
            perm = torch.randperm(len(self.items), generator=gen).tolist()
            batches = [perm[i:i + self.batch_size] for i in range(0, len(perm), self.batch_size)]
            if self.drop_last and batches and len(batches[-1]) < self.batch_size:
                batches = batches[:-1]
        n = len(batches) // self.world_size * self.world_size
        if n == 0:
            raise UserError(f"{len(batches)} micro-batches per epoch cannot be split across {self.world_size} "
                            f"DDP ranks: more data or a smaller batch")
        return batches[self.rank:n:self.world_size]

    def next(self):
        if self.index >= len(self.batches):
            self.epoch, self.index = self.epoch + 1, 0
            self.batches = self._plan()
        batch = self.batches[self.index]
        self.index += 1
        return self.collate([self.items[i] for i in batch])

    def state_dict(self):
        return {'epoch': self.epoch, 'index': self.index, 'n_batches': len(self.batches), 'order': self.order}

    def load_state_dict(self, state):
        self.epoch, self.index = state['epoch'], state['index']
        self.order = state.get('order', 'seed+epoch')  # a state without it: the order it was saved in
        self.batches = self._plan()
        saved = state.get('n_batches', len(self.batches))
        if saved != len(self.batches):  # another batch_size, tokens_per_batch or world size: same share of the epoch
            self.index = min(len(self.batches), round(self.index * len(self.batches) / max(saved, 1)))
            if self.rank == 0:
                print(f"note: {len(self.batches)} micro-batches per epoch (per rank) where the checkpoint had "
                      f"{saved}: resuming {self.index}/{len(self.batches)} into epoch {self.epoch} (not exact)")


# ----------------------------------------------------------------------------------------------
# preference pairs for the reward model and DPO

def preference_triple(record, where):
    """(prompt, chosen, rejected) texts of a preference record: {"prompt", "chosen", "rejected"},
    or hh-rlhf's {"chosen", "rejected"} full dialogues, split at their last "\\n\\nAssistant:"
    (both must share the prompt)."""
    chosen, rejected = record.get('chosen'), record.get('rejected')
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise UserError(f"{where} needs 'chosen' and 'rejected' strings: {str(record)[:80]}")
    if isinstance(record.get('prompt'), str):
        return record['prompt'], chosen, rejected
    tag = CHAT_TAGS['assistant']
    cut_c, cut_r = chosen.rfind(tag) + len(tag), rejected.rfind(tag) + len(tag)
    if cut_c < len(tag) or chosen[:cut_c] != rejected[:cut_r]:
        raise UserError(f"{where}: chosen and rejected do not share a prompt ending with {tag!r}; "
                        f"give a 'prompt' field or prepare the data with data/hh_rlhf/prepare.py")
    return chosen[:cut_c], chosen[cut_c:], rejected[cut_r:]


def tokenize_preference(prompt_ids, chosen_ids, rejected_ids, eos_id, max_len, truncation):
    """Two sequences prompt + response + [EOS], each at most max_len tokens; too long: the shared
    prompt is cut from its left for both ('left') or the pair is dropped ('drop', or when a
    response cannot fit; an empty prompt is [EOS], as in tokenize_pair). Returns ((chosen_ids,
    n_prompt), (rejected_ids, n_prompt)) or None."""
    prompt_ids = list(prompt_ids) or [eos_id]
    longer = max(len(chosen_ids), len(rejected_ids)) + 1  # + EOS
    n_over = len(prompt_ids) + longer - max_len
    if n_over > 0:
        if truncation == 'drop' or longer >= max_len:  # keep at least one prompt token
            return None
        prompt_ids = prompt_ids[n_over:]
    prompt_ids, n_prompt = list(prompt_ids), len(prompt_ids)
    return ((prompt_ids + list(chosen_ids) + [eos_id], n_prompt),
            (prompt_ids + list(rejected_ids) + [eos_id], n_prompt))


def pad_left(prompts, pad_id, device):
    """Prompts (token lists) left-padded with pad_id for generation: ids (B, T) and attention_mask
    (B, T), 0 on the padding. The mask, not ids != pad_id, says what is padding: GPT-2 pads with
    its EOS."""
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (T - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, attention_mask


def pad_right(examples, pad_id, device):
    """[(ids, n_prompt), ...] -> ids (B, T) right-padded with pad_id, attention_mask (B, T) and
    response_mask (B, T): 1.0 on the response and EOS tokens (n_prompt <= t < length)."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    lengths = torch.tensor([len(x) for x, _ in examples])
    n_prompt = torch.tensor([n for _, n in examples])
    for i, (x, _) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
    t = torch.arange(T)[None, :]
    attention_mask = (t < lengths[:, None]).long()
    response_mask = ((t >= n_prompt[:, None]) & (t < lengths[:, None])).float()
    return ids.to(device), attention_mask.to(device), response_mask.to(device)


def holdout_by_prompt(pairs, val_fraction, seed, where):
    """A seeded val share of tokenized preference pairs [((chosen_ids, n_prompt), (rejected_ids,
    n_prompt), margin), ...], split by prompt: every pair of a prompt is on the same side, so val
    pairs never share a prompt (and often a response) with training pairs, which would flatter val
    accuracy (demo.py makes up to 6 pairs of each prompt). The prompts are taken in a seeded order
    until at least max(1, int(len(pairs) * val_fraction)) pairs are held out; with one pair a prompt
    this is the seeded permutation of the pairs. Returns (val indices, train indices)."""
    groups = {}
    for i, ((ids, n_prompt), _, _) in enumerate(pairs):
        groups.setdefault(tuple(ids[:n_prompt]), []).append(i)
    groups = list(groups.values())
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val, val, k = max(1, int(len(pairs) * val_fraction)), [], 0
    while len(val) < n_val and k < len(order):
        val, k = val + groups[order[k]], k + 1
    train = [i for g in order[k:] for i in groups[g]]
    if not train:
        raise UserError(f"{where}: {len(pairs)} pairs ({len(groups)} prompts) are too few to hold out "
                        f"val_fraction={val_fraction}")
    return val, train


def load_preference_pairs(source, split, tokenizer, block_size, truncation):
    """Tokenized preference pairs [((chosen_ids, n_prompt), (rejected_ids, n_prompt), margin), ...]
    from a preference data source (see read_records and preference_triple); margin is the record's
    'margin' field or None. Pairs whose chosen equals rejected, and pairs that cannot fit block_size,
    are skipped; returns (pairs, counts) with counts of 'identical', 'truncated' and 'dropped'."""
    pairs, counts = [], {'identical': 0, 'truncated': 0, 'dropped': 0}
    for i, record in enumerate(read_records(source, split)):
        prompt, chosen, rejected = preference_triple(record, f"{source}: record {i}")
        if chosen == rejected:
            counts['identical'] += 1
            continue
        prompt_ids = tokenizer.encode(prompt)
        pair = tokenize_preference(prompt_ids, tokenizer.encode(chosen), tokenizer.encode(rejected),
                                   tokenizer.eot_token, block_size, truncation)
        if pair is None:
            counts['dropped'] += 1
            continue
        counts['truncated'] += pair[0][1] < len(prompt_ids)
        margin = record.get('margin')
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                                   or not math.isfinite(margin)):
            raise UserError(f"{source}: record {i}: margin must be a finite number, got {margin!r}")
        pairs.append((pair[0], pair[1], float(margin) if margin is not None else None))
    if not pairs:
        raise UserError(f"{source}: no usable preference pair ({counts})")
    return pairs, counts


# ----------------------------------------------------------------------------------------------
# scoring with a reward model

@torch.no_grad()
def reward_example(tokenizer, prompt, response, block_size, cut_response=False):
    """A (prompt, response) text as score_texts scores it: tokenize_pair's (ids, n_prompt) of
    prompt + response + EOS within block_size, the prompt cut from its left. A response that does
    not fit with one prompt token is a UserError, or with cut_response=True keeps its last
    block_size - 2 tokens (the reward is read at its end: the whole text is cut from the left)."""
    response_ids = tokenizer.encode(response)
    if cut_response:
        response_ids = response_ids[max(0, len(response_ids) - (block_size - 2)):]
    ex = tokenize_pair(tokenizer.encode(prompt), response_ids, tokenizer.eot_token, block_size - 1, 'left')
    if ex is None:
        raise UserError(f"a response of {len(response_ids)} tokens does not fit block_size={block_size}")
    return ex


@torch.no_grad()  # a scorer: no autograd graph, whoever calls it
def score_texts(model, tokenizer, texts, block_size, batch_size, device, ctx=nullcontext(), cut_response=False):
    """Rewards (N,) of [(prompt, response), ...] texts under a value-head model: each scored as
    prompt + response + EOS (as reward_train.py trains it; the prompt is cut from its left to fit
    block_size, and with cut_response=True a response too long alone too: see reward_example),
    right-padded, the value head read at each row's EOS. Puts the model in eval mode."""
    from losses import gather_last
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        examples = [reward_example(tokenizer, prompt, response, block_size, cut_response)
                    for prompt, response in texts[i:i + batch_size]]
        ids, attention_mask, _ = pad_right(examples, tokenizer.eot_token, device)
        with ctx:
            values = model.value(model.trunk(ids))  # right padding: causal attention needs no mask
        out.append(gather_last(values, attention_mask).float().cpu())
    return torch.cat(out)


def reward_stats(model, tokenizer, texts, block_size, batch_size, device, ctx=nullcontext()):
    """(mean, std) of the rewards of reference (prompt, response) texts, for reward normalisation."""
    rewards = score_texts(model, tokenizer, texts, block_size, batch_size, device, ctx)
    return rewards.mean().item(), rewards.std().item()


class RewardModel:
    """A reward checkpoint of reward_train.py, loaded for scoring texts (PPO, sample.py). score()
    returns raw rewards, or (r - reward_mean) / reward_std with normalize=True. weights_dtype
    'bfloat16' holds the frozen weights in bf16 (half the memory). A response longer than the model's
    block_size - 2 tokens is scored on its last block_size - 2 (after the prompt's last token), not refused."""

    def __init__(self, path, device='cpu', dtype='float32', batch_size=8, weights_dtype='float32'):
        from model import GPT
        self.model, checkpoint = GPT.from_checkpoint(path, device='cpu')
        if self.model.value_head is None:
            raise UserError(f"{path} is not a reward model (no value head)")
        if 'reward_std' not in checkpoint:
            print0(f"note: {path} has no reward normalisation stats; normalize=True uses mean 0, std 1")
        self.mean, self.std = checkpoint.get('reward_mean', 0.0), checkpoint.get('reward_std', 1.0)
        self.model.to(device=device, dtype=PTDTYPE[weights_dtype]).eval()
        self.device, self.batch_size = device, batch_size
        self.ctx = autocast_context('cuda' if device.startswith('cuda') else device, dtype)
        self.tokenizer = get_tokenizer(checkpoint.get('config', {}).get('tokenizer', 'gpt2'), strict=True)

    def score(self, prompts, responses, normalize=False):
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        # cut_response: a response longer than the model's context (sample.py's long samples; in PPO, whose
        # max_new_tokens is checked at start, a decoded response that re-encodes longer) keeps its end
        rewards = score_texts(self.model, self.tokenizer, list(zip(prompts, responses)),
                              self.model.config.block_size, self.batch_size, self.device, self.ctx, cut_response=True)
        return (rewards - self.mean) / self.std if normalize else rewards


class HFRewardModel:
    """A Hugging Face sequence-classification reward model (a directory or a hub name, e.g.
    OpenAssistant/reward-model-deberta-v3-large-v2) with its own tokenizer, with RewardModel's
    score() API. The texts are re-tokenised with the model's tokenizer: by default (template='')
    as the text pair (prompt, response), the way OpenAssistant's reward models are trained; with a
    template such as '{prompt}{response}' as that one text. The reward is logits[:, 0]; a model
    with num_labels > 1 is refused (which label would be the reward is the model's business).
    Batches are right-padded with an attention mask; a pair longer than the model's max length
    loses the start of its prompt (of the whole text with a template; a response too long alone
    keeps its end, see _tokenize). The padding positions hold
    the config's pad_token_id, whatever the tokenizer pads with (HF's decoder classifiers score the
    rightmost token that is not that id: padding with another one, e.g. a tokenizer's EOS, scored
    every shorter text of a batch at its padding); a model whose config has none (HF scores the last
    token; or whose pad_token_id is no id of its vocabulary) is padded with an id that no text of the
    batch contains, so a text ending in EOS is scored at that EOS, as alone. normalize=True uses the reward_mean and reward_std of the model's
    config.json (export_hf.py writes this project's there), mean 0 and std 1 where it has none. The model
    runs in weights_dtype with autocast off, also when score() is called under the policy's autocast."""

    def __init__(self, name_or_path, device='cpu', batch_size=8, template='', weights_dtype='float32'):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer  # heavy, only when used
        if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, 'config.json')):
            raise UserError(f"reward_model {name_or_path} is a directory without a Hugging Face config.json "
                            f"(for this project's reward checkpoint give its .pt file, e.g. {name_or_path}/best.pt)")
        if template and ('{prompt}' not in template or '{response}' not in template):
            raise UserError(f"reward_template must contain {{prompt}} and {{response}}, got {template!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=torch.float32)
        except (OSError, ValueError) as e:  # missing files, no network, an unknown architecture
            raise UserError(f"reward_model {name_or_path!r} is not a loadable Hugging Face sequence-"
                            f"classification model: {str(e).splitlines()[0]}") from None
        if self.model.config.num_labels != 1:
            raise UserError(f"reward_model {name_or_path} has num_labels={self.model.config.num_labels}; a reward "
                            f"model has one output (num_labels=1)")
        tok = self.tokenizer
        if tok.pad_token is None:
            if (tok.eos_token or tok.unk_token) is None:
                raise UserError(f"the tokenizer of {name_or_path} has no pad, EOS or UNK token to pad with")
            tok.pad_token = tok.eos_token or tok.unk_token
        # HF's decoder classifiers (GPT-2, Llama...) score the rightmost token that is not the config's
        # pad; a config without one scores the last token (batch 1). Such a model gets, per batch, an
        # id that no real token of the batch has as its pad (EOS would be skipped at a text's end)
        pad, vocab = self.model.config.pad_token_id, self.model.config.vocab_size
        self.free_pad = pad is None or not 0 <= pad < vocab  # (an id past the embedding would crash it)
        self.mean = float(getattr(self.model.config, 'reward_mean', 0.0))
        self.std = float(getattr(self.model.config, 'reward_std', 1.0))
        if not self.std > 0:
            raise UserError(f"reward_model {name_or_path}: its config's reward_std is {self.std}, not > 0")
        tok.padding_side, tok.truncation_side = 'right', 'left'
        limits = [n for n in (tok.model_max_length, getattr(self.model.config, 'max_position_embeddings', None),
                              getattr(self.model.config, 'n_positions', None)) if n is not None and n < 1_000_000]
        if not limits:  # (an unset model_max_length is 1e30)
            raise UserError(f"reward_model {name_or_path}: neither its tokenizer's model_max_length nor its "
                            f"config tells its max length; set model_max_length in its tokenizer_config.json")
        self.max_length = min(limits)
        self.model.to(device=device, dtype=PTDTYPE[weights_dtype]).eval()
        # autocast off, whoever calls: the model computes in its own weights_dtype, not the policy's (the
        # policy's bf16 autocast rounded a float32 reward model's scores to bf16)
        self.no_autocast = torch.autocast(torch.device(device).type, enabled=False)
        self.device, self.batch_size, self.template = device, batch_size, template
        self.noted_cut = False  # _note_cut's: once per model

    def encode(self, prompts, responses):
        """The model's inputs for a batch of texts: input_ids, attention_mask (and token_type_ids)."""
        inputs = self._tokenize(prompts, responses)
        ids, real = inputs['input_ids'], inputs['attention_mask'].bool()
        if self.free_pad:  # pad with an id that no real token of the batch has (None: there is none)
            unused = torch.ones(max(self.model.config.vocab_size, int(ids.max()) + 1), dtype=torch.bool)
            unused[ids[real]] = False
            self.model.config.pad_token_id = int(unused.nonzero()[0]) if unused.any() else None
        if self.model.config.pad_token_id is not None:  # the id the model skips, not the tokenizer's pad
            inputs['input_ids'] = ids.masked_fill(~real, self.model.config.pad_token_id)
        return inputs

    def _tokenize(self, prompts, responses):
        # Too long a text loses tokens from the left (truncation_side='left'): the reward is read at the
        # end, so the end of the response is kept. A response too long on its own keeps its end too,
        # rather than stopping a PPO run mid-way (the policy's max_new_tokens GPT-2 tokens can be any
        # number of this tokenizer's), with a note the first time
        tok = self.tokenizer
        if self.template:  # one text, cut from its left: the prompt's start, then the response's
            longest = max(map(len, tok([self.template.format(prompt='', response=r) for r in responses],
                                       verbose=False)['input_ids']))  # (measured: no too-long warning)
            self._note_cut(longest, longest > self.max_length)
            texts = [self.template.format(prompt=p, response=r) for p, r in zip(prompts, responses)]
            return tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors='pt')
        # a pair: only_first cuts the prompt's start, keeping the whole response when it fits with one
        # prompt token (a prompt cut to none is a tokenizer error); a longer response keeps its last
        # `room` tokens after the prompt's last token, as RewardModel cuts a .pt's (not HF's
        # 'longest_first', which would cut the response to about half the room, the prompt taking the rest)
        room = self.max_length - tok.num_special_tokens_to_add(pair=True) - 1
        lengths = [len(ids) for ids in tok(responses, add_special_tokens=False, verbose=False)['input_ids']]
        self._note_cut(max(lengths), max(lengths) > room)
        if max(lengths) <= room:
            return tok(prompts, responses, padding=True, truncation='only_first', max_length=self.max_length,
                       return_tensors='pt')
        rows = [tok(p, r, truncation='only_first', max_length=self.max_length) if n <= room else self._cut_pair(p, r, room)
                for p, r, n in zip(prompts, responses, lengths)]
        return tok.pad(rows, padding=True, return_tensors='pt')

    def _cut_pair(self, prompt, response, room):
        """The pair (prompt's last token, response's last `room` tokens) with the tokenizer's special
        tokens, built by its tokenizers backend (transformers 5 has no prepare_for_model)."""
        backend = getattr(self.tokenizer, '_tokenizer', None)
        if not hasattr(backend, 'post_process'):  # a tokenizer without a Rust backend: HF's own pair cut
            return self.tokenizer(prompt, response, truncation='longest_first', max_length=self.max_length)
        a, b = backend.encode(prompt, add_special_tokens=False), backend.encode(response, add_special_tokens=False)
        a.truncate(1, direction='left')
        b.truncate(room, direction='left')
        enc = backend.post_process(a, b, add_special_tokens=True)
        row = {'input_ids': enc.ids, 'attention_mask': enc.attention_mask}
        if 'token_type_ids' in self.tokenizer.model_input_names:
            row['token_type_ids'] = enc.type_ids
        return row

    def _note_cut(self, n_tokens, cut):
        if cut and not self.noted_cut:
            self.noted_cut = True
            print0(f"note: a response of {n_tokens} reward-model tokens is longer than the reward model's max "
                   f"length {self.max_length} holds with its prompt: scored on its end (cut from the left); "
                   f"noted once")

    @torch.no_grad()
    def score(self, prompts, responses, normalize=False):
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out = []
        for i in range(0, len(prompts), self.batch_size):
            inputs = self.encode(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])
            batches = [inputs]
            if self.model.config.pad_token_id is None:  # every id in use (a tiny vocabulary): one text at a time
                lengths = inputs['attention_mask'].sum(1).tolist()
                batches = [{k: v[j:j + 1, :n] for k, v in inputs.items()} for j, n in enumerate(lengths)]
            for x in batches:
                with self.no_autocast:
                    out.append(self.model(**{k: v.to(self.device) for k, v in x.items()}).logits[:, 0].float().cpu())
        rewards = torch.cat(out) if out else torch.zeros(0)
        return (rewards - self.mean) / self.std if normalize else rewards


def preference_logps(model, pairs, pad_id, device):
    """Summed response log-probs (prompt excluded, EOS included) of both sides of each pair
    [(chosen_example, rejected_example, ...), ...] (as load_preference_pairs gives them), in ONE
    forward pass over 2B right-padded rows, chosen first: -> (chosen_logps (B,), rejected_logps
    (B,)), float32. Right padding needs no attention mask (a real token never sees later ones).
    Run it under torch.no_grad() for a reference model, and autocast as the caller's forwards."""
    from losses import sequence_logprobs
    B = len(pairs)
    ids, _, response_mask = pad_right([p[0] for p in pairs] + [p[1] for p in pairs], pad_id, device)  # (2B, T)
    logits, _ = model(ids)                                      # (2B, T, V)
    logps = sequence_logprobs(logits, ids, response_mask)       # (2B,)
    return logps[:B], logps[B:]


# ----------------------------------------------------------------------------------------------
# caches of computed values (e.g. DPO's reference log-probs), keyed by what they were computed from

def weights_fingerprint(source):
    """What a resumed run checks its reference against: a file's size and the sha256 of its first
    and last MiB (a copy or a move keeps them; other weights of the same shape change them); for a
    directory, that of its ckpt.pt, else of every file in it by name; a gpt2* or hub name is itself."""
    def file_fingerprint(path):
        size, h = os.path.getsize(path), hashlib.sha256()
        with open(path, 'rb') as f:
            h.update(f.read(1 << 20))
            f.seek(max(1 << 20, size - (1 << 20)))
            h.update(f.read())
        return size, h.hexdigest()
    if os.path.isfile(source):
        return file_fingerprint(source)
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, 'ckpt.pt')):
            return file_fingerprint(os.path.join(source, 'ckpt.pt'))
        return tuple((f, file_fingerprint(os.path.join(source, f))) for f in sorted(os.listdir(source))
                     if os.path.isfile(os.path.join(source, f)))
    return source


def check_source_unchanged(source, fingerprint, what):
    """A resumed run's `what` (its reference) must be the weights it started with: a UserError when
    weights_fingerprint(source) differs from `fingerprint`, recorded at the start (None: not recorded)."""
    if fingerprint is None:
        return
    if fingerprint != source and not os.path.exists(source):  # (a gpt2* name is its own fingerprint)
        raise UserError(f"{what} {source} not found (from {os.getcwd()}): resume where the run started")
    if weights_fingerprint(source) != fingerprint:
        raise UserError(f"{what} {source} changed since this run started (other contents): resuming would go on "
                        f"against other weights; restore it, or start a new run")


def source_identity(source):
    """What identifies the weights or data behind `source` for a cache key: a file's absolute
    path, size and modification time; for a directory, those of ckpt.pt if it has one, else of
    every file in it; anything else (a gpt2* or hub name) is its own identity."""
    def file_id(path):
        st = os.stat(path)
        return (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if os.path.isfile(source):
        return file_id(source)
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, 'ckpt.pt')):
            return file_id(os.path.join(source, 'ckpt.pt'))
        return tuple(file_id(os.path.join(source, f)) for f in sorted(os.listdir(source))
                     if os.path.isfile(os.path.join(source, f)))
    return source


def write_atomic(path, write, binary=False, fsync=False):
    """write(f) into a temporary file in path's directory, then rename it to path: readers see the
    old file or the whole new one, never half of one (also with two runs writing at once); a failed
    write (a full disk) leaves no temporary file behind. fsync=True: the new file is on disk before
    the rename (a power cut)."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, 'wb') if binary else open(tmp, 'w', newline='') as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_atomic(obj, path):
    """torch.save, atomically and on disk before the rename (write_atomic)."""
    write_atomic(path, lambda f: torch.save(obj, f), binary=True, fsync=True)


# ----------------------------------------------------------------------------------------------
# the policy's view of a rollout (PPO, GRPO, RLOO)

def response_forward(model, ids, attention_mask, n_prompt, temperature, with_values, with_entropy=False):
    """Per-token log-probs (at the sampling temperature), entropies and values of the response
    tokens ids[:, n_prompt:], each (B, n); entropies only with_entropy and values only with_values
    (else None: the PPO update needs neither entropy, and computing it there would keep its
    (B, n, V) softmax alive through the backward). The logits and the value at position t belong
    to the token at t + 1 (the value of the state before that token is chosen), so the response
    tokens are scored from positions n_prompt - 1 ... T - 2. attention_mask covers the
    left-padded prompt and the response up to its EOS."""
    from losses import entropy_from_logits, token_logprobs
    h = model.trunk(ids, attention_mask)[:, n_prompt - 1:-1]  # (B, n, C)
    # logits outside autocast, in the weights' precision (as generate's): bf16 would round GPT-2's
    # logits (tens) by up to 0.25, noise that every PPO ratio would carry
    with torch.autocast(h.device.type, enabled=False):
        logits = model.lm_head(h.to(model.lm_head.weight.dtype))
    values = model.value(h) if with_values else None
    logp = token_logprobs(logits, ids[:, n_prompt:], temperature)
    entropy = entropy_from_logits(logits.float() / temperature) if with_entropy else None
    return logp, entropy, values


def response_values(model, ids, attention_mask, n_prompt):
    """The values of response_forward alone, (B, n), for a separate critic: the same positions
    (n_prompt - 1 ... T - 2), without the (B, n, V) vocabulary projection the critic never uses."""
    return model.value(model.trunk(ids, attention_mask)[:, n_prompt - 1:-1])


def run_adapters(model, lora, source, log=print):
    """Every script's model from init_from (`source`'s model, loaded without this run's LoRA keys):
    with `lora` (lora_overrides, lora_rank > 0) fresh adapters on top of its own merged ones, so the
    run starts from `source`'s function and the adapters-off model is `source` (DPO's and PPO's
    reference); without, any adapters `source` has (a LoRA SFT) merged in, so every weight trains.
    (Loading a LoRA checkpoint with the run's LoRA keys instead would rescale its trained adapters by
    another lora_alpha, or keep them as the only trained weights under a frozen base.) Returns the model."""
    if lora:
        return model.with_new_adapters(**lora)
    if model.config.lora_rank:
        log(f"{source} has LoRA adapters; lora_rank=0: merged into its weights, every weight trains")
        model.merge_lora()
    return model


def lora_overrides(lora_rank, lora_alpha, lora_dropout, lora_targets):
    """The LoRA keys of a script's config as GPT.from_pretrained/GPTConfig overrides ({} when
    lora_rank is 0), with lora_targets checked so a typo is a one-line UserError."""
    from model import parse_lora_targets
    try:
        targets = parse_lora_targets(lora_targets)
    except ValueError as e:
        raise UserError(str(e)) from None
    if lora_rank < 0:
        raise UserError(f"lora_rank must be >= 0 (0: no LoRA), got {lora_rank}")
    if not lora_rank:
        return {}
    if not targets:
        raise UserError(f"lora_rank={lora_rank} needs at least one of lora_targets (attn, mlp), got {lora_targets!r}")
    if lora_alpha <= 0:
        raise UserError(f"lora_alpha must be > 0 with lora_rank={lora_rank} (the adapters' scale is "
                        f"lora_alpha / lora_rank), got {lora_alpha}")
    return dict(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=lora_targets)


# ----------------------------------------------------------------------------------------------
# memory planner: predicted GPU memory of a training run, before any model is loaded.
# Pure arithmetic on the model's shape and the script's settings; nothing here touches a GPU.
# Every figure is a prediction (bytes), not a measurement; the activation formula is checked on
# CPU against the tensors autograd actually saves (tests/test_memory.py).

GPT2_SHAPES = {  # the released GPT-2s (vocab 50257, 1024 positions), so no weights are downloaded to plan
    'gpt2': dict(n_layer=12, n_head=12, n_embd=768),
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),
    'gpt2-large': dict(n_layer=36, n_head=20, n_embd=1280),
    'gpt2-xl': dict(n_layer=48, n_head=25, n_embd=1600),
}
DTYPE_BYTES = {'float32': 4, 'bfloat16': 2, 'float16': 2}
OPTIMIZER_STATE_BYTES = {'adamw': 8, 'adamw8bit': 2}  # per trainable parameter: exp_avg + exp_avg_sq
GiB = 2 ** 30


def _shape(cfg, key, default=None):
    """A model-shape field from a GPTConfig, any object with attributes, or a dict."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def param_counts(cfg, value_head=False):
    """Exact parameter counts of model.py's GPT for a shape (n_layer, n_head, n_embd, vocab_size,
    block_size, bias, lora_rank, lora_targets): {'total', 'trainable', 'matmul'}. With h = n_embd,
    L = n_layer, V = vocab_size, P = block_size, r = lora_rank:
        total = V h (wte, tied with lm_head) + P h (wpe) + L (12 h^2 + 13 h) + 2 h (ln_f)
                + L r (6 h [attn] + 10 h [mlp]) + (h + 1 with a value head)
    (without biases: 13 h -> 2 h per layer and ln_f's 2 h -> h). trainable: everything, or with
    LoRA only the adapters and the value head. matmul: the weights the Linears multiply with
    (trunk Linears, adapters and the tied lm_head), which autocast copies to 16 bits."""
    h, L, V = _shape(cfg, 'n_embd'), _shape(cfg, 'n_layer'), _shape(cfg, 'vocab_size')
    P, bias = _shape(cfg, 'block_size'), _shape(cfg, 'bias', True)
    r = _shape(cfg, 'lora_rank', 0) or 0
    targets = {t.strip() for t in (_shape(cfg, 'lora_targets', 'attn') or '').split(',') if t.strip()}
    value_head = value_head or bool(_shape(cfg, 'value_head', False))
    per_layer = 12 * h * h + (13 * h if bias else 2 * h)  # c_attn 3h^2, c_proj h^2, c_fc 4h^2, c_proj 4h^2; + biases, 2 LNs
    lora = L * r * ((6 * h if 'attn' in targets else 0) + (10 * h if 'mlp' in targets else 0)) if r else 0
    head = h + 1 if value_head else 0
    total = V * h + P * h + L * per_layer + (2 * h if bias else h) + lora + head
    matmul = V * h + L * 12 * h * h + lora
    return {'total': total, 'trainable': (lora + head) if r else total, 'matmul': matmul}


def activation_bytes(cfg, batch_size, seq_len, dtype='bfloat16', gradient_checkpointing=False,
                     attention_mask=False, dropout=0.0, logit_rows=None, value_head=False, value_rows=None):
    """Bytes that autograd saves for the backward of one forward pass of model.py's GPT (with the
    LM loss over `logit_rows` tokens, default batch_size * seq_len), on CUDA with SDPA's flash or
    memory-efficient kernels. Returns {'per_layer', 'layers', 'outside', 'logits', 'saved'} where
    saved = layers + outside + logits and the per-layer figure is per layer for the whole batch.

    Per token and per layer (h = n_embd, a = n_head, s = seq_len, p = 2 bytes under 16-bit
    autocast, 4 in fp32; the residual stream x stays fp32 under autocast, 4 bytes), read off
    Block.forward:
        ln_1 and ln_2 inputs (residual, fp32)                    8 h
        their mean and rstd                                      16
        c_attn input                                             p h
        q, k, v (one 3h tensor, kept by SDPA)                    3 p h
        attention output (= c_proj's input: SDPA returns it in
        (B, T, nh, hs) layout, so .contiguous() copies nothing)  p h
        c_fc input                                               p h
        GELU input, MLP c_proj input                             8 p h
        SDPA's log-sum-exp (fp32, per head)                      4 a
      = 36 h + 4 a + 16 bytes in bf16 (64 h + 4 a + 16 in fp32). Korthikanti et al. 2022 (arXiv:
    2205.05198, sec. 4.1) count 34 h + 5 a s per token for a 16-bit Megatron layer: no s^2 attention
    matrices here (flash/memory-efficient SDPA recomputes them), but the fp32 residual stream costs
    4 h more and there are no dropout masks at dropout 0.
        dropout > 0: + 2 h (two 1-byte residual dropout masks; attention dropout keeps an RNG seed)
        attention_mask (left padding): + p s (SDPA turns the (B, 1, T, T) bool mask into an additive
        bias in each layer and keeps it)
        LoRA (frozen base): a frozen Linear keeps no input (autograd saves only what a gradient
        needs), so c_attn's input (p h) is kept only with 'attn' adapters, c_fc's and MLP c_proj's
        (p h + 4 p h) only with 'mlp' ones; each adapter adds p r (its A output) and, with
        lora_dropout, a 1-byte mask of its input width.
    Outside the layers, per token: token ids 8 (+ 8 position ids with a mask), ln_f input 4 h + 8;
    per logit row: lm_head input p h (trainable lm_head only), targets 8, the fp32 log-softmax 4 V
    ('logits'); with a value head its input, p h per row it scores (value_rows: default the logit
    rows, else every token).
    With gradient_checkpointing each layer keeps only its input, 4 h per token (the bool mask,
    s bytes per token, is shared by the layers); one layer's activations come back during its
    backward (see memory_plan). The first layer of a LoRA model keeps a little less (its input
    needs no gradient); not modelled."""
    h, a, L = _shape(cfg, 'n_embd'), _shape(cfg, 'n_head'), _shape(cfg, 'n_layer')
    V = _shape(cfg, 'vocab_size')
    p = DTYPE_BYTES[dtype]
    tokens = batch_size * seq_len
    logit_rows = tokens if logit_rows is None else logit_rows
    r = _shape(cfg, 'lora_rank', 0) or 0
    targets = {t.strip() for t in (_shape(cfg, 'lora_targets', 'attn') or '').split(',') if t.strip()}
    attn, mlp = (not r or 'attn' in targets), (not r or 'mlp' in targets)  # inputs kept for a weight gradient
    per_token = 8 * h + 16 + 4 * a + p * (3 * h + h + 4 * h) + (p * h if attn else 0) + (5 * p * h if mlp else 0)
    if dropout > 0:
        per_token += 2 * h
    if attention_mask:
        per_token += p * seq_len
    if r:
        widths = ([h, h] if 'attn' in targets else []) + ([h, 4 * h] if 'mlp' in targets else [])
        lora_dropout = _shape(cfg, 'lora_dropout', 0.0) or 0.0
        per_token += sum(p * r + (d if lora_dropout > 0 else 0) for d in widths)
    per_layer = per_token * tokens
    outside = tokens * (8 + (8 if attention_mask else 0) + 4 * h + 8)
    value_rows = (logit_rows or tokens) if value_rows is None else value_rows
    outside += logit_rows * (8 + (0 if r else p * h)) + (p * h * value_rows if value_head else 0)
    if gradient_checkpointing:
        layers = L * 4 * h * tokens + (tokens * seq_len if attention_mask else 0)
    else:
        layers = L * per_layer
    logits = 4 * V * logit_rows
    return {'per_layer': per_layer, 'layers': layers, 'outside': outside, 'logits': logits,
            'saved': layers + outside + logits}


def memory_plan(cfg, batch_size, seq_len, dtype='bfloat16', optimizer='adamw', gradient_checkpointing=False,
                attention_mask=False, dropout=0.0, logit_rows=None, value_head=False, value_rows=None, frozen=(),
                critic=None, kv_batch=0, kv_len=0, kv_logit_rows=0, batch_key='batch_size',
                rows_per_unit=1, seq_key='block_size', lora_frees=()):
    """Predicted peak bytes of a training step: a dict of named parts and 'total'.

    cfg: the trained model's shape (GPTConfig, object or dict; lora_rank > 0 = only adapters
    train). batch_size x seq_len: rows and tokens of one forward pass with grad (a micro-batch);
    logit_rows: tokens whose logits get a loss (default all; 0 for a reward model); value_rows: tokens
    the value head scores (default the logit rows, else all: a reward model scores every row). Weights are
    kept in fp32 and `dtype` is the autocast dtype, as every script here does.
        weights      4 bytes x all parameters (policy + separate critic)
        gradients    4 x trainable parameters (fp32 grads of fp32 weights)
        optimizer    8 x trainable (AdamW's two fp32 moments), 2 with optimizer='adamw8bit'
        autocast     2 x matmul weights under bf16/fp16 autocast: the 16-bit copies each Linear
                     keeps for its backward (the whole model's, at the end of the forward). Autocast
                     caches the copy of a trainable weight for its whole region; a frozen one (LoRA's
                     base) is cast at each use and kept only where autograd saves it, so with LoRA and
                     gradient checkpointing only the tied lm_head's copy, the adapters' and one
                     recomputed layer's remain
        activations  activation_bytes' saved layers + outside, + one layer's activations for
                     the backward (the recomputed layer with checkpointing; the working set
                     of the layer being differentiated without), x 2 with a separate critic
        logits       (p + 12) bytes x V per logit row: the 16-bit logits the caller holds, the
                     saved fp32 log-softmax, and two fp32 (rows, V) gradients in the backward
        frozen       models held without gradients: [(name, shape cfg, dtype, remedies)], e.g.
                     the reference copy or the reward model (remedies: {'flag': new dtype or
                     None = gone}, the flags check_fits may suggest)
        kv_cache     the rollout (PPO): the larger of generation's KV cache, 2 x n_layer x kv_batch
                     x kv_len x h x p (freed when generate returns), and the no-grad log-probs and
                     entropies of the whole rollout after it, 20 bytes x V per response token
                     (kv_logit_rows: fp32 logits, scaled logits, softmax, masked logits, logsumexp's
                     temporary; measured on CPU), plus the autocast copies of the trainable weights,
                     cached in either; this phase and the training phase (gradients, autocast copies,
                     activations, logits) are never alive together, so the total takes the larger
        overhead     0.5 GiB (CUDA context) + 5 % of the rest for allocator fragmentation: a guess
    batch_key, rows_per_unit, seq_key: the script's names for the batch and sequence (e.g. DPO's
    batch_size counts pairs: 2 rows each), so check_fits can name the flag to change. lora_frees:
    the names of frozen models a LoRA run does not load (the reference: the adapters-off policy)."""
    p = DTYPE_BYTES[dtype]
    counts = param_counts(cfg, value_head)
    weights, trainable = 4 * counts['total'], counts['trainable']
    n_models = 1
    if critic is not None:  # a separate critic: another full model with grads and optimizer states
        c = param_counts(critic, value_head=True)
        weights += 4 * c['total']
        trainable += c['trainable']
        n_models = 2
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZER_STATE_BYTES)}, got {optimizer!r}")
    act = activation_bytes(cfg, batch_size, seq_len, dtype, gradient_checkpointing, attention_mask, dropout,
                           logit_rows, value_head, value_rows)
    V = _shape(cfg, 'vocab_size')
    rows = batch_size * seq_len if logit_rows is None else logit_rows
    frozen_bytes = sum(param_counts(f[1], value_head=True)['total'] * DTYPE_BYTES[f[2]]
                       for f in frozen if f[2] is not None)
    h, L = _shape(cfg, 'n_embd'), _shape(cfg, 'n_layer')
    lora_matmul = counts['matmul'] - V * h - L * 12 * h * h  # the adapters' weights (0 without LoRA)
    if lora_matmul and gradient_checkpointing:  # frozen copies: lm_head's, and one recomputed layer's
        copies = V * h + 12 * h * h + lora_matmul
    else:  # every copy: cached (trainable) or saved by autograd for the input gradient (frozen)
        copies = counts['matmul']
    critic_matmul = param_counts(critic, value_head=True)['matmul'] if critic is not None else 0
    cached = (lora_matmul or counts['matmul']) + critic_matmul  # trainable weights' copies, cached in a rollout
    plan = {
        'weights': weights,
        'gradients': 4 * trainable,
        'optimizer': OPTIMIZER_STATE_BYTES[optimizer] * trainable,
        'autocast': 2 * (copies + critic_matmul) if p < 4 else 0,
        'activations': n_models * (act['layers'] + act['outside'] + act['per_layer']),
        'logits': (p + 12) * V * rows,
        'frozen': frozen_bytes,
        'kv_cache': (max(2 * L * kv_batch * kv_len * h * p, 20 * V * kv_logit_rows)
                     + (2 * cached if p < 4 else 0)) if kv_batch else 0,
    }
    train_phase = plan['gradients'] + plan['autocast'] + plan['activations'] + plan['logits']
    rest = plan['weights'] + plan['optimizer'] + plan['frozen'] + max(train_phase, plan['kv_cache'])
    plan['overhead'] = int(0.5 * GiB + 0.05 * rest)
    plan['total'] = rest + plan['overhead']
    plan['inputs'] = dict(cfg=cfg, batch_size=batch_size, seq_len=seq_len, dtype=dtype, optimizer=optimizer,
                          gradient_checkpointing=gradient_checkpointing, attention_mask=attention_mask,
                          dropout=dropout, logit_rows=logit_rows, value_head=value_head, value_rows=value_rows,
                          frozen=tuple(frozen),
                          critic=critic, kv_batch=kv_batch, kv_len=kv_len, kv_logit_rows=kv_logit_rows,
                          batch_key=batch_key, rows_per_unit=rows_per_unit, seq_key=seq_key,
                          lora_frees=tuple(lora_frees))
    return plan


PLAN_ROWS = (  # (key, label) in the order format_plan prints them
    ('weights', 'weights (fp32)'), ('gradients', 'gradients (fp32)'), ('optimizer', 'optimizer states'),
    ('autocast', '16-bit weight copies'), ('activations', 'activations'), ('logits', 'logits + loss'),
    ('frozen', 'frozen models'), ('kv_cache', 'rollout'), ('overhead', 'CUDA context + slack'),
)


def format_plan(plan, device_bytes=None):
    """The plan as a small table in GiB, one part a line, the total last (and the device size)."""
    lines = [f"  {label:<22} {plan[key] / GiB:7.2f} GiB" for key, label in PLAN_ROWS if plan[key]]
    lines.append(f"  {'predicted peak':<22} {plan['total'] / GiB:7.2f} GiB"
                 + (f"  of {device_bytes / GiB:.0f} GiB" if device_bytes else ""))
    if plan['kv_cache']:
        lines.append("  (the rollout and the training step are not alive together: the peak counts the larger)")
    return "\n".join(lines)


def _replan(plan, **changes):
    return memory_plan(**{**plan['inputs'], **changes})


def fit_remedies(plan, device_bytes):
    """Config changes that bring the plan under device_bytes: [(flags, predicted total)]. Each of
    gradient checkpointing, 8-bit AdamW, a lighter frozen model and LoRA alone; the largest
    micro-batch that fits as is and with checkpointing on (which keeps more of the batch); else a
    shorter block_size; and if nothing alone fits, those changes together."""
    i = plan['inputs']
    fits = []

    def attempt(flags, **changes):
        total = _replan(plan, **changes)['total']
        if total <= device_bytes:
            fits.append((flags, total))
            return True
        return False

    singles = []
    if not i['gradient_checkpointing']:
        singles.append(("--gradient_checkpointing=True", dict(gradient_checkpointing=True)))
    if i['optimizer'] == 'adamw':
        singles.append(("--optimizer=adamw8bit", dict(optimizer='adamw8bit')))
    for idx, (name, shape, dtype, remedies) in enumerate(i['frozen']):
        for flag, new_dtype in remedies.items():
            frozen = list(i['frozen'])
            frozen[idx] = (name, shape, new_dtype, {})
            singles.append((f"--{flag}", dict(frozen=tuple(frozen))))
    if not (_shape(i['cfg'], 'lora_rank', 0) or 0):
        cfg = {k: _shape(i['cfg'], k) for k in ('n_layer', 'n_head', 'n_embd', 'vocab_size', 'block_size', 'bias')}
        kept = tuple(f for f in i['frozen'] if f[0] not in i['lora_frees'])  # LoRA's reference: the policy itself
        singles.append(("--lora_rank=16 --lora_targets=attn,mlp",
                        dict(cfg={**cfg, 'lora_rank': 16, 'lora_targets': 'attn,mlp'}, frozen=kept)))
    for flags, changes in singles:
        attempt(flags, **changes)

    def smaller_batch(prefix, **base):  # the largest micro-batch (in the script's units) that fits
        units = i['batch_size'] // i['rows_per_unit']
        while units > 1:
            units //= 2
            rows = units * i['rows_per_unit']
            scaled = {k: None if i[k] is None else i[k] * rows // i['batch_size'] for k in ('logit_rows', 'value_rows')}
            if attempt(f"{prefix}--{i['batch_key']}={units}", batch_size=rows, **scaled, **base):
                return True
        return False
    found = smaller_batch("")
    if not i['gradient_checkpointing']:
        found = smaller_batch("--gradient_checkpointing=True ", gradient_checkpointing=True) or found
    if not found and not fits:
        seq = i['seq_len']
        while seq > 128:
            seq //= 2
            scaled = {k: None if i[k] is None else i[k] * seq // i['seq_len'] for k in ('logit_rows', 'value_rows')}
            if attempt(f"--{i['seq_key']}={seq}", seq_len=seq, **scaled):
                break
    if not fits:  # nothing alone: everything together
        changes = {}
        for _, change in singles:
            changes.update(change)
        attempt(" ".join(f for f, _ in singles), **changes)
    return fits


def check_fits(plan, device_bytes, where='this config'):
    """Raise a one-line UserError when the plan's predicted peak exceeds device_bytes, naming the
    flags that would each make it fit (with their predicted peaks). Returns the plan otherwise."""
    if plan['total'] <= device_bytes:
        return plan
    fits = fit_remedies(plan, device_bytes)
    advice = ("; would fit with " + ", or ".join(f"{f} ({t / GiB:.1f} GiB)" for f, t in fits)) if fits else \
        "; no change of batch, sequence, precision, checkpointing, optimizer or LoRA makes it fit"
    raise UserError(f"{where} needs ~{plan['total'] / GiB:.1f} GiB (predicted: weights {plan['weights'] / GiB:.1f}, "
                    f"optimizer {plan['optimizer'] / GiB:.1f}, activations {plan['activations'] / GiB:.1f}, "
                    f"logits {plan['logits'] / GiB:.1f}), more than the {device_bytes / GiB:.0f} GiB "
                    f"available{advice}")


def make_optimizer(param_groups, optimizer, lr, betas, device_type, fused=None, weight_decay=0.0):
    """The training optimizer by name: 'adamw' (torch.optim.AdamW; fused on CUDA unless
    fused=False) or 'adamw8bit' (bitsandbytes' AdamW8bit, Dettmers et al. 2022, arXiv:2110.02861:
    both moments in 8 bits with block-wise scales, 2 bytes per parameter instead of 8; CUDA only).
    param_groups: parameters or a list of {'params', 'weight_decay'} groups; weight_decay applies
    where a group sets none (0, not AdamW's silent default of 0.01)."""
    if optimizer == 'adamw':
        fused = device_type == 'cuda' if fused is None else fused
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay,
                                 **(dict(fused=True) if fused else {}))
    if optimizer == 'adamw8bit':
        if device_type != 'cuda':
            raise UserError(f"optimizer='adamw8bit' needs a CUDA GPU (bitsandbytes), not {device_type}; "
                            f"use optimizer='adamw'")
        try:
            import bitsandbytes as bnb  # heavy and optional: only for this optimizer
        except ImportError:
            raise UserError("optimizer='adamw8bit' needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(param_groups, lr=lr, betas=betas, weight_decay=weight_decay)
    raise UserError(f"optimizer must be one of {', '.join(OPTIMIZER_STATE_BYTES)}, got {optimizer!r}")


def module_assignments(tree):
    """(name, node) of each `name = value` at a module's top level, in order (what a config sets)."""
    return [(node.targets[0].id, node) for node in tree.body if isinstance(node, ast.Assign)
            and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)]


def script_defaults(script):
    """The default config of a script (train.py, dpo_train.py...) without running it: the literal
    module-level assignments before its `configure(globals())` line, read with ast (and arithmetic
    on them; anything else is left out). Of a config file: its literal assignments, nothing run."""
    with open(script) as f:
        tree = ast.parse(f.read(), script)
    scope = {}
    for name, node in module_assignments(tree):
        if 'configure' in ast.unparse(node.value):  # config = configure(globals()): the defaults end here
            break
        try:  # literals and arithmetic on them (5 * 8); anything else is not config
            scope[name] = eval(compile(ast.Expression(node.value), script, 'eval'), {'__builtins__': {}}, dict(scope))
        except Exception:
            continue
    return scope


def model_shape(source, config_dir='config', _seen=()):
    """The shape of `source` (an init_from value) as a dict, without loading weights: a gpt2* name
    (GPT2_SHAPES), a Hugging Face directory (config.json), a checkpoint of this project (its
    model_args, read with mmap), or — for a checkpoint not trained yet — the config/*.py file
    whose out_dir writes it (then that config's own init_from and LoRA settings)."""
    vocab = dict(vocab_size=50257, block_size=1024, bias=True)
    if source in GPT2_SHAPES:
        return {**GPT2_SHAPES[source], **vocab}
    ckpt = os.path.join(source, 'ckpt.pt') if os.path.isdir(source) else source
    if os.path.isfile(ckpt):
        return checkpoint_model_args(ckpt)
    if os.path.isfile(os.path.join(source, 'config.json')):
        with open(os.path.join(source, 'config.json')) as f:
            c = json.load(f)
        return dict(n_layer=c['n_layer'], n_head=c['n_head'], n_embd=c['n_embd'], vocab_size=c['vocab_size'],
                    block_size=c['n_positions'], bias=True)
    out_dir = os.path.normpath(os.path.dirname(source) if source.endswith('.pt') else source)
    for name in sorted(os.listdir(config_dir)) if os.path.isdir(config_dir) else []:
        path = os.path.join(config_dir, name)
        if not name.endswith('.py') or path in _seen:
            continue
        try:  # read, never run: any .py file may sit beside a config (bench.py --plan dir/x.py)
            scope = script_defaults(path)
        except (SyntaxError, ValueError, OSError):  # not a config file
            continue
        if os.path.normpath(str(scope.get('out_dir', ''))) == out_dir:
            if 'init_from' in scope:
                init = scope['init_from']
            else:  # the script's default
                here = os.path.dirname(os.path.abspath(__file__))
                init = script_defaults(os.path.join(here, script_of_config(scope))).get('init_from', 'scratch')
            if init == 'scratch':  # train.py's defaults where the config sets nothing; a char-level dataset's vocab
                base = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=False, vocab_size=50304)
                base.update({k: scope[k] for k in base if k in scope})
                meta = os.path.join('data', str(scope.get('dataset', '')), 'meta.pkl')
                if not scope.get('sft_data') and os.path.isfile(meta):
                    with open(meta, 'rb') as f:
                        base['vocab_size'] = pickle.load(f)['vocab_size']
            else:
                base = model_shape(init, config_dir, _seen + (path,))
            lora = {k: scope[k] for k in ('lora_rank', 'lora_targets', 'lora_dropout') if k in scope}
            return {**base, **lora}
    raise UserError(f"cannot tell the model size of {source!r}: not a gpt2* name, no checkpoint or "
                    f"config.json there, and no {config_dir}/*.py has out_dir {out_dir!r}")


def script_of_config(config):
    """Which script a config is for, from the keys it sets: ppo_train.py, dpo_train.py,
    reward_train.py or else train.py."""
    if {'reward_model', 'reward_fn', 'advantage_estimator', 'prompt_data', 'max_new_tokens'} & set(config):
        return 'ppo_train.py'
    if {'beta', 'loss_type', 'precompute_ref_logps', 'ref_from'} & set(config):
        return 'dpo_train.py'
    if {'pref_data', 'chosen_lm_coef', 'norm_data'} & set(config):
        return 'reward_train.py'
    return 'train.py'


PLANNER_KEYS = dict(gradient_checkpointing=False, optimizer='adamw')  # planned even before a script has them


def plan_for_script(script, config, config_dir='config'):
    """The memory plan of one of this project's scripts for its full effective `config` dict
    (what configure() returns): the same plan the script's own check uses. The micro-batch is
    batch_size x block_size (reward/DPO: 2 rows a pair; SFT with tokens_per_batch: that many
    tokens), PPO's is mini_batch_size left-padded rows of block_size, logits over max_new_tokens."""
    c = {**PLANNER_KEYS, **config}
    script = os.path.basename(script)
    init = c['init_from']
    if init == 'resume':
        init = c['out_dir']
    if init == 'scratch':  # train.py's vocabulary: the dataset's meta.pkl (char-level), else GPT-2's padded to 50304
        meta = os.path.join('data', c.get('dataset', ''), 'meta.pkl')
        vocab_size = 50304
        if not c.get('sft_data') and os.path.isfile(meta):
            with open(meta, 'rb') as f:
                vocab_size = pickle.load(f)['vocab_size']
        shape = dict(n_layer=c['n_layer'], n_head=c['n_head'], n_embd=c['n_embd'], vocab_size=vocab_size,
                     block_size=c['block_size'], bias=c['bias'])
    else:
        shape = model_shape(init, config_dir)
    if not (script == 'train.py' and c['init_from'] == 'resume'):  # a resumed train.py keeps the checkpoint's block_size
        shape = {**shape, 'block_size': min(shape.get('block_size', c['block_size']), c['block_size'])}
    if c.get('lora_rank'):
        shape.update(lora_rank=c['lora_rank'], lora_targets=c['lora_targets'], lora_dropout=c.get('lora_dropout', 0.0))
    elif c['init_from'] != 'resume':
        shape['lora_rank'] = 0  # a LoRA init_from's adapters are merged (run_adapters): every weight trains
    dtype = 'bfloat16' if c['dtype'] == 'auto' else c['dtype']  # 'auto' is bf16 on any recent GPU
    T = shape['block_size']  # the sequence the run trains at (a model cannot take more than its own)
    common_args = dict(dtype=dtype, optimizer=c['optimizer'], gradient_checkpointing=c['gradient_checkpointing'],
                       dropout=c.get('dropout', 0.0))
    lora = bool(shape.get('lora_rank'))
    if script == 'train.py':
        if c.get('sft_data') and c.get('tokens_per_batch', 0) > 0:
            rows = max(1, c['tokens_per_batch'] // T)
            return memory_plan(shape, rows, T, batch_key='tokens_per_batch', rows_per_unit=1, **common_args)
        return memory_plan(shape, c['batch_size'], T, **common_args)
    if script == 'reward_train.py':
        rows = 2 * c['batch_size']
        # the value head scores every row; the LM term's logits are the chosen rows' only (lm_head(h[:B]))
        return memory_plan(shape, rows, T, value_head=True, value_rows=rows * T,
                           logit_rows=c['batch_size'] * T if c['chosen_lm_coef'] > 0 else 0,
                           rows_per_unit=2, **common_args)
    if script == 'dpo_train.py':
        rows, frozen = 2 * c['batch_size'], []
        if not c['precompute_ref_logps'] and not (lora and not c['ref_from']):  # LoRA: the adapters-off policy
            ref = model_shape(c['ref_from'], config_dir) if c['ref_from'] else shape
            frozen = [('reference', {**ref, 'lora_rank': 0}, c['ref_dtype'],
                       {"ref_dtype='bfloat16'": 'bfloat16', 'precompute_ref_logps=True': None})]
        return memory_plan(shape, rows, T, frozen=frozen, rows_per_unit=2,
                           lora_frees=() if c['ref_from'] else ('reference',), **common_args)
    if script == 'ppo_train.py':
        grouped = c['advantage_estimator'] != 'gae'
        n_seq = c['batch_size'] * (c['group_size'] if grouped else 1)
        shared = not grouped and c['critic'] == 'shared'
        frozen = []
        if not c['reward_fn']:
            on_gpu = c.get('reward_device', '') != 'cpu'  # on the CPU it takes no GPU memory
            frozen.append(('reward model', {**model_shape(c['reward_model'], config_dir), 'lora_rank': 0},
                           c.get('reward_dtype', 'float32') if on_gpu else None,
                           {"reward_dtype='bfloat16'": 'bfloat16', "reward_device='cpu'": None} if on_gpu else {}))
        if not lora:
            frozen.append(('reference', {**shape, 'lora_rank': 0}, c['ref_dtype'], {"ref_dtype='bfloat16'": 'bfloat16'}))
        critic = None
        if not grouped and c['critic'] == 'separate':
            critic = {**model_shape(c['reward_model'], config_dir), 'lora_rank': 0}
        mb = c['mini_batch_size']
        return memory_plan(shape, mb, T, attention_mask=True, logit_rows=mb * c['max_new_tokens'], value_head=shared,
                           frozen=frozen, critic=critic, kv_batch=n_seq, kv_len=T,
                           kv_logit_rows=n_seq * c['max_new_tokens'], batch_key='mini_batch_size',
                           lora_frees=('reference',), **common_args)
    raise UserError(f"no memory plan for {script} (train.py, reward_train.py, dpo_train.py, ppo_train.py)")


def plan_memory(script, config, device, check=True):
    """What every training script calls before loading a model: print the predicted peak GPU
    memory of `script` run with `config` (the planner's table) and, on CUDA, stop with a one-line
    error naming the flags that would fit when the prediction exceeds the device's memory.
    check=False (the script's check_memory key) skips both. A model whose size cannot be told
    without loading it is noted, not an error."""
    if not check:
        return None
    try:
        plan = plan_for_script(script, config)
    except (UserError, OSError, KeyError, ValueError) as e:
        print0(f"memory plan: skipped ({e})")
        return None
    device_bytes = torch.cuda.get_device_properties(torch.device(device)).total_memory \
        if str(device).startswith('cuda') else None
    if device_bytes:  # the breakdown where it matters; one line elsewhere
        print0(f"predicted peak GPU memory of {os.path.basename(script)} with this config:\n" + format_plan(plan, device_bytes))
    else:
        print0(f"predicted peak GPU memory on a GPU: {plan['total'] / GiB:.2f} GiB (breakdown: python bench.py --plan)")
    if device_bytes and config.get('eval_only'):  # nanoGPT's config/eval_gpt2*.py: no gradients, no optimizer
        print0("eval_only: that is a training step's peak, an upper bound for an evaluation; not checked")
    elif device_bytes:
        check_fits(plan, device_bytes)
    return plan


def plan_config(config_file, overrides=(), script=None):
    """(script, effective config, plan) for a config file as `python <script> config_file
    --overrides` would run it; the script is guessed from the file's keys unless given."""
    if not os.path.isfile(config_file):
        raise UserError(f"config file {config_file} not found")
    if script is None:  # guessed from the keys the file assigns; configure() below runs it as the script would
        try:
            with open(config_file) as f:
                tree = ast.parse(f.read(), config_file)
        except SyntaxError as e:
            raise UserError(f"{config_file}, line {e.lineno}: syntax error: {e.msg}") from None
        script = script_of_config({name for name, _ in module_assignments(tree)})
    here = os.path.dirname(os.path.abspath(__file__))
    scope = {**script_defaults(os.path.join(here, script))}
    scope.update({k: v for k, v in PLANNER_KEYS.items() if k not in scope})
    config = configure(scope, [config_file, *overrides])
    return script, config, plan_for_script(script, config, os.path.dirname(config_file) or '.')
