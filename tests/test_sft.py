"""SFT: data reading, chat rendering, prompt masking, token-budget batching, and a tiny run that
learns to answer and stop."""
import gzip
import json
import os
import sys

import pytest
import torch

from common import (EpochBatches, GPT2Tokenizer, UserError, read_records, render_chat, sft_batch, sft_pair,
                    token_budget_batches, tokenize_pair)
from conftest import ROOT, make_hf_gpt2, run_python
from model import GPT, IGNORE_INDEX

EOS = 9


def test_targets_cover_exactly_response_and_eos():
    ids, n_prompt = tokenize_pair([1, 2, 3], [4, 5], EOS, block_size=16, truncation='left')
    assert ids == [1, 2, 3, 4, 5, EOS] and n_prompt == 3
    short = tokenize_pair([7], [8], EOS, block_size=16, truncation='left')
    X, Y = sft_batch([(ids, n_prompt), short], pad_id=EOS, device='cpu')
    I = IGNORE_INDEX
    assert X.tolist() == [[1, 2, 3, 4, 5], [7, 8, EOS, EOS, EOS]]
    # position t predicts ids[t + 1]: the prompt's own tokens are never targets, EOS is one
    assert Y.tolist() == [[I, I, 4, 5, EOS], [8, EOS, I, I, I]]


def test_an_empty_prompt_starts_with_eos_so_every_response_token_is_a_target():
    """An empty prompt ({"prompt": "", ...}) is [EOS] (GPT-2's <|endoftext|> start token): SFT's
    batch crashed on it (a -1 slice), and DPO never scored the response's first token."""
    from common import tokenize_preference
    from losses import sequence_logprobs
    ids, n_prompt = tokenize_pair([], [5, 6, 7], 50256, 16, 'left')
    assert (ids, n_prompt) == ([50256, 5, 6, 7, 50256], 1)
    X, Y = sft_batch([(ids, n_prompt)], 0, 'cpu')
    assert Y.tolist() == [[5, 6, 7, 50256]]
    chosen, rejected = tokenize_preference([], [5], [6, 7], 50256, 16, 'left')
    assert chosen == ([50256, 5, 50256], 1) and rejected == ([50256, 6, 7, 50256], 1)
    logits = torch.randn(1, 3, 50257, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits, -1)
    got = sequence_logprobs(logits, torch.tensor([chosen[0]]), torch.tensor([[0, 1, 1]]))
    torch.testing.assert_close(got, logp[0, 0, 5:6] + logp[0, 1, 50256:50257])  # ' yes' itself is scored


def test_targets_in_real_text_with_gpt2_tokens():
    tok = GPT2Tokenizer()
    prompt, response = "\n\nHuman: Hi there\n\nAssistant:", " Hello! How can I help?"
    ids, n_prompt = tokenize_pair(tok.encode(prompt), tok.encode(response), tok.eot_token, 64, 'left')
    X, Y = sft_batch([(ids, n_prompt)], tok.eot_token, 'cpu')
    trained = Y[0][Y[0] != IGNORE_INDEX].tolist()
    assert trained[-1] == tok.eot_token == 50256
    assert tok.decode(trained[:-1]) == response
    assert tok.decode(X[0, :n_prompt].tolist()) == prompt


def test_truncation_keeps_the_response():
    ids, n_prompt = tokenize_pair([1, 2, 3, 4], [5, 6], EOS, block_size=5, truncation='left')
    assert ids == [2, 3, 4, 5, 6, EOS] and n_prompt == 3  # the prompt's left end went
    assert tokenize_pair([1, 2, 3, 4], [5, 6], EOS, block_size=5, truncation='drop') is None
    assert tokenize_pair([1], [2, 3, 4, 5, 6], EOS, block_size=5, truncation='left') is None  # no prompt left
    assert tokenize_pair([1, 2], [3], EOS, block_size=3, truncation='drop') == ([1, 2, 3, EOS], 2)  # fits exactly


