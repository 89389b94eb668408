"""data/*/prepare.py, each run in a subprocess on local input (no downloads)."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tiktoken

from conftest import ROOT, SHARED, run_python

SHAKESPEARE = os.path.join(SHARED, 'data', 'tinyshakespeare', 'input.txt')
SCRIPTS = ['shakespeare_char', 'shakespeare', 'openwebtext']
EOT = 50256


def run(dataset, *args):
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=os.path.join(SHARED, 'tiktoken_cache'))
    return run_python([sys.executable, os.path.join('data', dataset, 'prepare.py'), *args],
                      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def load(out_dir, split):
    return np.fromfile(os.path.join(out_dir, f'{split}.bin'), dtype=np.uint16)


def read_shakespeare():
    with open(SHAKESPEARE, encoding='utf-8') as f:
        return f.read()


def test_shakespeare_char(tmp_path):
    r = run('shakespeare_char', '--input', SHAKESPEARE, '--out_dir', str(tmp_path))
    assert r.returncode == 0, r.stderr
    text = read_shakespeare()
    with open(tmp_path / 'meta.pkl', 'rb') as f:
        meta = pickle.load(f)
    train, val = load(tmp_path, 'train'), load(tmp_path, 'val')
    assert meta['vocab_size'] == 65 == len(meta['itos']) == len(meta['stoi'])
    assert len(train) + len(val) == len(text) == 1_115_394
    assert len(train) == int(len(text) * 0.9)
    assert ''.join(meta['itos'][int(i)] for i in train[:100]) == text[:100]
    assert ''.join(meta['itos'][int(i)] for i in val[-100:]) == text[-100:]


def test_shakespeare_bpe(tmp_path):
    r = run('shakespeare', '--input', SHAKESPEARE, '--out_dir', str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / 'meta.pkl').exists()  # GPT-2 BPE is the default without one
    text, enc = read_shakespeare(), tiktoken.get_encoding('gpt2')
    train, val = load(tmp_path, 'train'), load(tmp_path, 'val')
    assert text.startswith(enc.decode(train[:200].tolist()))
    n = int(len(text) * 0.9)  # split by characters, then each half encoded on its own
    assert len(train) == len(enc.encode_ordinary(text[:n]))
    assert len(val) == len(enc.encode_ordinary(text[n:]))
    assert len(train) + len(val) == 338_025  # nanoGPT's README: 301,966 + 36,059
    assert enc.decode(val.tolist()) == text[n:]


def test_openwebtext_local_jsonl(tmp_path):
    docs = [f"Document {i}: " + "to be or not to be, " * i for i in range(20)]
    docs[3] += " <|endoftext|> written in the text is ordinary text, not the eot token"
    path = tmp_path / 'docs.jsonl'
    path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs), encoding='utf-8')
    r = run('openwebtext', '--input', str(path), '--num_proc', '1', '--out_dir', str(tmp_path))
    assert r.returncode == 0, r.stderr
    enc = tiktoken.get_encoding('gpt2')
    train, val = load(tmp_path, 'train'), load(tmp_path, 'val')
    assert len(val) > 0 and len(train) > 0  # 0.05% of 20 documents rounds up to one
    assert len(train) + len(val) == sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
    ids = np.concatenate([train, val])
    assert (ids == EOT).sum() == len(docs) and train[-1] == EOT and val[-1] == EOT
    # every document comes back whole, in some order (the split shuffles); cut at eot ids, since
    # docs[3]'s literal "<|endoftext|>" decodes to the same string as the eot token
    chunks = np.split(ids, np.flatnonzero(ids == EOT) + 1)[:-1]
    assert sorted(enc.decode(c[:-1].tolist()) for c in chunks) == sorted(docs)


def test_openwebtext_local_txt(tmp_path):
    path = tmp_path / 'docs.txt'
    path.write_text("first doc\nline two\n\n\nsecond doc\n\nthird doc\n", encoding='utf-8')
    r = run('openwebtext', '--input', str(path), '--num_proc', '1', '--out_dir', str(tmp_path))
    assert r.returncode == 0, r.stderr
    ids = np.concatenate([load(tmp_path, 'train'), load(tmp_path, 'val')])
    assert (ids == EOT).sum() == 3  # blank lines separate documents; a single newline doesn't


def test_openwebtext_malformed_jsonl_is_one_line_error_naming_the_line(tmp_path):
    """A bad .jsonl line stops in one line 'error: FILE:LINE: ...', as data/hh_rlhf/prepare.py's, before writing."""
    (tmp_path / 'train.bin').write_bytes(b'good')
    path = tmp_path / 'docs.jsonl'
    for content, expected in (('{"text": "a b c"}\n{"text": broken\n{"text": "d e f"}\n', ':2: Expecting value'),
                              ('{"text": "a b c"}\n\n{"txt": "d e f"}\n', ":3: missing key 'text'"),
                              ('{"text": "a b c"}\n{"text": null}\n', ':2: "text" must be a string')):
        path.write_text(content, encoding='utf-8')
        r = run('openwebtext', '--input', str(path), '--num_proc', '1', '--out_dir', str(tmp_path))
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert r.stderr.startswith(f"error: {path}{expected}"), r.stderr
        assert (tmp_path / 'train.bin').read_bytes() == b'good'


