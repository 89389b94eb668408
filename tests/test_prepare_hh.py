"""data/hh_rlhf/prepare.py: the real shared hh-rlhf file in a subprocess, and its converters on hand-made rows."""
import gzip
import importlib.util
import json
import os
import re
import sys

from conftest import ROOT, SHARED, run_python

SCRIPT = os.path.join(ROOT, 'data', 'hh_rlhf', 'prepare.py')
HH_FILE = os.path.join(SHARED, 'data', 'hh-rlhf', 'harmless-base-test.jsonl.gz')
FILES = ['pref_train.jsonl', 'pref_val.jsonl', 'sft_train.jsonl', 'sft_val.jsonl']

spec = importlib.util.spec_from_file_location('prepare_hh', SCRIPT)  # a script, not a package
prepare_hh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_hh)  # main() only runs under __main__


def run(*args):
    return run_python([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def read(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def test_real_file(tmp_path):
    with gzip.open(HH_FILE, 'rt', encoding='utf-8') as f:
        source = [json.loads(line) for line in f]
    assert len(source) == 2312
    r = run('--input', HH_FILE, '--out_dir', str(tmp_path / 'a'))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / 'a')) == FILES  # no .tmp left behind
    counts = {name: (int(w.replace(',', '')), int(s.replace(',', '')))
              for name, w, s in re.findall(r'(\w+)\.jsonl: ([\d,]+) written, ([\d,]+) skipped', r.stdout)}
    out = {name: read(tmp_path / 'a' / f'{name}.jsonl') for name in counts}
    assert {name: len(records) for name, records in out.items()} == {name: w for name, (w, _) in counts.items()}
    for kind in ('sft', 'pref'):  # every row is written or skipped, once, in train or val
        assert sum(sum(counts[f'{kind}_{split}']) for split in ('train', 'val')) == 2312
        assert sum(counts[f'{kind}_val']) == 231  # 10% of the rows
    # measured with a separate loop over the file: 4 pairs have an empty chosen last turn; in 5 one
    # answer holds a second '\n\nAssistant:' (4 of them the chosen one: not SFT examples either)
    assert len(out['sft_train']) + len(out['sft_val']) == 2312 - 4 - 4
    assert len(out['pref_train']) + len(out['pref_val']) == 2312 - 4 - 5

    pairs = {(row['chosen'], row['rejected']) for row in source}
    chosen = {row['chosen'] for row in source}
    for split in ('train', 'val'):
        for rec in out[f'sft_{split}']:
            assert rec['prompt'].endswith('\n\nAssistant:') and rec['response'].strip()
            assert '\n\nAssistant:' not in rec['response']  # cut at the last assistant turn
            assert rec['prompt'] + rec['response'] in chosen
        for rec in out[f'pref_{split}']:
            assert rec['prompt'].endswith('\n\nAssistant:')
            assert (rec['prompt'] + rec['chosen'], rec['prompt'] + rec['rejected']) in pairs
    assert out['sft_train'][0]['response'].startswith(' ')
    train = {rec['prompt'] + rec['response'] for rec in out['sft_train']}
    assert not train & {rec['prompt'] + rec['response'] for rec in out['sft_val']}  # the split is by row

    r = run('--input', HH_FILE, '--out_dir', str(tmp_path / 'b'))  # same seed, same bytes
    assert r.returncode == 0, r.stderr
    for name in FILES:
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    r = run('--input', HH_FILE, '--out_dir', str(tmp_path / 'c'), '--seed', '1', '--max_examples', '100')
    assert r.returncode == 0, r.stderr
    sft_c = read(tmp_path / 'c' / 'sft_train.jsonl') + read(tmp_path / 'c' / 'sft_val.jsonl')
    assert len(read(tmp_path / 'c' / 'sft_val.jsonl')) <= 10 and 96 <= len(sft_c) <= 100
    assert [r['prompt'] for r in sft_c[:5]] != [r['prompt'] for r in out['sft_train'][:5]]  # another shuffle


def test_split_dialogue_and_convert():
    split_dialogue = prepare_hh.split_dialogue
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: Like this.\n\nAnd so."
    assert split_dialogue(text) == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:",
                                    " Like this.\n\nAnd so.")
    assert split_dialogue("\n\nHuman: hi there") is None
    assert split_dialogue("\n\nHuman: hi\n\nAssistant:  \n") is None  # an empty last turn
    assert split_dialogue("\n\nHuman: hi\n\nAssistant:") is None

    good = {'chosen': "\n\nHuman: a?\n\nAssistant: yes", 'rejected': "\n\nHuman: a?\n\nAssistant: no"}
    differ = {'chosen': "\n\nHuman: a?\n\nAssistant: yes\n\nHuman: b?\n\nAssistant: sure",
              'rejected': "\n\nHuman: a?\n\nAssistant: maybe\n\nHuman: b?\n\nAssistant: never"}
    no_turn = {'chosen': "\n\nHuman: a?\n\nAssistant: yes", 'rejected': "\n\nHuman: a?"}
    empty = {'chosen': "\n\nHuman: a?\n\nAssistant: ", 'rejected': "\n\nHuman: a?\n\nAssistant: no"}
    # an answer that makes up a turn of its own: split_dialogue cuts it at its made-up '\n\nAssistant:'
    tag_chosen = {'chosen': "\n\nHuman: a?\n\nAssistant: yes\n\nHuman: and?\n\nAssistant: more",
                  'rejected': "\n\nHuman: a?\n\nAssistant: no"}
    tag_rejected = {'chosen': "\n\nHuman: a?\n\nAssistant: yes", 'rejected': tag_chosen['chosen']}
    sft, pref, skipped = prepare_hh.convert([good, differ, no_turn, empty, tag_chosen, tag_rejected])
    assert pref == [{'prompt': "\n\nHuman: a?\n\nAssistant:", 'chosen': " yes", 'rejected': " no"}]
    assert [r['prompt'] + r['response'] for r in sft] == [good['chosen'], differ['chosen'], no_turn['chosen'],
                                                          tag_rejected['chosen']]  # its chosen answer is whole
    assert skipped['sft'] == {'no/empty assistant turn': 1, prepare_hh.TAG_IN_ANSWER: 1}
    assert skipped['pref'] == {'no/empty assistant turn': 2, 'prompts differ': 1, prepare_hh.TAG_IN_ANSWER: 2}