def test_render_chat_format():
    messages = [{'role': 'system', 'content': 'Be brief.'},
                {'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello.'},
                {'role': 'user', 'content': 'Bye'}, {'role': 'assistant', 'content': 'Goodbye.'}]
    prompt, response = render_chat(messages)
    assert prompt == "Be brief.\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye\n\nAssistant:"
    assert response == " Goodbye."
    assert sft_pair({'messages': messages}, 'r') == (prompt, response)
    assert sft_pair({'prompt': 'a', 'response': 'b', 'extra': 1}, 'r') == ('a', 'b')
    with pytest.raises(UserError, match="last message must be the assistant's"):
        render_chat(messages[:-1])
    with pytest.raises(UserError, match="message 1 has role 'bot'"):
        render_chat([{'role': 'user', 'content': 'x'}, {'role': 'bot', 'content': 'y'}])
    with pytest.raises(UserError, match=r"data.jsonl: record 3 has neither 'prompt' and 'response'"):
        sft_pair({'prompt': 'only a prompt'}, 'data.jsonl: record 3')


def test_read_records_formats_and_errors(tmp_path):
    recs = [{'prompt': 'p', 'response': 'r'}, {'prompt': 'q', 'response': 's'}]
    (tmp_path / 'a.json').write_text(json.dumps(recs))
    (tmp_path / 'a.jsonl').write_text('\n'.join(json.dumps(r) for r in recs) + '\n\n')
    with gzip.open(tmp_path / 'a.jsonl.gz', 'wt') as f:
        f.write('\n'.join(json.dumps(r) for r in recs))
    for name in ('a.json', 'a.jsonl', 'a.jsonl.gz'):
        assert read_records(str(tmp_path / name)) == recs
    (tmp_path / 'bad.jsonl').write_text(json.dumps(recs[0]) + '\n{"prompt": "x",\n')
    with pytest.raises(UserError, match=r'bad.jsonl, line 2: invalid JSON'):
        read_records(str(tmp_path / 'bad.jsonl'))
    (tmp_path / 'empty.jsonl').write_text('\n')
    with pytest.raises(UserError, match='has no records'):
        read_records(str(tmp_path / 'empty.jsonl'))
    with pytest.raises(UserError, match='not found'):
        read_records(str(tmp_path / 'missing.jsonl'))
    # a mistyped path is not looked up on the hub (offline: datasets' traceback), whatever its ending
    for typo in ('data/hh_rlhf/sft_train.jsnol', './sft.txt', str(tmp_path / 'data.txt')):
        with pytest.raises(UserError, match=f'data file {typo} not found'):
            read_records(typo)
    # a .gz that is not gzip, a file that is not UTF-8: the file named in one line
    (tmp_path / 'plain.jsonl.gz').write_text(json.dumps(recs[0]) + '\n')
    (tmp_path / 'latin1.jsonl').write_bytes(b'{"prompt": "caf\xe9", "response": "b"}\n')
    for name in ('plain.jsonl.gz', 'latin1.jsonl'):
        with pytest.raises(UserError, match=f'{name} could not be read'):
            read_records(str(tmp_path / name))


def test_a_hub_dataset_that_cannot_load_is_one_line(monkeypatch):
    """A name that may be a hub dataset goes to datasets.load_dataset; its failure (no network, no
    such dataset or split) is one line naming the source, not datasets' traceback."""
    import sys
    import types

    def load_dataset(name, split=None):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)\nmore detail")
    monkeypatch.setitem(sys.modules, 'datasets', types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(UserError) as e:
        read_records('someone/no-such-dataset', 'train')
    assert str(e.value) == ("someone/no-such-dataset: not a local file, and the Hugging Face hub could not load it "
                            "(split 'train'): ConnectionError: Couldn't reach 'someone/no-such-dataset' on the Hub "
                            "(LocalEntryNotFoundError)")


def test_token_budget_batches_respect_budget_and_cover_each_example_once():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 65, (500,), generator=g).tolist()
    for budget in (64, 100, 256):
        batches = token_budget_batches(lengths, budget, torch.Generator().manual_seed(budget))
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert all(len(b) * max(lengths[i] for i in b) <= budget for b in batches)
        # sorting by length keeps padding small: most slots hold real tokens
        used = sum(lengths[i] for b in batches for i in b)
        slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        assert used / slots > 0.8


