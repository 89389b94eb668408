"""conftest.run_python (scripts forked from tests/forkserver.py) against subprocess.run: the same
exit status, stdout and stderr for the same command, so the suite's script runs test what
`python script.py args` does."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_python

SCRIPT = r'''
import json, os, sys
import tempfile
print(json.dumps({'argv': sys.argv, 'path0': sys.path[0], 'cwd': os.getcwd(), 'name': __name__,
                  'file': __file__, 'env': os.environ.get('FORK_TEST'), 'stdin': sys.stdin.read(),
                  'tmp': tempfile.gettempdir()}))
sys.stderr.write('carriage\r\nreturns\r')
log = open('left_open.txt', 'w')  # never closed: interpreter exit flushes it
log.write('row1\n')
import helper                     # from the script's own directory, as python puts it first on sys.path
helper.COUNT += 1                 # a fresh process every run: always 1
print('count', helper.COUNT)
print('to stderr', file=sys.stderr)
import subprocess                 # what the script itself launches writes to the same stdout
subprocess.run([sys.executable, '-c', 'print("grandchild")'])
mode = sys.argv[1]
if mode == 'exit3':
    sys.exit(3)
if mode == 'exit_message':
    sys.exit('a message')
if mode == 'user_error':
    sys.path.insert(0, os.environ['PROJECT_ROOT'])
    from common import UserError  # common.py's excepthook: one line, exit status 1
    raise UserError('bad key --foo')
if mode == 'crash':
    raise RuntimeError('boom')
import atexit
atexit.register(lambda: print('atexit ran'))
'''


@pytest.fixture
def script(tmp_path):
    d = tmp_path / 'scripts'
    d.mkdir()
    (d / 'probe.py').write_text(SCRIPT)
    (d / 'helper.py').write_text('COUNT = 0\n')
    (tmp_path / 'work').mkdir()
    return str(d / 'probe.py'), str(tmp_path / 'work')


@pytest.mark.parametrize('mode', ['ok', 'exit3', 'exit_message', 'user_error', 'crash'])
def test_same_status_and_output_as_a_subprocess(script, mode):
    path, cwd = script
    env = dict(os.environ, FORK_TEST='set', PROJECT_ROOT=ROOT)
    path = os.path.relpath(path, cwd)  # a relative script path: argv[0] as given, __file__ absolute
    cmd = [sys.executable, path, mode]
    forked = run_python(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    with open(os.path.join(cwd, 'left_open.txt')) as f:
        assert f.read() == 'row1\n'  # flushed at exit, as python does
    os.remove(os.path.join(cwd, 'left_open.txt'))
    real = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert forked.returncode == real.returncode == {'ok': 0, 'exit3': 3, 'exit_message': 1, 'user_error': 1, 'crash': 1}[mode]
    assert forked.stdout == real.stdout
    assert 'count 1' in forked.stdout and 'grandchild' in forked.stdout and 'FORK_TEST' not in forked.stdout
    assert ('atexit ran' in forked.stdout) == (mode == 'ok')
    if mode == 'crash':  # a traceback through runpy has more frames; the error line is the same
        assert forked.stderr.strip().splitlines()[-1] == real.stderr.strip().splitlines()[-1] == 'RuntimeError: boom'
    else:
        assert forked.stderr == real.stderr
    assert 'carriage\nreturns\n' in forked.stderr  # universal newlines, as text=True decodes
    if mode == 'user_error':
        assert forked.stderr.splitlines() == ['carriage', 'returns', 'to stderr', 'error: bad key --foo']


def test_bytes_check_and_timeout(script):
    path, cwd = script
    p = run_python([sys.executable, path, 'ok'], cwd=cwd, capture_output=True)
    assert isinstance(p.stdout, bytes) and b'count 1' in p.stdout
    with pytest.raises(subprocess.CalledProcessError) as e:
        run_python([sys.executable, path, 'exit3'], cwd=cwd, capture_output=True, text=True, check=True)
    assert e.value.returncode == 3 and 'count 1' in e.value.stdout
    slow = os.path.join(cwd, 'slow.py')
    with open(slow, 'w') as f:
        f.write('import time\nprint("started", flush=True)\ntime.sleep(60)\n')
    with pytest.raises(subprocess.TimeoutExpired) as e:
        run_python([sys.executable, slow], cwd=cwd, capture_output=True, text=True, timeout=1)
    assert e.value.output == b'started\n'  # bytes even with text=True, as subprocess.run gives them on a timeout
    real = subprocess.run  # bytes on a timeout is subprocess's own behaviour:
    with pytest.raises(subprocess.TimeoutExpired) as e:
        real([sys.executable, slow], cwd=cwd, capture_output=True, text=True, timeout=1)
    assert e.value.output == b'started\n'
    # the server goes on serving after a killed run
    assert run_python([sys.executable, path, 'ok'], cwd=cwd, capture_output=True, text=True).returncode == 0


def test_runs_fork_unless_the_environment_or_the_test_asks_for_a_new_interpreter(tmp_path, monkeypatch):
    """The suite's speed depends on runs really forking: a variable torch sets itself
    (TORCHINDUCTOR_CACHE_DIR, on its first compile anywhere in the worker) keeps them forking; one read
    at import (OMP_NUM_THREADS) changed since the server started, or fresh=True, does not."""
    (tmp_path / 'probe.py').write_text("import sys\nprint('forkserver.py' in ' '.join(sys.orig_argv))\n")
    forked = lambda **kw: run_python([sys.executable, str(tmp_path / 'probe.py')], cwd=tmp_path, capture_output=True,
                                     text=True, **kw).stdout.strip() == 'True'
    assert forked()
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'inductor'))
    assert forked()
    assert not forked(fresh=True)
    monkeypatch.setenv('OMP_NUM_THREADS', str(int(os.environ.get('OMP_NUM_THREADS', '1')) + 1))
    assert not forked()


def test_a_missing_script_and_what_a_fork_renews_or_hands_to_a_subprocess(tmp_path, monkeypatch):
    """A missing script is exit status 2, as python's; numpy's global RNG differs between runs;
    TMPDIR is read again; a variable torch reads at import (OMP_NUM_THREADS), changed after the
    server started, sends the run to a real subprocess (fresh=True too)."""
    missing = [sys.executable, str(tmp_path / 'nowhere.py')]
    forked, real = (f(missing, cwd=tmp_path, capture_output=True, text=True) for f in (run_python, subprocess.run))
    assert forked.returncode == real.returncode == 2 and forked.stderr == real.stderr
    (tmp_path / 'probe.py').write_text('import numpy, tempfile, torch\n'
                                       'print(numpy.random.rand(), tempfile.gettempdir(), torch.get_num_threads())\n')
    cmd = [sys.executable, str(tmp_path / 'probe.py')]
    draws = [run_python(cmd, cwd=tmp_path, capture_output=True, text=True).stdout.split()[0] for _ in range(2)]
    assert draws[0] != draws[1]
    (tmp_path / 'tmp').mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / 'tmp'))
    assert run_python(cmd, cwd=tmp_path, env=env, capture_output=True, text=True).stdout.split()[1] == str(tmp_path / 'tmp')
    threads = str(int(os.environ.get('OMP_NUM_THREADS', '1')) + 1)
    monkeypatch.setenv('OMP_NUM_THREADS', threads)
    assert run_python(cmd, cwd=tmp_path, capture_output=True, text=True).stdout.split()[2] == threads


def test_a_missing_shared_folder_stops_the_suite_in_one_message(tmp_path):
    """A clone without ../shared: pytest stops at once and names what is missing and where to read
    how to make it (not dozens of FileNotFoundErrors, nor a tiktoken download)."""
    import shutil
    tests = tmp_path / 'repo' / 'tests'
    tests.mkdir(parents=True)
    for name in ('conftest.py', 'forkserver.py'):
        shutil.copy(os.path.join(os.path.dirname(__file__), name), tests / name)
    (tests / 'test_x.py').write_text('def test_x():\n    pass\n')
    env = {k: v for k, v in os.environ.items() if k != 'TIKTOKEN_CACHE_DIR' and not k.startswith('PYTEST_')}
    p = subprocess.run([sys.executable, '-m', 'pytest', str(tests), '-q', '-p', 'no:xdist', '-p', 'no:benchmark'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 4, p.stdout[-2000:] + p.stderr[-2000:]
    out = p.stdout + p.stderr
    assert f"the tests read {tmp_path / 'shared'}/ beside the repository and it lacks data/tinyshakespeare/input.txt" in out
    assert "see the README's Quick start" in out


RANKS = r'''
import os, sys
import torch.distributed as dist
say = lambda line: os.write(1, (line + '\n').encode())  # one write a line: the ranks' lines never mix
keys = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', 'MASTER_ADDR', 'MASTER_PORT')
say(' '.join(f'{k}={os.environ[k]}' for k in keys))
say(f"forked {'forkserver.py' in ' '.join(sys.orig_argv)}")
dist.init_process_group('gloo')
t = __import__('torch').tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
say(f'rank {dist.get_rank()} sum {t.item():.0f}')
if sys.argv[1] == 'fail' and dist.get_rank() == 1:
    raise SystemExit('rank 1 gives up')
dist.barrier()  # rank 0 waits here for rank 1, until rank 1's failure ends it
dist.destroy_process_group()
'''


@pytest.mark.parametrize('mode', ['ok', 'fail'])
def test_torchrun_ranks_forked_as_torchrun_runs_them(tmp_path, mode):
    """`python -m torch.distributed.run` (tests/test_ddp.py's form): the forked ranks see the
    variables torchrun sets, write into one stdout, and one failing rank ends the other and the run
    with torchrun's status 1, as the real torchrun does."""
    import socket
    (tmp_path / 'ranks.py').write_text(RANKS)
    for f, forked in ((run_python, True), (subprocess.run, False)):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', '--nproc_per_node=2',
               '--master_addr=127.0.0.1', f'--master_port={port}', str(tmp_path / 'ranks.py'), mode]
        p = f(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        lines = sorted(l.replace(str(port), 'PORT') for l in p.stdout.splitlines())
        assert lines == ['RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 GROUP_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=PORT',
                         'RANK=1 LOCAL_RANK=1 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 GROUP_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=PORT',
                         f'forked {forked}', f'forked {forked}', 'rank 0 sum 3', 'rank 1 sum 3'], p.stdout + p.stderr
        assert p.returncode == (0 if mode == 'ok' else 1), p.stderr[-2000:]
        assert ('rank 1 gives up' in p.stderr) == (mode == 'fail')