def test_bad_input(tmp_path):
    path = tmp_path / 'bad.jsonl'
    good = json.dumps({'chosen': "\n\nHuman: a\n\nAssistant: b", 'rejected': "\n\nHuman: a\n\nAssistant: c"})
    path.write_text(good + '\n\n{"chosen": "x", oops\n' + good + '\n', encoding='utf-8')
    r = run('--input', str(path), '--out_dir', str(tmp_path / 'out'))
    assert r.returncode != 0 and r.stderr.startswith(f"error: {path}:3: ") and r.stderr.count('\n') == 1, r.stderr
    assert not (tmp_path / 'out').exists()  # nothing written
    path.write_text(good + '\n' + json.dumps({'chosen': "x"}) + '\n', encoding='utf-8')
    r = run('--input', str(path), '--out_dir', str(tmp_path / 'out'))
    assert r.returncode == 1 and r.stderr == f"error: {path}:2: missing key 'rejected'\n", r.stderr
    r = run('--input', str(tmp_path / 'nope.jsonl.gz'), '--out_dir', str(tmp_path / 'out'))
    assert r.returncode == 1 and r.stderr == f"error: {tmp_path / 'nope.jsonl.gz'} not found\n", r.stderr
    r = run('--input', HH_FILE, '--val_fraction', '1.5')
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and '--val_fraction' in r.stderr, r.stderr


def test_nothing_usable_is_one_line_error_and_keeps_the_outputs(tmp_path):
    """An input that would make any of the four files empty stops in one line before writing: the
    good files already in out_dir stay, and no .tmp is left."""
    out = tmp_path / 'out'
    r = run('--input', HH_FILE, '--out_dir', str(out), '--max_examples', '100')
    assert r.returncode == 0, r.stderr
    before = {name: (out / name).read_bytes() for name in FILES}
    good = {'chosen': "\n\nHuman: a\n\nAssistant: b", 'rejected': "\n\nHuman: a\n\nAssistant: c"}
    no_turn = {'chosen': "\n\nHuman: a", 'rejected': "\n\nHuman: a"}
    path = tmp_path / 'small.jsonl'
    for rows, expected in (([], "sft_train.jsonl would be empty: 0 rows"),  # 4 rows: none for val at 10%
                           ([no_turn] * 5, "sft_train.jsonl would be empty: 5 rows, 5 skipped (no/empty assistant"),
                           ([good] * 4, "--val_fraction 0.1 of 4 rows leaves none for val: pass a larger")):
        path.write_text(''.join(json.dumps(row) + '\n' for row in rows), encoding='utf-8')
        r = run('--input', str(path), '--out_dir', str(out))
        assert r.returncode == 1 and r.stderr.count('\n') == 1, r.stderr
        assert r.stderr.startswith(f"error: {path}: {expected}"), r.stderr
        assert sorted(os.listdir(out)) == FILES and {name: (out / name).read_bytes() for name in FILES} == before
    r = run('--input', str(path), '--out_dir', str(tmp_path / 'half'), '--val_fraction', '0.5')  # the remedy
    assert r.returncode == 0, r.stderr
    assert read(tmp_path / 'half' / 'sft_val.jsonl') == [{'prompt': "\n\nHuman: a\n\nAssistant:", 'response': " b"}] * 2
    r = run('--input', str(path), '--out_dir', str(out), '--val_fraction', '0')  # 0 could only write an empty val
    assert r.returncode == 1 and r.stderr == "error: --val_fraction must be in (0, 1), got 0.0\n", r.stderr


