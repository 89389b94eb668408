"""The tests' fork server: one process per pytest worker that imports what every script pays for
at start (torch, and torch._dynamo, which torch.optim imports when the first optimizer is built:
about 2.7 s of a tiny run's 4 s on the 2-core CI machine) and then, for each script run a test
asks for, forks a child that runs the script as `python script.py args` would. Tests reach it
through conftest.run_python, which falls back to a real subprocess where a fork cannot stand in.

The child is a fresh copy of this process, so no state passes from one run to another. It gets
the test's working directory and environment, /dev/null as stdin, its stdout and stderr written
to the files the test names (at the file-descriptor level, so whatever the script itself launches
writes there too), sys.argv, sys.path[0] and an absolute __file__ as `python script.py` sets them,
the script run as __main__, an uncaught exception shown by sys.excepthook (common.py's one-line
errors included) with exit status 1, SystemExit's code as the exit status (2 for a missing
script), then, as at interpreter exit, non-daemon threads joined, atexit handlers run and the
script's globals released (open files closed). numpy's global RNG and tempfile's directory are
renewed. What stays the server's: the hash seed (conftest.run_python(fresh=True) runs a real
subprocess where a test needs a new one) and what torch read from the environment at import
(run_python falls back to a subprocess when those variables differ).
No project module is imported here: a script imports its own common.py/model.py, as it would.

Protocol (lines of JSON): this process prints {"ready": true} once; then for each request
{"argv": [script, *args], "cwd", "env", "stdout", "stderr"} on stdin it prints {"pid": child,
"pids": [child]} and, when the child has exited, {"returncode": n} (-signal if it was killed, as
subprocess). A request {"group": [request, ...]} (conftest.run_python's stand-in for torchrun:
one request a rank, each with its RANK/WORLD_SIZE/MASTER_PORT environment and "append": true, so
that all ranks write into the same two files) forks every rank at once and prints all their pids;
when a rank fails the others get SIGTERM, as torchrun sends them, and the status is torchrun's:
0 when every rank exited 0, else 1."""
import json
import os
import signal
import sys

import numpy  # (imported for the children; each reseeds its global RNG)
import torch  # noqa: F401
import torch._dynamo  # noqa: F401  (torch.optim imports it when the first optimizer is built)
import tqdm  # noqa: F401


def run_child(request):
    """In the forked child: become `python script.py args` and exit; never returns."""
    import atexit
    import builtins
    import gc
    import tempfile
    import threading
    import types
    code = 1
    try:
        os.chdir(request['cwd'])
        os.environ.clear()
        os.environ.update(request['env'])
        shared = os.O_APPEND if request.get('append') else os.O_TRUNC  # a torchrun group's ranks share the files
        for fd, path, flags in [(0, os.devnull, os.O_RDONLY),
                                (1, request['stdout'], os.O_WRONLY | os.O_CREAT | shared),
                                (2, request['stderr'], os.O_WRONLY | os.O_CREAT | shared)]:
            new = os.open(path, flags, 0o644)
            os.dup2(new, fd)
            os.close(new)
        sys.stdin = open(0, closefd=False)  # not the request pipe this process read from
        # sys.stdout and sys.stderr stay: the same objects over the new files, buffered as Python
        # buffers a pipe (this process's stdout is one), PYTHONUNBUFFERED included
        numpy.random.seed()  # fresh entropy, as a new process has (Python's random is reseeded at fork)
        tempfile.tempdir = None  # read TMPDIR again
        if 'multiprocessing' in sys.modules:
            sys.modules['multiprocessing'].process.ORIGINAL_DIR = os.getcwd()
        script = os.path.join(os.getcwd(), request['argv'][0])  # __file__: absolute, not normalised; argv[0] as given
        sys.argv = list(request['argv'])
        sys.path[0] = os.path.dirname(os.path.realpath(script))  # the script's directory, links resolved
        try:
            with open(script, 'rb') as f:
                source = f.read()
        except OSError as e:
            print(f"{sys.executable}: can't open file {script!r}: [Errno {e.errno}] {e.strerror}", file=sys.stderr)
            code = 2
            raise SystemExit
        main = types.ModuleType('__main__')  # the script's module stays __main__ through atexit, as in python
        main.__dict__.update(__file__=script, __builtins__=builtins, __cached__=None)
        sys.modules['__main__'] = main
        try:
            exec(compile(source, script, 'exec'), main.__dict__)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:
            sys.excepthook(*sys.exc_info())
        threading._shutdown()  # what interpreter exit does: wait for non-daemon threads, atexit, then
        atexit._run_exitfuncs()  # the modules' teardown (files left open are closed, so flushed)
        main.__dict__.clear()
        gc.collect()
        sys.stdout.flush()
        sys.stderr.flush()
    except SystemExit:
        pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main():
    print(json.dumps({'ready': True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        group = request.get('group', [request])  # torchrun's ranks: started together, ended together
        pids = []
        for child in group:
            pid = os.fork()
            if pid == 0:
                run_child(child)
            pids.append(pid)
        print(json.dumps({'pid': pids[0], 'pids': pids}), flush=True)
        codes = {}
        while len(codes) < len(pids):
            pid, status = os.wait()
            codes[pid] = os.waitstatus_to_exitcode(status)
            if codes[pid] != 0:  # as torchrun: a failed rank stops the others (they would wait for it forever)
                for other in set(pids) - set(codes):
                    try:
                        os.kill(other, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        if 'group' in request:  # torchrun's own status: 1 when any rank failed
            returncode = 0 if all(c == 0 for c in codes.values()) else 1
        else:
            returncode = codes[pids[0]]
        print(json.dumps({'returncode': returncode}), flush=True)


if __name__ == '__main__':
    main()
