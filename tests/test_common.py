"""The shared plumbing: config overrides, LR schedule, checkpoints, CSV logging."""
import csv
import os
import re
import json
import math

import pytest
import torch

from common import Logger, UserError, configure, get_lr, parse_value, save_checkpoint
from model import GPT, GPTConfig


def defaults():
    return dict(out_dir='out', max_iters=100, learning_rate=6e-4, compile=True, top_k=None,
                betas=(0.9, 0.95), name='x', _private=1, GPT=GPT, torch=torch)


def test_flags_override_with_types():
    scope = defaults()
    config = configure(scope, ['--max_iters=5', '--learning_rate=1', '--compile=False', '--top_k=50',
                               '--out_dir=runs/a', '--betas=(0.8,0.9)', '--name=True'.replace('True', 'abc')])
    assert scope['max_iters'] == 5 and scope['learning_rate'] == 1.0 and isinstance(scope['learning_rate'], float)
    assert scope['compile'] is False and scope['top_k'] == 50 and scope['out_dir'] == 'runs/a'
    assert scope['betas'] == (0.8, 0.9)
    assert set(config) == {'out_dir', 'max_iters', 'learning_rate', 'compile', 'top_k', 'betas', 'name'}
    # a string key takes what is written, even where it reads as a number, True or None (a wandb run
    # name 2024 was 'must be str'); a quoted value is still the string inside the quotes
    configure(scope, ['--name=2024', '--out_dir=1e3', "--name='quoted'"])
    assert scope['out_dir'] == '1e3' and scope['name'] == 'quoted'
    for text in ('2024', 'None', 'True', '(1, 2)'):
        assert configure(scope, [f'--name={text}'])['name'] == text


def test_imported_constants_are_not_config():
    """train.py imports model.IGNORE_INDEX (an int) among its globals: a module constant, not a config
    key. It must not be printed and saved as config, nor be overridable (--IGNORE_INDEX=0 would change
    train.py's count of SFT targets but not the model's loss)."""
    scope = {**defaults(), 'IGNORE_INDEX': -1}
    assert 'IGNORE_INDEX' not in configure(scope, [])
    with pytest.raises(UserError, match="unknown config key 'IGNORE_INDEX'"):
        configure(scope, ['--IGNORE_INDEX=0'])


def test_flag_type_errors_name_the_key():
    with pytest.raises(UserError, match=r"command line: max_iters must be int \(default 100\), got 'abc'"):
        configure(defaults(), ['--max_iters=abc'])
    with pytest.raises(UserError, match='compile must be bool'):
        configure(defaults(), ['--compile=1'])
    with pytest.raises(UserError, match='max_iters must be int'):
        configure(defaults(), ['--max_iters=1.5'])
    with pytest.raises(UserError, match='written --key=value'):
        configure(defaults(), ['--compile'])


def test_unknown_key_names_close_matches():
    with pytest.raises(UserError, match=r"unknown config key 'max_iter'; did you mean max_iters"):
        configure(defaults(), ['--max_iter=3'])
    with pytest.raises(UserError, match=r"unknown config key 'zzz'$"):
        configure(defaults(), ['--zzz=3'])
    with pytest.raises(UserError, match='unknown config key'):
        configure(defaults(), ['--_private=2'])  # private names are not config