def test_sft_batches_epochs_and_resume():
    examples = [([1] * (n + 2), 1) for n in range(10)]
    collate = lambda batch: sft_batch(batch, 0, 'cpu')
    a = EpochBatches(examples, 3, seed=5, collate=collate)
    epoch = [a.next() for _ in range(4)]  # 10 examples, batch 3: 4 batches an epoch
    assert sum(x.size(0) for x, _ in epoch) == 10 and a.epoch == 0
    a.next()
    assert a.epoch == 1
    state = a.state_dict()
    b = EpochBatches(examples, 3, seed=5, collate=collate)
    b.load_state_dict(state)
    for _ in range(6):
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_epoch_batches_resume_under_another_plan_goes_on_at_the_same_share_of_the_epoch(capsys):
    """A resume with another batch_size (or tokens_per_batch, or DDP world size) plans another number
    of micro-batches per epoch: the saved index (28 of 48) becomes the same share of the new plan
    (14 of 24) with a note, instead of an IndexError past the end; an older state past the end (no
    n_batches) starts the next epoch."""
    a = EpochBatches(list(range(95)), 2, 1337, collate=list)
    for _ in range(28):
        a.next()
    b = EpochBatches(list(range(95)), 4, 1337, collate=list)
    b.load_state_dict(a.state_dict())
    assert b.index == 14 and len(b.next()) == 4 and 'resuming 14/24 into epoch 0 (not exact)' in capsys.readouterr().out
    b.load_state_dict({'epoch': 0, 'index': 28})  # a checkpoint from before n_batches was saved
    assert len(b.next()) == 4 and b.epoch == 1 and b.index == 1
    c = EpochBatches(list(range(95)), 2, 1337, collate=list)  # the same plan: exact, no note
    c.load_state_dict(a.state_dict())
    assert c.next() == a.next() and capsys.readouterr().out == ''


def test_a_state_saved_before_stream_seed_resumes_in_its_own_order():
    """A checkpoint from before the per-seed streams (its state has no 'order') keeps planning its
    epochs as seed + epoch, so a run resumed mid-epoch neither repeats nor skips items; later saves
    keep that order."""
    old_state = {'epoch': 1, 'index': 3}  # what state_dict() held then
    loader = EpochBatches(list(range(20)), 2, 5, collate=list)
    loader.load_state_dict(old_state)
    expected = torch.randperm(20, generator=torch.Generator().manual_seed(5 + 1)).tolist()
    assert [x for b in loader.batches for x in b] == expected
    assert loader.state_dict()['order'] == 'seed+epoch'
    assert EpochBatches(list(range(20)), 2, 5, collate=list).state_dict()['order'] == 'stream'


def test_epoch_orders_of_consecutive_seeds_are_unrelated():
    """Seed 2's first epoch is not seed 1's second (it was, with the order drawn from seed + epoch),
    and stream_seed is a fixed function of its arguments (a resume in a new process gets the same)."""
    from common import stream_seed
    def orders(seed, epochs):  # each epoch's order of 50 items in one batch
        loader = EpochBatches(list(range(50)), 50, seed, collate=list)
        return [loader.next() for _ in range(epochs)]
    s1, s2 = orders(1, 3), orders(2, 3)
    assert s1[1] != s2[0] and s1[2] != s2[1] and s1[0] != s1[1]
    assert stream_seed(1, 'epoch', 1) == 6608109454576381758  # sha256 of repr((1, 'epoch', 1)), 63 bits
    assert len({stream_seed(s, k, i) for s in range(5) for k in ('epoch', 'rollout') for i in range(5)}) == 50
    assert all(0 <= stream_seed(s, 'epoch', 0) < 2 ** 63 for s in range(-3, 3))


def test_epoch_batches_drop_last_leaves_out_the_short_batch():
    """drop_last=True (PPO's rollouts are all batch_size prompts): an epoch of 10 items in batches
    of 3 is 3 full batches, the next epoch starts after them; without it, 4 with a last one of 1."""
    a = EpochBatches(list(range(10)), 3, seed=5, collate=list, drop_last=True)
    b = EpochBatches(list(range(10)), 3, seed=5, collate=list)
    assert [len(x) for x in a.batches] == [3, 3, 3] and [len(x) for x in b.batches] == [3, 3, 3, 1]
    first = [a.next() for _ in range(3)]
    assert first == [b.next() for _ in range(3)] and len(set(sum(first, []))) == 9
    a.next()
    assert a.epoch == 1


