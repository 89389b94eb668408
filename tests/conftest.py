"""Shared fixtures: tiny random GPT-2s saved the way transformers saves them (no downloads), and
load_definitions, which takes functions out of a script without running it."""
import ast
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))
# what the tests read instead of downloading (README, Quick start: how to make ../shared once)
SHARED_FILES = ('data/tinyshakespeare/input.txt', 'data/hh-rlhf/harmless-base-test.jsonl.gz',
                'tiktoken_cache/6d1cbeee0f20b3d9449abfede4726ed8212e3aee',
                'tiktoken_cache/6c7ea1a7e38e3a7f062df639a5b80947f075ffe6')


def pytest_configure(config):
    """Stop at once, in one message, when ../shared is incomplete (the tests would fail one by one
    with FileNotFoundErrors, or tiktoken would download)."""
    bpe_elsewhere = os.environ['TIKTOKEN_CACHE_DIR'] != os.path.join(SHARED, 'tiktoken_cache')  # the user's own cache
    missing = [p for p in SHARED_FILES if not os.path.isfile(os.path.join(SHARED, p))
               and not (bpe_elsewhere and p.startswith('tiktoken_cache/'))]
    if missing:
        pytest.exit(f"the tests read {SHARED}/ beside the repository and it lacks {', '.join(missing)}: "
                    f"see the README's Quick start for how to make it", returncode=4)

# Under pytest-xdist (`pytest -n auto`, the README's test command) each worker gets its share of
# the cores, in this process and in the scripts the tests run as subprocesses (OMP_NUM_THREADS is
# inherited); N workers with all cores each would slow every worker down.
if os.environ.get('PYTEST_XDIST_WORKER_COUNT'):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ['PYTEST_XDIST_WORKER_COUNT']))
    os.environ.setdefault('OMP_NUM_THREADS', str(_threads))
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))


# ----------------------------------------------------------------------------------------------
# run_python: subprocess.run for `python script.py args`, forked from a process that has already
# imported torch (tests/forkserver.py), so each of the suite's ~190 script runs skips ~2.7 s of start

_forkserver = None  # (process, read buffer, the environment it imported torch under)
# read at import by torch, OpenMP/BLAS, tqdm, tempfile, the dynamic loader, Python itself
_FORK_UNSAFE_ENV = ('OMP_', 'MKL_', 'OPENBLAS_', 'KMP_', 'GOMP_', 'TORCH', 'PYTORCH', 'CUDA', 'PYTHON', 'TQDM_',
                    'TMPDIR', 'TEMP', 'TMP', 'LD_', 'SYMPY_')
_FORK_SAFE_ENV = {'TORCHINDUCTOR_CACHE_DIR'}  # torch sets it itself when it first computes its default


def _forkserver_process():
    global _forkserver
    if _forkserver is None or _forkserver[0].poll() is not None:
        env = dict(os.environ)
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'forkserver.py')],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env)
        _forkserver = (proc, bytearray(), env)
        assert _read_message(_forkserver, None) == {'ready': True}
    return _forkserver


def _stop_forkserver():
    """After a broken exchange: the next run starts a new server."""
    global _forkserver
    if _forkserver is not None:
        _forkserver[0].kill()
        _forkserver[0].wait()
        _forkserver = None


def _read_message(server, deadline):
    """The fork server's next line of JSON; TimeoutError after `deadline` (time.monotonic)."""
    proc, buffer, _ = server
    while b'\n' not in buffer:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([proc.stdout], [], [], wait)[0]:
            raise TimeoutError
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError('the tests\' fork server (tests/forkserver.py) died')
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b'\n')
    buffer[:] = rest
    return json.loads(line)


def _text(data):
    """Bytes as subprocess.run(text=True) gives them: the locale's encoding, universal newlines."""
    import locale
    return data.decode(locale.getpreferredencoding(False)).replace('\r\n', '\n').replace('\r', '\n')


def _torchrun_ranks(cmd):
    """(argv, nproc, master_addr, master_port) of `python -m torch.distributed.run --nnodes=1
    --nproc_per_node=N --master_addr=A --master_port=P script.py args` (the form tests/test_ddp.py
    launches), run_python's fork-server stand-in for torchrun; None for any other command."""
    if len(cmd) < 4 or [str(c) for c in cmd[1:3]] != ['-m', 'torch.distributed.run']:
        return None
    options, i = {}, 3
    while i < len(cmd) and str(cmd[i]).startswith('--'):
        key, _, value = str(cmd[i])[2:].partition('=')
        options[key] = value
        i += 1
    if i == len(cmd) or set(options) != {'nnodes', 'nproc_per_node', 'master_addr', 'master_port'} \
            or options['nnodes'] != '1':
        return None  # another launch than a one-node one: the real torchrun
    return [str(c) for c in cmd[i:]], int(options['nproc_per_node']), options['master_addr'], int(options['master_port'])