def test_config_file_then_flags_in_order(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("import math\nmax_iters = 7\nlearning_rate = max_iters * 1e-4\n_helper = 3\n")
    scope = defaults()
    configure(scope, [str(cfg), '--max_iters=9'])
    assert scope['max_iters'] == 9 and scope['learning_rate'] == pytest.approx(7e-4)
    scope = defaults()
    configure(scope, ['--max_iters=9', str(cfg)])  # the later one wins
    assert scope['max_iters'] == 7


def test_config_file_errors(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text("max_itres = 7\n")
    with pytest.raises(UserError, match=rf"{bad}: unknown config key 'max_itres'; did you mean max_iters"):
        configure(defaults(), [str(bad)])
    bad.write_text("compile = 'yes'\n")
    with pytest.raises(UserError, match=rf"{bad}: compile must be bool"):
        configure(defaults(), [str(bad)])
    bad.write_text("x = (\n")
    with pytest.raises(UserError, match=r'bad.py, line \d+: syntax error'):
        configure(defaults(), [str(bad)])
    bad.write_text("max_iters = 100\nlr = learning_rat / 10\n")  # a runtime error: the file's line, one message
    with pytest.raises(UserError, match=rf"^{bad}, line 2: NameError: name 'learning_rat' is not defined$"):
        configure(defaults(), [str(bad)])
    with pytest.raises(UserError, match='config file nope.py not found'):
        configure(defaults(), ['nope.py'])


def test_config_file_numpy_values_apply_and_other_types_are_errors(tmp_path):
    """A numpy scalar assigned to a config key is its Python value (np.int64 was skipped silently,
    np.float64 refused); a set or dict for a config key is an error, not skipped; None is an error
    for a key whose default is not None (it crashed later), and fine where the default is None."""
    cfg = tmp_path / 'np.py'
    cfg.write_text("import numpy as np\nmax_iters = np.int64(3)\nlearning_rate = np.float64(2e-3)\n")
    scope = defaults()
    configure(scope, [str(cfg)])
    assert scope['max_iters'] == 3 and type(scope['max_iters']) is int
    assert scope['learning_rate'] == 2e-3 and type(scope['learning_rate']) is float
    cfg.write_text("out_dir = {'a', 'b'}\n")
    with pytest.raises(UserError, match=rf"{cfg}: out_dir must be a number, string, bool, tuple or list"):
        configure(defaults(), [str(cfg)])
    with pytest.raises(UserError, match=r"command line: max_iters must be int \(default 100\), got None \(None is "
                                        r"for keys whose default is None; 'off' is 0 or ''\)"):
        configure(defaults(), ['--max_iters=None'])
    scope = defaults()
    configure(scope, ['--top_k=5', '--top_k=None'])  # its default is None (not the 5 set before)
    assert scope['top_k'] is None


def test_parse_value():
    assert parse_value('true') is True and parse_value('False') is False
    assert parse_value('None') is None and parse_value('1e-3') == 1e-3
    assert parse_value('gpt2-large') == 'gpt2-large' and parse_value('out/x') == 'out/x'


def test_lr_schedule_hand_values():
    kw = dict(learning_rate=1.0, warmup_iters=10, lr_decay_iters=110, min_lr=0.1)
    assert get_lr(0, **kw) == pytest.approx(1 / 11)
    assert get_lr(9, **kw) == pytest.approx(10 / 11)
    assert get_lr(10, **kw) == pytest.approx(1.0)
    assert get_lr(60, **kw) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi / 2)) * 0.9)  # half way
    assert get_lr(110, **kw) == pytest.approx(0.1)
    assert get_lr(500, **kw) == 0.1
    assert get_lr(5, **kw, decay_lr=False) == 1.0


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path):
    """common.write_atomic (checkpoints, log.csv, demo.py's prompt and pair files): the new text
    replaces the file whole; a write that fails midway leaves the old file and no temporary file."""
    from common import write_atomic
    path = str(tmp_path / 'sub' / 'pairs.jsonl')
    write_atomic(path, lambda f: f.write('old\n'))
    assert open(path).read() == 'old\n'

    def fails(f):
        f.write('half of the new')
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        write_atomic(path, fails)
    assert open(path).read() == 'old\n' and os.listdir(tmp_path / 'sub') == ['pairs.jsonl']
    write_atomic(path, lambda f: f.write(b'new'), binary=True, fsync=True)
    assert open(path, 'rb').read() == b'new'