def test_epoch_batches_split_each_epoch_across_ddp_ranks():
    """Under DDP every rank plans the same epoch and takes every world_size-th micro-batch: the
    ranks' batches are disjoint, together they are the single process's epoch (less the tail that
    does not divide), and rank 0 of 1 is the single process. Token-budget batches split the same."""
    items = list(range(23))  # batch 3: 8 batches an epoch, the last of 2
    for kw in (dict(), dict(lengths=[1 + i % 5 for i in items], tokens_per_batch=6)):
        one = EpochBatches(items, 3, seed=7, collate=list, **kw)
        epochs = [[one.next() for _ in range(len(one.batches))] for _ in range(2)]
        for world in (2, 3):
            ranks = [EpochBatches(items, 3, seed=7, collate=list, rank=r, world_size=world, **kw) for r in range(world)]
            n = len(epochs[0]) // world
            for e in range(2):
                got = [[ranks[r].next() for _ in range(n)] for r in range(world)]
                assert [b for step in zip(*got) for b in step] == epochs[e][:n * world]
                seen = [i for batches in got for b in batches for i in b]
                assert len(seen) == len(set(seen))  # no item twice in an epoch
            assert all(rk.epoch == 1 for rk in ranks)
    with pytest.raises(UserError, match='2 micro-batches per epoch cannot be split across 3 DDP ranks'):
        EpochBatches(items[:6], 3, seed=7, collate=list, rank=0, world_size=3)


# ----------------------------------------------------------------------------------------------
# end to end: train.py in SFT mode

KEYS = ['apple', 'banana', 'cherry', 'grape', 'lemon', 'lime', 'mango', 'orange', 'peach', 'pear',
        'plum', 'kiwi', 'melon', 'fig', 'date', 'olive', 'berry', 'coconut', 'papaya', 'guava']
COLORS = ['red', 'yellow', 'green', 'blue', 'black', 'white', 'pink', 'brown', 'gray', 'purple']
TEMPLATES = ['What color is {}?', 'Tell me the color of {}.', 'Color of {}?', 'Which color does {} have?',
             'Name the color of {}', 'I wonder what color {} is', 'What is the color of {}?',
             'Say the color of {}.', 'colour of {}?', 'Give the color: {}']


def synthetic_records():
    """200 records whose response is a fixed function of the prompt: the color assigned to a fruit."""
    return [{'prompt': f"\n\nHuman: {t.format(k)}\n\nAssistant:", 'response': f" {COLORS[i % 10]}"}
            for t in TEMPLATES for i, k in enumerate(KEYS)]


def run_train(args, cwd, fresh=False):
    p = run_python([sys.executable, os.path.join(ROOT, 'train.py'), *args], cwd=cwd,
                   capture_output=True, text=True, timeout=300, fresh=fresh)
    return p


SFT_TINY = ['--device=cpu', '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=64', '--block_size=32',
            '--batch_size=16', '--gradient_accumulation_steps=1', '--warmup_iters=10', '--learning_rate=3e-3',
            '--min_lr=3e-4', '--eval_iters=10', '--val_fraction=0.1']