def run_python(cmd, cwd=None, env=None, capture_output=False, text=False, timeout=None, check=False, fresh=False):
    """subprocess.run(cmd, ...) for cmd = [sys.executable, script.py, *args], with the same
    CompletedProcess (returncode, stdout, stderr), TimeoutExpired and CalledProcessError, run by
    tests/forkserver.py. `python -m torch.distributed.run` (one node, tests/test_ddp.py's form) forks
    one child a rank, with the variables torchrun sets for it (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT, ...), their output in one stdout and one stderr, and torchrun's exit
    status. A real subprocess where a fork cannot stand in: not Linux, another
    command (`-c`, another `-m`, torchrun with other options), an environment that differs from the server's in what is read
    at import (_FORK_UNSAFE_ENV), fresh=True (a new interpreter, e.g. a new hash seed for a test
    that compares two runs for determinism), or TESTS_FORKSERVER=0 (to compare)."""
    env = dict(os.environ if env is None else env)
    server_env = _forkserver[2] if _forkserver is not None else os.environ
    changed = {k for k in set(env) | set(server_env) if env.get(k) != server_env.get(k)}
    ranks = _torchrun_ranks(cmd)
    if (fresh or sys.platform != 'linux' or os.environ.get('TESTS_FORKSERVER') == '0' or cmd[0] != sys.executable
            or (str(cmd[1]).startswith('-') and ranks is None)
            or any(k.startswith(_FORK_UNSAFE_ENV) for k in changed - _FORK_SAFE_ENV)):
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=capture_output, text=text,
                              timeout=timeout, check=check)
    server = _forkserver_process()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, 'stdout'), os.path.join(tmp, 'stderr')
        request = {'argv': [str(c) for c in cmd[1:]], 'cwd': os.path.abspath(cwd or os.getcwd()), 'env': env,
                   'stdout': out, 'stderr': err}
        if ranks is not None:  # torchrun: one child a rank, with the environment torchrun gives it
            argv, nproc, addr, port = ranks
            open(out, 'wb').close()
            open(err, 'wb').close()
            request = {'group': [dict(request, argv=argv, append=True, env=dict(
                env, RANK=str(r), LOCAL_RANK=str(r), GROUP_RANK='0', WORLD_SIZE=str(nproc),
                LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR=addr, MASTER_PORT=str(port))) for r in range(nproc)]}
        try:
            server[0].stdin.write((json.dumps(request) + '\n').encode())
            server[0].stdin.flush()
            pids = _read_message(server, None)['pids']
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                returncode = _read_message(server, deadline)['returncode']
            except TimeoutError:
                returncode = None
                for pid in pids:  # the server has not reaped them all (it reports as soon as it has): their pids
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:  # ... unless one ended in the last instant
                        pass
                _read_message(server, None)  # the server reaps it and reports; the exchange stays in step
        except BaseException:
            _stop_forkserver()
            raise
        outputs = []
        for path in (out, err):
            with open(path, 'rb') as f:
                data = f.read()
            outputs.append(_text(data) if text and returncode is not None else data)  # a timeout: bytes, as subprocess
    if not capture_output:  # what the script printed goes where pytest shows it, as a subprocess's would
        for data, stream in zip(outputs, (sys.stdout, sys.stderr)):
            stream.write(data if isinstance(data, str) else data.decode(errors='replace'))
        outputs = [None, None]
    if returncode is None:
        raise subprocess.TimeoutExpired(cmd, timeout, output=outputs[0], stderr=outputs[1])
    if check and returncode != 0:
        raise subprocess.CalledProcessError(returncode, cmd, output=outputs[0], stderr=outputs[1])
    return subprocess.CompletedProcess(cmd, returncode, outputs[0], outputs[1])


@pytest.fixture(autouse=True)
def _forget_modules_from_temporary_directories():
    """A module a test imported from a temporary directory (e.g. the rewards.py of ppo_train.py's
    reward_fn, for a script run in-process with runpy) is dropped from sys.modules afterwards, so
    another test's module of the same name is imported afresh, not served from the cache."""
    before = set(sys.modules)
    yield
    tmp, root = os.path.realpath(tempfile.gettempdir()) + os.sep, os.path.realpath(ROOT) + os.sep
    for name in set(sys.modules) - before:
        path = os.path.realpath(getattr(sys.modules.get(name), '__file__', None) or '')
        if path.startswith(tmp) and not path.startswith(root):  # not the project's own modules
            del sys.modules[name]


def load_definitions(script, *names):
    """The top-level functions and constants `names` of a script, without running the script (demo.py
    runs its whole pipeline at import, as nanoGPT's train.py does): the script's imports and the
    statements that define `names` are taken from its ast and executed, in file order, in a fresh
    namespace, the functions' globals. A function's other globals must be among `names` (e.g.
    positivity needs POSITIVE and NEGATIVE). Returns a namespace: load_definitions(p, 'f').f(...).
    (common.script_defaults reads a script's config the same way.)"""
    with open(script) as f:
        tree = ast.parse(f.read(), script)

    def defined(node):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            return {node.name}
        if isinstance(node, ast.Assign):
            return {t.id for t in node.targets if isinstance(t, ast.Name)}
        return set()

    body = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) or defined(node) & set(names)]
    missing = set(names) - set().union(*map(defined, body))
    if missing:
        raise KeyError(f"{script} defines no {', '.join(sorted(missing))} at top level")
    scope = {'__name__': os.path.splitext(os.path.basename(script))[0], '__file__': script}
    exec(compile(ast.Module(body=body, type_ignores=[]), script, 'exec'), scope)  # line numbers stay the script's
    return types.SimpleNamespace(**{name: scope[name] for name in names})

def make_hf_gpt2(path, n_layer=2, n_head=2, n_embd=32, vocab_size=101, n_positions=64, seed=0):
    """A random GPT2LMHeadModel with every parameter perturbed (so biases and layer norms are
    not the trivial 0/1 of a fresh init), saved with save_pretrained. Returns the HF model."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
                        n_positions=n_positions, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(path)
    return hf.eval()


@pytest.fixture(scope='session')
def tiny_hf(tmp_path_factory):
    """(directory, HF model) of a tiny random GPT-2."""
    path = str(tmp_path_factory.mktemp('tiny_gpt2'))
    return path, make_hf_gpt2(path)