def test_checkpoint_write_is_atomic_and_refuses_nan(tmp_path):
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, vocab_size=10, block_size=4))
    path = str(tmp_path / 'ckpt.pt')
    save_checkpoint(path, {'model': model.state_dict(), 'n': 1}, model)
    before = open(path, 'rb').read()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float('nan')
    with pytest.raises(UserError, match='NaN/inf weights; not saving'):
        save_checkpoint(path, {'model': model.state_dict(), 'n': 2}, model)
    assert open(path, 'rb').read() == before
    assert not (tmp_path / 'ckpt.pt.tmp').exists()
    # a write that fails midway (a full disk) leaves the old file whole and no temporary file
    with torch.no_grad():
        model.lm_head.weight[0, 0] = 0.0
    def full_disk(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')
        raise OSError(28, 'No space left on device')
    real_save, torch.save = torch.save, full_disk
    try:
        with pytest.raises(OSError):
            save_checkpoint(path, {'model': model.state_dict(), 'n': 3}, model)
    finally:
        torch.save = real_save
    assert open(path, 'rb').read() == before and os.listdir(tmp_path) == ['ckpt.pt']


def test_logger_grows_columns_and_drops_rows_on_resume(tmp_path):
    path = str(tmp_path / 'log.csv')
    log = Logger(path)
    log.log({'loss': 1.0}, 0)
    log.log({'loss': 0.9, 'val/loss': torch.tensor(2.0)}, 1)
    log.log({'loss': 0.8}, 2)
    rows = list(csv.DictReader(open(path)))
    assert [r['loss'] for r in rows] == ['1.0', '0.9', '0.8'] and rows[1]['val/loss'] == '2.0'
    Logger(path, resume_step=2).log({'loss': 0.7}, 2)  # resumed at 2: the old row 2 goes
    rows = list(csv.DictReader(open(path)))
    assert [(r['step'], r['loss']) for r in rows] == [('0', '1.0'), ('1', '0.9'), ('2', '0.7')]


def test_logger_keeps_the_old_log_until_its_first_row_and_never_writes_half_a_file(tmp_path, monkeypatch):
    """A new run's Logger leaves the previous run's log.csv as it is until it logs its first row (a
    run that fails at start kept the old ckpt.pt beside an emptied log), and a rewrite that fails
    midway (a full disk) leaves the old file whole, with no temporary file behind."""
    path = tmp_path / 'log.csv'
    old = Logger(str(path))
    old.log({'loss': 1.0}, 0)
    old.log({'loss': 0.5}, 1)
    before = path.read_text()
    log = Logger(str(path))  # a fresh run in the same out_dir
    assert path.read_text() == before
    def full_disk(self, rows):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(csv.DictWriter, 'writerows', full_disk)
    with pytest.raises(OSError):
        log.log({'loss': 2.0, 'lr': 1e-3}, 0)
    assert path.read_text() == before and os.listdir(tmp_path) == ['log.csv']
    monkeypatch.undo()
    Logger(str(path)).log({'loss': 2.0}, 0)  # the run started again
    assert [(r['step'], r['loss']) for r in csv.DictReader(open(path))] == [('0', '2.0')]



def test_read_log_numbers_by_column_and_one_line_errors(tmp_path):
    """read_log (plot.py, demo.py's envelope, bench.py --scripts): each column's (steps, values) in
    row order, a step's two rows (train and eval) both read, empty, text and non-finite cells
    skipped, a column with no number left out; a run directory means its log.csv."""
    from common import read_log
    path = str(tmp_path / 'log.csv')
    log = Logger(path)
    log.log({'train/loss': 2.5, 'lr': 1e-3, 'note': 'warmup'}, 0)
    log.log({'val/loss': 2.75, 'lr': 1e-3}, 0)  # the eval row of the same step
    log.log({'train/loss': float('nan'), 'lr': 5e-4}, 1)
    log.log({'train/loss': 1.5, 'lr': 2.5e-4}, 2)
    for where in (path, str(tmp_path)):
        got_path, series = read_log(where)
        assert got_path == path
        assert series == {'train/loss': ([0.0, 2.0], [2.5, 1.5]), 'lr': ([0.0, 0.0, 1.0, 2.0], [1e-3, 1e-3, 5e-4, 2.5e-4]),
                          'val/loss': ([0.0], [2.75])}  # no 'note': text only
    with pytest.raises(UserError, match=r"^log .*nowhere.csv not found$"):
        read_log(str(tmp_path / 'nowhere.csv'))
    (tmp_path / 'empty.csv').write_text('step,loss\n')
    with pytest.raises(UserError, match=r"empty.csv has no rows yet$"):
        read_log(str(tmp_path / 'empty.csv'))
    (tmp_path / 'other.csv').write_text('iter,loss\n0,1.0\n')
    with pytest.raises(UserError, match=r"other.csv is not a log.csv of this project \(no 'step' column\)$"):
        read_log(str(tmp_path / 'other.csv'))
    (tmp_path / 'blank.csv').write_text('')
    with pytest.raises(UserError, match=r"no 'step' column"):
        read_log(str(tmp_path / 'blank.csv'))

def test_get_tokenizer_char_level_and_gpt2(tmp_path):
    import pickle
    from common import CharTokenizer, GPT2Tokenizer, get_tokenizer
    chars = sorted(set('hello world\n'))
    meta = {'vocab_size': len(chars), 'stoi': {c: i for i, c in enumerate(chars)}, 'itos': dict(enumerate(chars))}
    path = tmp_path / 'meta.pkl'
    path.write_bytes(pickle.dumps(meta))
    tok = get_tokenizer(str(path), strict=True)
    assert isinstance(tok, CharTokenizer) and tok.eot_token == meta['stoi']['\n']  # a line ends a response
    assert tok.decode(tok.encode('hello world')) == 'hello world'
    assert isinstance(get_tokenizer('gpt2', strict=True), GPT2Tokenizer)
    assert isinstance(get_tokenizer('openwebtext'), GPT2Tokenizer)  # a BPE dataset has no meta.pkl
    with pytest.raises(UserError, match="tokenizer='shakespere_char'"):
        get_tokenizer('shakespere_char', strict=True)
    # a vocabulary without '\n' has no EOS: the scripts (strict) refuse it in one line (PPO crashed on a
    # None in a tensor); sample.py (not strict) only decodes with it
    chars = sorted(set('hello world'))
    meta = {'vocab_size': len(chars), 'stoi': {c: i for i, c in enumerate(chars)}, 'itos': dict(enumerate(chars))}
    path.write_bytes(pickle.dumps(meta))
    with pytest.raises(UserError, match='has no newline character, the EOS of char-level data'):
        get_tokenizer(str(path), strict=True)
    assert get_tokenizer(str(path)).decode([0, 1]) == ''.join(chars[:2])


def test_a_literal_endoftext_in_data_is_text_not_the_eos(tmp_path):
    """GPT-2's EOS (50256) ends a response only where a script appends it by id: a response holding
    the literal string '<|endoftext|>' (scraped model output) keeps it as ordinary tokens, so SFT,
    the reward model and DPO never see an EOS in the middle of an answer. sample.py's start still
    reads the literal as EOS (allow_eos=True), as nanoGPT's sample.py does."""
    from common import GPT2Tokenizer, load_preference_pairs
    tok = GPT2Tokenizer()
    text = 'Sure.<|endoftext|> More.'
    assert tok.eot_token not in tok.encode(text) and tok.decode(tok.encode(text)) == text
    assert tok.encode(text, allow_eos=True).count(tok.eot_token) == 1
    path = tmp_path / 'pairs.jsonl'
    path.write_text(json.dumps({'prompt': '\n\nHuman: hi<|endoftext|>\n\nAssistant:', 'chosen': ' ' + text,
                                'rejected': ' No.'}) + '\n')
    (chosen, n_prompt), (rejected, _), _ = load_preference_pairs(str(path), 'train', tok, 64, 'left')[0][0]
    assert chosen.count(tok.eot_token) == 1 and chosen[-1] == tok.eot_token  # only the EOS appended at the end
    assert rejected.count(tok.eot_token) == 1 and rejected[-1] == tok.eot_token


def test_a_preference_margin_must_be_a_finite_number(tmp_path):
    """reward_train.py's optional margin: a string was a ValueError traceback naming nothing, NaN
    passed and stopped the run later with a generic alarm; both now name the file and record."""
    from common import GPT2Tokenizer, load_preference_pairs
    path = tmp_path / 'pairs.jsonl'
    for margin in ('big', float('nan'), True):
        rows = [{'prompt': 'Q:', 'chosen': ' yes', 'rejected': ' no', 'margin': 1}, {'prompt': 'Q:', 'chosen': ' a',
                                                                                    'rejected': ' b', 'margin': margin}]
        path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
        with pytest.raises(UserError, match=re.escape(f"{path}: record 1: margin must be a finite number, got {margin!r}")):
            load_preference_pairs(str(path), 'train', GPT2Tokenizer(), 64, 'left')
    path.write_text(json.dumps({'prompt': 'Q:', 'chosen': ' yes', 'rejected': ' no', 'margin': 2}) + '\n')
    assert load_preference_pairs(str(path), 'train', GPT2Tokenizer(), 64, 'left')[0][0][2] == 2.0


def test_saved_rank_state_per_rank_and_the_note_when_counts_differ(capsys):
    from common import saved_rank_state
    single = {'rng': 'r0', 'train_loader': 't0', 'rank_states': None}
    assert saved_rank_state(single, 0, 1) is single and capsys.readouterr().out == ''
    ddp = {'rng': 'r0', 'rank_states': [{'rng': 'a'}, {'rng': 'b'}]}
    assert [saved_rank_state(ddp, r, 2) for r in (0, 1)] == [{'rng': 'a'}, {'rng': 'b'}]
    assert capsys.readouterr().out == ''
    assert saved_rank_state(ddp, 2, 3) == {}  # a third rank has no saved state: no RNGs (rank 0 saved no data state)
    assert 'saved by 2 process(es), this run has 3' in capsys.readouterr().out
    assert saved_rank_state(single, 1, 2) == {'train_loader': 't0'}  # rank 0's data position, not its RNGs


def test_resume_on_more_ranks_puts_every_rank_at_the_same_point_of_the_epoch():
    """A one-process checkpoint at epoch 1, micro-batch 10 of 20, resumed with 2 DDP ranks: both
    ranks go on at epoch 1, 5 of their 10 (rank 1 restarted at epoch 0, index 0, so the ranks walked
    different epochs' orders for the rest of the run)."""
    from common import EpochBatches, saved_rank_state
    single = EpochBatches(list(range(40)), 2, 7, collate=list)
    for _ in range(30):
        single.next()
    checkpoint = {'rng': 'r', 'train_loader': single.state_dict()}
    for rank in (0, 1):
        loader = EpochBatches(list(range(40)), 2, 7, collate=list, rank=rank, world_size=2)
        loader.load_state_dict(saved_rank_state(checkpoint, rank, 2)['train_loader'])
        assert (loader.epoch, loader.index, len(loader.batches)) == (1, 5, 10), rank


def test_pad_left_masks_padding_even_when_it_is_a_real_token():
    from common import pad_left
    ids, mask = pad_left([[5, 6, 7], [9], [0, 8]], 0, 'cpu')  # pad 0 is also the third prompt's first token
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_auto_dtype_is_float16_on_a_gpu_without_native_bf16(monkeypatch):
    """dtype='auto' on CUDA: bf16 where the GPU computes it natively (compute capability 8+),
    float16 + GradScaler on a T4/V100/RTX 20xx, which torch.cuda.is_bf16_supported() answers True
    for by default (emulation)."""
    from common import resolve_dtype
    seen = []

    def fake_is_bf16_supported(including_emulation=True):
        seen.append(including_emulation)
        return including_emulation or native  # an sm_75 card: emulated only

    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', fake_is_bf16_supported)
    for native, expected in ((False, 'float16'), (True, 'bfloat16')):
        assert resolve_dtype('auto', 'cuda') == expected
    assert seen == [False, False]
    assert resolve_dtype('auto', 'cpu') == 'float32'


def test_rng_state_saved_on_more_gpus_restores_on_fewer(monkeypatch):
    """A checkpoint saved where 2 GPUs were visible resumes where 1 is: that GPU's generator is
    restored (torch.cuda.set_rng_state_all indexed past the visible devices)."""
    from common import get_rng_state, set_rng_state
    state, restored = get_rng_state(), []
    state['cuda'] = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda s, device: restored.append((int(s[0]), device)))

    def set_all(states):  # as torch's: one set_rng_state per saved state, by index
        for i, s in enumerate(states):
            if i >= torch.cuda.device_count():
                raise IndexError('list index out of range')  # torch.cuda.default_generators[i]
            torch.cuda.set_rng_state(s, i)

    monkeypatch.setattr(torch.cuda, 'set_rng_state_all', set_all)
    set_rng_state(state)
    assert restored == [(1, 0)]