def test_tiny_sft_learns_to_answer_and_stop(tmp_path):
    data = tmp_path / 'sft.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in synthetic_records()))
    out = tmp_path / 'out'
    p = run_train(SFT_TINY + [f'--sft_data={data}', f'--out_dir={out}', '--max_iters=150', '--lr_decay_iters=150',
                              '--eval_interval=75'], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'SFT examples: 180 train, 20 val; 0 truncated' in p.stdout
    import csv
    val = [float(r['val/loss']) for r in csv.DictReader(open(out / 'log.csv')) if r['val/loss']]
    assert val[0] > 8 and val[-1] < 1.0  # response loss from ~ln(50304) down
    model, _ = GPT.from_checkpoint(str(out))
    model.eval()
    tok = GPT2Tokenizer()
    correct = 0
    for r in synthetic_records()[::7]:
        prompt = tok.encode(r['prompt'])
        out_ids = model.generate(torch.tensor([prompt]), 6, temperature=0, eos_token_id=tok.eot_token)
        new = out_ids[0, len(prompt):].tolist()
        correct += new[:new.index(tok.eot_token) if tok.eot_token in new else None] == tok.encode(r['response']) \
            and tok.eot_token in new
    assert correct >= 0.9 * len(synthetic_records()[::7])  # answers, then emits EOS


def test_sft_speed_figures_count_the_tokens_actually_trained(tmp_path):
    """SFT micro-batches are padded to their longest example, and with tokens_per_batch hold at most
    that many tokens, not batch_size x block_size: the printed tokens per iteration and the MFU (the
    first one logged, at iteration 5, is not smoothed) count the tokens of the iteration, and its
    attention term is at the rows' length, not block_size's (here every record is the same, so every
    row has T = its prompt and response tokens: X is ids[:-1] of prompt + response + EOS)."""
    import csv
    from model import train_flops_per_token
    record = {'prompt': '\n\nHuman: What color is a kiwi?\n\nAssistant:', 'response': ' green'}
    T = len(GPT2Tokenizer().encode(record['prompt'])) + len(GPT2Tokenizer().encode(record['response']))
    assert T < 32  # block_size
    data = tmp_path / 'sft.jsonl'
    data.write_text('\n'.join(json.dumps(record) for _ in range(200)))
    out = tmp_path / 'out'
    p = run_train(SFT_TINY + [f'--sft_data={data}', f'--out_dir={out}', '--max_iters=6', '--eval_interval=6',
                              '--tokens_per_batch=64', '--gradient_accumulation_steps=2', '--log_interval=1'], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'tokens per iteration: at most 128' in p.stdout  # 2 micro-batches of at most 64 tokens
    rows = {r['step']: r for r in csv.DictReader(open(out / 'log.csv')) if r['train/loss_step']}
    assert [rows[str(i)]['mfu'] for i in range(5)] == [''] * 5  # not measured yet: empty, not nanoGPT's -1
    row = rows['5']
    model, _ = GPT.from_checkpoint(str(out))
    per_token = train_flops_per_token(model.get_num_params(), 2, 64, T) / 312e12  # model.estimate_mfu's
    assert float(row['mfu']) == pytest.approx(float(row['tokens_per_s']) * per_token, rel=1e-6)


def test_lora_sft_trains_only_adapters(tmp_path):
    hf_dir = tmp_path / 'hf'
    make_hf_gpt2(str(hf_dir), vocab_size=50257, n_positions=64)  # GPT-2's vocabulary for the BPE data
    data = tmp_path / 'sft.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in synthetic_records()))
    out = tmp_path / 'out'
    p = run_train(SFT_TINY + [f'--sft_data={data}', f'--out_dir={out}', f'--init_from={hf_dir}', '--max_iters=6',
                              '--eval_interval=3', '--lora_rank=4', '--lora_targets=attn,mlp',
                              '--tokens_per_batch=256'], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'LoRA rank 4 on attn,mlp' in p.stdout
    base = GPT.from_pretrained(str(hf_dir), block_size=32).state_dict()
    sd = torch.load(out / 'ckpt.pt', weights_only=False)['model']
    assert any(k.endswith('lora_B') and sd[k].abs().sum() > 0 for k in sd)  # the adapters moved
    assert all(torch.equal(sd[k], base[k]) for k in base)  # the base weights did not


@pytest.mark.parametrize('content, message', [
    ('{"prompt": "a", "response": "b"}\n{"prompt": \n', r'sft.jsonl, line 2: invalid JSON'),
    ('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n', r"sft.jsonl: record 1 has neither 'prompt' and 'response'"),
    ('\n', r'sft.jsonl has no records'),
])
def test_bad_sft_data_is_one_clear_line(tmp_path, content, message):
    data = tmp_path / 'sft.jsonl'
    data.write_text(content)
    p = run_train(SFT_TINY + [f'--sft_data={data}', f'--out_dir={tmp_path / "out"}'], tmp_path)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1, p.stderr[-2000:]
    import re
    assert err[0].startswith('error: ') and re.search(message, err[0])


def test_sft_from_a_char_level_model_is_one_clear_line(tmp_path):
    """SFT records are GPT-2 BPE tokens: a model of a 65-character vocabulary is refused in one
    line (an IndexError inside the embedding on CPU, a device-side assert on CUDA)."""
    from dataclasses import asdict
    from common import save_checkpoint
    from model import GPTConfig
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=65, block_size=32))
    save_checkpoint(str(tmp_path / 'char' / 'ckpt.pt'), {'model': model.state_dict(), 'model_args': asdict(model.config)},
                    model)
    data = tmp_path / 'sft.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in synthetic_records()))
    p = run_train(SFT_TINY + [f'--sft_data={data}', f'--out_dir={tmp_path / "out"}', f'--init_from={tmp_path / "char"}',
                              '--max_iters=2'], tmp_path)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1, p.stderr[-2000:]
    assert err[0].startswith("error: sft_data is GPT-2 tokens (50257) but") and "vocab_size is 65" in err[0]


def test_bad_lora_target_is_one_clear_line(tmp_path):
    data = tmp_path / 'sft.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in synthetic_records()))
    p = run_train(SFT_TINY + [f'--sft_data={data}', '--lora_rank=4', '--lora_targets=atn'], tmp_path)
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith("error: lora_targets: unknown target 'atn'")


def test_sft_resume_continues_the_identical_curve(tmp_path):
    data = tmp_path / 'sft.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in synthetic_records()))
    base = SFT_TINY + [f'--sft_data={data}', '--lr_decay_iters=12', '--eval_interval=6', '--tokens_per_batch=256',
                       '--dropout=0.1', '--block_size=12']  # 12: most prompts are cut, so block_size matters
    # the resumed part gives another block_size: the run goes on at the checkpoint's, its data read at it too
    for args in ([f'--out_dir={tmp_path / "a"}', '--max_iters=12'], [f'--out_dir={tmp_path / "b"}', '--max_iters=6'],
                 [f'--out_dir={tmp_path / "b"}', '--max_iters=12', '--block_size=32', '--init_from=resume']):
        p = run_train(base + args, tmp_path, fresh='resume' in args[-1])  # the resumed part: a new hash seed
        assert p.returncode == 0, p.stderr[-2000:]
        assert 'SFT examples: 180 train, 20 val; 200 truncated' in p.stdout, p.stdout[-2000:]
    assert 'note: block_size=12 from the checkpoint (config says 32)' in p.stdout
    import csv
    curve = lambda d: [r['train/loss_step'] for r in csv.DictReader(open(tmp_path / d / 'log.csv')) if r['train/loss_step']]
    assert len(curve('a')) == 12 and curve('a') == curve('b')  # the batch order resumed mid-epoch, exactly


def test_an_sft_checkpoint_of_the_older_train_py_resumes_exactly_without_a_note(tmp_path):
    """train.py before 2026-11-28 also saved 'train_gen' (its pretraining batch generator); an SFT
    checkpoint's batches come from its sft_loader and its dropout from 'rng', both restored, so it
    resumes exactly and gets no 'draws other batches' note (it got one)."""
    data = tmp_path / 'sft.jsonl'
    data.write_text('\n'.join(json.dumps(r) for r in synthetic_records()))
    base = SFT_TINY + [f'--sft_data={data}', '--lr_decay_iters=8', '--eval_interval=4', '--dropout=0.1']
    for args in ([f'--out_dir={tmp_path / "a"}', '--max_iters=8'], [f'--out_dir={tmp_path / "b"}', '--max_iters=4']):
        assert run_train(base + args, tmp_path).returncode == 0
    ckpt = torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=False)
    ckpt['train_gen'] = torch.Generator().get_state()
    torch.save(ckpt, tmp_path / 'b' / 'ckpt.pt')
    p = run_train(base + [f'--out_dir={tmp_path / "b"}', '--max_iters=8', '--init_from=resume'], tmp_path, fresh=True)
    assert p.returncode == 0, p.stderr[-2000:]
    import csv
    curve = lambda d: [r['train/loss_step'] for r in csv.DictReader(open(tmp_path / d / 'log.csv')) if r['train/loss_step']]
    assert len(curve('a')) == 8 and curve('a') == curve('b')
    assert 'draws other batches' not in p.stdout + p.stderr