def test_unreadable_gz_is_one_line_error(tmp_path):
    """A .gz that is not gzip, or is cut short: one line naming the file, not gzip's traceback."""
    plain, cut = tmp_path / 'plain.jsonl.gz', tmp_path / 'cut.jsonl.gz'
    plain.write_text(json.dumps({'chosen': "a", 'rejected': "b"}) + '\n', encoding='utf-8')
    with open(HH_FILE, 'rb') as f:
        cut.write_bytes(f.read(3000))
    for path, why in ((plain, "Not a gzipped file"), (cut, "Compressed file ended")):
        r = run('--input', str(path), '--out_dir', str(tmp_path / 'out'))
        assert r.returncode == 1 and r.stderr.count('\n') == 1, r.stderr
        assert r.stderr.startswith(f"error: {path}: cannot read it: {why}"), r.stderr
        assert not (tmp_path / 'out').exists()


def test_ultrafeedback(tmp_path):
    row = {'prompt': "Name a colour.",  # as HuggingFaceH4/ultrafeedback_binarized, extra fields ignored
           'chosen': [{'role': 'system', 'content': "Be brief."}, {'role': 'user', 'content': "Name a colour."},
                      {'role': 'assistant', 'content': "Blue."}],
           'rejected': [{'role': 'system', 'content': "Be brief."}, {'role': 'user', 'content': "Name a colour."},
                        {'role': 'assistant', 'content': "Colours are hard."}],
           'score_chosen': 8.0, 'score_rejected': 3.0}
    hh = prepare_hh.ultrafeedback_row(row)
    assert hh == {'chosen': "Be brief.\n\nHuman: Name a colour.\n\nAssistant: Blue.",
                  'rejected': "Be brief.\n\nHuman: Name a colour.\n\nAssistant: Colours are hard."}
    sft, pref, _ = prepare_hh.convert([hh])
    assert pref == [{'prompt': "Be brief.\n\nHuman: Name a colour.\n\nAssistant:", 'chosen': " Blue.",
                     'rejected': " Colours are hard."}]
    assert sft == [{'prompt': pref[0]['prompt'], 'response': " Blue."}]
    # the same rows from a local file with --source ultrafeedback
    path = tmp_path / 'uf.jsonl'
    path.write_text(''.join(json.dumps(row) + '\n' for _ in range(10)), encoding='utf-8')
    r = run('--input', str(path), '--source', 'ultrafeedback', '--out_dir', str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert read(tmp_path / 'pref_train.jsonl') == pref * 9 and read(tmp_path / 'pref_val.jsonl') == pref


def test_hub_path_with_a_stand_in_datasets(tmp_path):
    """The hub branch without a network: a stand-in `datasets` module records how it is called."""
    (tmp_path / 'stub').mkdir()
    (tmp_path / 'stub' / 'datasets.py').write_text(f'''
import json, os
class Split(list):
    def to_list(self):
        return list(self)
def load_dataset(name, data_dir=None):
    with open({str(tmp_path / 'calls.json')!r}, 'w') as f:
        json.dump([name, data_dir], f)
    row = lambda i: {{'chosen': f"\\n\\nHuman: q{{i}}\\n\\nAssistant: yes", 'rejected': f"\\n\\nHuman: q{{i}}\\n\\nAssistant: no"}}
    return {{'train': Split(row(i) for i in range(30)), 'test': Split(row(100 + i) for i in range(5))}}
''', encoding='utf-8')
    env = dict(os.environ, PYTHONPATH=str(tmp_path / 'stub'))
    r = run_python([sys.executable, SCRIPT, '--subset', 'helpful-base', '--max_examples', '20',
                        '--out_dir', str(tmp_path / 'out')],
                   cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / 'calls.json').read_text()) == ['Anthropic/hh-rlhf', 'helpful-base']
    train, val = read(tmp_path / 'out' / 'pref_train.jsonl'), read(tmp_path / 'out' / 'pref_val.jsonl')
    assert len(train) == 20 and len(val) == 5  # the hub's own test split is val; --max_examples caps each split
    assert {int(rec['prompt'].split('q')[1].split('\n')[0]) for rec in val} == set(range(100, 105))
    assert all(rec['chosen'] == ' yes' and rec['rejected'] == ' no' for rec in train + val)