def test_ddp_device_auto_without_cuda_is_the_cpu(monkeypatch):
    """torchrun --backend=gloo with the default device='auto' on a machine without CUDA runs the
    ranks on the CPU (it called torch.cuda.set_device and crashed); mps is a one-line error."""
    from common import ddp_device
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: False)
    assert ddp_device('auto', 1) == 'cpu' and ddp_device('cpu', 1) == 'cpu'
    with pytest.raises(UserError, match='not on mps'):
        ddp_device('mps', 0)


def test_help_lists_every_key_as_the_script_defines_it(tmp_path, capsys):
    """--help (or -h) prints the usage and each config key's line of the script, its default and
    comment, and exits 0 (it was 'error: --help: flags are written --key=value')."""
    script = tmp_path / 'x.py'
    # a docstring line that reads like an assignment is not the key's line (it was: sample.py's and
    # dpo_train.py's --help showed one, dpo_train.py's with the opposite default)
    script.write_text('"""\nout_dir=\'elsewhere\' is read by ...\n"""\nimport os\nmax_iters = 100   # steps\n'
                      "out_dir = 'out'\n")
    scope = {'__file__': str(script), 'os': os, 'max_iters': 100, 'out_dir': 'out'}
    for flag in ('--help', '-h'):
        with pytest.raises(SystemExit) as e:
            configure(dict(scope), ['--max_iters=3', flag])
        assert e.value.code == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith('usage: python x.py [config/file.py ...] [--key=value ...]')
        assert out[2:] == ["  max_iters = 100   # steps", "  out_dir = 'out'"]