def random_value_head_checkpoint(tmp_path):
    """(model, path): a 1-layer GPT with GPT-2's vocabulary and a value head, weights N(0, 1) so
    its tokens and scores depend strongly on its input, saved as this project's checkpoint."""
    from dataclasses import asdict
    from common import save_checkpoint
    from model import GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=50257, block_size=64, value_head=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0)
    ckpt = str(tmp_path / 'ckpt.pt')
    save_checkpoint(ckpt, {'model': model.state_dict(), 'model_args': asdict(model.config)}, model)
    return model.eval(), ckpt


def test_sample_start_reads_a_literal_endoftext_as_the_eos_token(tmp_path):
    """sample.py --start='<|endoftext|>' is GPT-2's EOS token (50256), as in nanoGPT's sample.py,
    although data text keeps the literal as ordinary tokens: the greedy sample equals the model's
    own continuation of [50256]."""
    model, ckpt = random_value_head_checkpoint(tmp_path)
    p = run_python([sys.executable, os.path.join(ROOT, 'sample.py'), f'--init_from={ckpt}', '--start=<|endoftext|>',
                        '--temperature=0', '--num_samples=1', '--max_new_tokens=6', '--device=cpu'],
                   cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    expected = model.generate(torch.tensor([[50256]]), 6, temperature=0)[0].tolist()
    assert p.stdout.split('\n---------------')[0] == GPT2Tokenizer().decode(expected)


def test_chat_prompt_from_a_file_is_the_typed_prompt(tmp_path):
    """sample.py --chat renders start as an SFT prompt ("\\n\\nHuman: {start}\\n\\nAssistant:"; hh-rlhf's
    human turns never end in whitespace): a prompt file's trailing newline must not reach the template
    ("...?\\n\\n\\nAssistant:" is another prompt). Seen through --score, whose reward of the prompt +
    answer (a random value-head model, sampled and scoring) changes with any token of the prompt."""
    ckpt = random_value_head_checkpoint(tmp_path)[1]
    (tmp_path / 'prompt.txt').write_text("How do I make tea?\n")
    args = [os.path.join(ROOT, 'sample.py'), f'--init_from={ckpt}', f'--score={ckpt}', '--chat=True',
            '--temperature=0', '--num_samples=1', '--max_new_tokens=4', '--device=cpu']
    typed, from_file = (run_python([sys.executable, *args, start], cwd=tmp_path, capture_output=True, text=True,
                                   timeout=300) for start in ('--start=How do I make tea?', '--start=FILE:prompt.txt'))
    assert typed.returncode == 0 and from_file.returncode == 0, typed.stderr[-2000:] + from_file.stderr[-2000:]
    assert 'reward: ' in typed.stdout and from_file.stdout == typed.stdout
    # 4 tokens of a random model end without EOS: the score says it read a cut answer
    assert '(no EOS within max_new_tokens: scored as if it ended here)' in typed.stdout


def test_score_of_a_response_longer_than_the_reward_model_keeps_its_end(tmp_path):
    """sample.py --score with responses longer than the reward model's block_size (64 here) printed the
    first sample, then stopped with 'a response of 100 tokens does not fit block_size=64'. Each sample is
    now scored, as RewardModel scores it for PPO, on the prompt's last token + the response's last 62
    tokens + EOS (the reward is read at the end), with a note saying so."""
    model, ckpt = random_value_head_checkpoint(tmp_path)
    p = run_python([sys.executable, os.path.join(ROOT, 'sample.py'), f'--init_from={ckpt}', f'--score={ckpt}',
                    '--chat=True', '--start=Tell me a story', '--num_samples=2', '--max_new_tokens=100', '--device=cpu'],
                   cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    note = f'note: {ckpt} has no reward normalisation stats; normalize=True uses mean 0, std 1\n'
    assert p.stdout.startswith(note)  # (RewardModel's, on stdout before the samples)
    samples = p.stdout[len(note):].split('\n---------------\n')[:-1]
    assert len(samples) == 2
    enc = GPT2Tokenizer()
    last_prompt_token = enc.encode('\n\nHuman: Tell me a story\n\nAssistant:')[-1]
    for sample in samples:
        answer, reward = sample.rsplit('\nreward: ', 1)
        n = len(enc.encode(answer))
        assert n > 62 and f'(response of {n} tokens: scored on its last 62, as many as fit the reward model)' in reward
        ids = torch.tensor([[last_prompt_token] + enc.encode(answer)[-62:] + [enc.eot_token]])  # (1, 64)
        with torch.no_grad():
            expected = model.value(model.trunk(ids))[0, -1].item()
        assert abs(float(reward.split()[0]) - expected) < 1e-3, (reward, expected)