@pytest.mark.parametrize('dataset', SCRIPTS)
def test_missing_input_is_one_line_error(dataset, tmp_path):
    missing = str(tmp_path / 'nope.txt')
    r = run(dataset, '--input', missing, '--out_dir', str(tmp_path))
    assert r.returncode != 0
    assert r.stderr.strip() == f"error: {missing} not found"
    assert not (tmp_path / 'train.bin').exists()


@pytest.mark.parametrize('dataset', SCRIPTS)
def test_too_little_input_is_one_line_error_and_keeps_the_dataset(dataset, tmp_path):
    """An empty file (or one document for openwebtext) would make an empty split: the script stops
    in one line before writing, so a good dataset already in out_dir is kept."""
    (tmp_path / 'train.bin').write_bytes(b'good')
    for content in ('', 'one document only'):
        (tmp_path / 'small.txt').write_text(content)
        r = run(dataset, '--input', str(tmp_path / 'small.txt'), '--out_dir', str(tmp_path))
        if content and dataset != 'openwebtext':  # 17 characters: a train and a val split
            assert r.returncode == 0, r.stderr
            (tmp_path / 'train.bin').write_bytes(b'good')
            continue
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"error: {tmp_path / 'small.txt'}: ")
        assert ('too few' if dataset != 'openwebtext' else 'at least 2') in r.stderr, r.stderr
        assert (tmp_path / 'train.bin').read_bytes() == b'good'


@pytest.mark.parametrize('dataset', SCRIPTS)
def test_bad_flag_is_one_line_error(dataset):
    r = run(dataset, '--inptu', 'x')
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["error: unrecognized arguments: --inptu x"]


@pytest.mark.parametrize('dataset', ['shakespeare_char', 'shakespeare'])
def test_shakespeare_downloads_once_next_to_the_script(dataset, tmp_path):
    """Without --input: input.txt is fetched into the script's own directory (not the cwd) the
    first time and reused after. The script runs from a copy in tmp, with urlretrieve faked."""
    script = tmp_path / 'prepare.py'
    script.write_text(open(os.path.join(ROOT, 'data', dataset, 'prepare.py')).read())
    log = tmp_path / 'downloads.log'
    code = (f"import runpy, shutil, sys, urllib.request\n"
            f"def fake(url, dst):\n"
            f"    open({str(log)!r}, 'a').write(url + '\\n'); shutil.copy({SHAKESPEARE!r}, dst)\n"
            f"urllib.request.urlretrieve = fake\n"
            f"sys.argv = [{str(script)!r}]\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=os.path.join(SHARED, 'tiktoken_cache'))
    for _ in range(2):
        r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert log.read_text().count('\n') == 1 and 'tinyshakespeare/input.txt' in log.read_text()
    assert (tmp_path / 'input.txt').read_text(encoding='utf-8') == read_shakespeare()
    assert not (tmp_path / 'input.txt.tmp').exists()
    assert len(load(tmp_path, 'train')) > 0 and len(load(tmp_path, 'val')) > 0


def test_openwebtext_hub_script_error_is_one_line(tmp_path):
    """datasets >= 4 refuses hub datasets that ship a loading script, as Skylion007/openwebtext has
    (karpathy/nanoGPT#633): prepare.py says so in one line with the ways round it, instead of datasets'
    traceback. A stand-in datasets module raises datasets' own error (no download)."""
    fake = tmp_path / 'datasets'
    fake.mkdir()
    (fake / '__init__.py').write_text(
        "class Dataset: pass\n"
        "def load_dataset(path, revision=None, num_proc=None):\n"
        "    raise RuntimeError(f'Dataset scripts are no longer supported, but found {path.split(\"/\")[-1]}.py')\n")
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=os.path.join(SHARED, 'tiktoken_cache'), PYTHONPATH=str(tmp_path))
    r = run_python([sys.executable, os.path.join('data', 'openwebtext', 'prepare.py'), '--out_dir', str(tmp_path)],
                   cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, fresh=True)
    err = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(err) == 1, r.stderr[-2000:]
    assert err[0].startswith('error: Skylion007/openwebtext has a loading script, which datasets >= 4 refuses')
    assert '--revision refs/convert/parquet' in err[0] and "datasets<4" in err[0] and '--input' in err[0]