def test_accumulation_weights_hand_values():
    """w_i = n_i * W / N: full micro-batches weigh 1/k each; a short one by its share of the items."""
    from common import accumulation_weights
    torch.testing.assert_close(accumulation_weights(torch.tensor([4., 4., 4., 4.])), torch.full((4,), 0.25))
    torch.testing.assert_close(accumulation_weights(torch.tensor([2., 2., 1.])), torch.tensor([0.4, 0.4, 0.2]))
    losses = torch.tensor([0.5, 1.0, 3.0])  # each micro-batch's mean: over 2, 2 and 1 items
    assert (accumulation_weights(torch.tensor([2., 2., 1.])) * losses).sum().item() == pytest.approx((1 + 2 + 3) / 5)


def test_holdout_by_prompt_keeps_each_prompts_pairs_on_one_side():
    """reward_train.py's and dpo_train.py's val_fraction hold-out: every pair of a prompt on the same
    side (a pair-level split put pairs of one prompt, often one response, on both sides); with one
    pair a prompt it is the seeded permutation of the pairs, as before."""
    from common import holdout_by_prompt

    def pair(prompt):  # ((chosen_ids, n_prompt), (rejected_ids, n_prompt), margin)
        return (prompt + [9], len(prompt)), (prompt + [8], len(prompt)), None
    prompts = [[1], [1], [2], [3, 3], [3, 3], [3, 3], [4], [5], [5], [6]]
    pairs = [pair(p) for p in prompts]
    val, train = holdout_by_prompt(pairs, 0.3, 1337, 'x.jsonl')
    assert sorted(val + train) == list(range(10)) and len(val) >= 3
    assert not {tuple(prompts[i]) for i in val} & {tuple(prompts[i]) for i in train}
    unique = [pair([i]) for i in range(10)]
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1337)).tolist()
    assert holdout_by_prompt(unique, 0.3, 1337, 'x.jsonl') == (perm[:3], perm[3:])
    with pytest.raises(UserError, match=r'x.jsonl: 3 pairs \(1 prompts\) are too few to hold out val_fraction=0.1'):
        holdout_by_prompt([pair([7])] * 3, 0.1, 0, 'x.jsonl')


def test_ddp_wrap_keeps_the_gradients_in_the_buckets(tmp_path):
    """common.ddp_wrap (every DDP script's wrapper) builds DDP with gradient_as_bucket_view, and the
    scripts' zero_grad(set_to_none=False) under DDP keeps the gradients there: after a step, the next
    step's micro-step that does not sync accumulates into the same bucket storage (one process group of
    one gloo rank, in this process). Set to None, that micro-step allocates a fresh set beside the
    buckets (the second copy the wrapper exists to avoid)."""
    import torch.distributed as dist
    from common import ddp_wrap
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        storages = {}
        for set_to_none in (False, True):
            torch.manual_seed(0)
            model = ddp_wrap(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=32, block_size=8)), 0, 'cpu')
            assert model.gradient_as_bucket_view
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            ptrs = []
            for step in range(3):
                for micro in range(2):  # accumulation: all-reduce on the last micro-step only, as the scripts
                    model.require_backward_grad_sync = micro == 1
                    x = torch.randint(0, 32, (2, 8))
                    model(x, x)[1].backward()
                    ptrs.append({p.grad.untyped_storage().data_ptr() for p in model.parameters()})
                opt.step()
                opt.zero_grad(set_to_none=set_to_none)
            storages[set_to_none] = ptrs
        kept, dropped = storages[False], storages[True]  # (DDP rebuilds its buckets once, after the first step)
        assert all(len(k) == 1 for k in kept[1:]) and kept[2] == kept[3] == kept[4] == kept[5]  # one bucket, kept
        assert len(dropped[2]) > 1 and len(dropped[4]) > 1  # set to None: each step's unsynced micro-step allocates
    finally:
        dist.destroy_process_group()


def test_a_nanogpt_checkpoint_is_train_pys_to_resume():
    """nanoGPT's train.py saves model, optimizer, model_args, iter_num, best_val_loss and config (no
    'script'): init_from='resume' in train.py takes it as its own, and the other scripts refuse it."""
    from common import check_resumable, checkpoint_script
    nanogpt = {'model': {}, 'optimizer': {}, 'model_args': {}, 'iter_num': 5000, 'best_val_loss': torch.tensor(1.47),
               'config': {'dataset': 'shakespeare_char'}}
    assert checkpoint_script(nanogpt) == 'train.py'
    check_resumable(nanogpt, 'train.py', 'out/ckpt.pt')
    for script in ('reward_train.py', 'dpo_train.py', 'ppo_train.py'):
        with pytest.raises(UserError, match=f"^out/ckpt.pt is a train.py checkpoint, not {script}'s"):
            check_resumable(nanogpt, script, 'out/ckpt.pt')
