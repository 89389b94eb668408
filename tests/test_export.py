"""export_hf.py: checkpoints of this project -> transformers directories, reloaded with transformers
(offline) and compared with our model: policy logits, merged LoRA, padded vocabularies, bias=False,
char-level models, the reward classifier's score at the last real token, the tokenizer, pipeline
generation, and one-line errors."""
import json
import os
import sys
from dataclasses import asdict

import pytest
import torch

from common import GPT2Tokenizer, HFRewardModel, save_checkpoint, score_texts
from conftest import ROOT, make_hf_gpt2, run_python
from model import GPT, GPTConfig

TEXTS = ["Hello world", " Hello  world!\n\n\tTabs  and   spaces ", "naïve café — 日本語 🤖 emoji",
         "I'm sure they'll say we've 12345 apples, 3.14159", "\n\nHuman: hi\n\nAssistant: ok<|endoftext|>",
         "  leading", "trailing   ", ""]


def save_project_checkpoint(path, model, **extra):
    """path/ckpt.pt as the training scripts write it (model, model_args, + extra keys)."""
    save_checkpoint(os.path.join(path, 'ckpt.pt'), {'model': model.state_dict(),
                                                    'model_args': asdict(model.config), **extra}, model)
    return path


def export(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1')  # 2 shared cores
    return run_python([sys.executable, os.path.join(ROOT, 'export_hf.py'), *args],
                      capture_output=True, text=True, timeout=300, env=env)


def export_ok(ckpt, export_dir, *args):
    r = export(f'--ckpt={ckpt}', f'--export_dir={export_dir}', *args)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def random_ids(vocab_size, B=3, T=12, seed=0):
    return torch.randint(vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module')
def policy_export(tmp_path_factory):
    """(our GPT, export dir) of a tiny random GPT-2 with GPT-2's vocabulary, through a checkpoint."""
    d = tmp_path_factory.mktemp('policy')
    make_hf_gpt2(str(d / 'hf-init'), vocab_size=50257, n_positions=64)
    model = GPT.from_pretrained(str(d / 'hf-init')).eval()
    save_project_checkpoint(str(d / 'run'), model, iter_num=10, best_val_loss=1.0)
    out = export_ok(str(d / 'run' / 'ckpt.pt'), str(d / 'hf'))
    assert 'verify: max |logit difference|' in out
    return model, str(d / 'hf')


def test_policy_logits_equal_ours(policy_export):
    from transformers import GPT2LMHeadModel
    model, path = policy_export
    hf = GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32).eval()
    assert hf.config.vocab_size == 50257 and hf.config.eos_token_id == 50256
    idx = random_ids(50257)
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=0)
    assert set(os.listdir(path)) >= {'config.json', 'model.safetensors', 'tokenizer.json',
                                     'tokenizer_config.json', 'vocab.json', 'merges.txt'}


def test_tokenizer_round_trips_like_tiktoken(policy_export):
    from transformers import AutoTokenizer, GPT2Tokenizer as HFGPT2Tokenizer
    _, path = policy_export
    ours = GPT2Tokenizer()
    slow_dir = os.path.join(os.path.dirname(path), 'vocab-merges-only')  # the classic pair alone
    os.makedirs(slow_dir, exist_ok=True)
    for name in ('vocab.json', 'merges.txt'):
        with open(os.path.join(path, name), encoding='utf-8') as f, \
                open(os.path.join(slow_dir, name), 'w', encoding='utf-8') as g:
            g.write(f.read())
    for tok in (AutoTokenizer.from_pretrained(path), HFGPT2Tokenizer.from_pretrained(slow_dir)):
        assert len(tok) == 50257 and tok.eos_token_id == 50256
        for text in TEXTS:
            ids = tok(text)['input_ids']  # HF reads a literal <|endoftext|> as EOS, as ours does with allow_eos
            assert ids == ours.encode(text, allow_eos=True), text
            assert tok.decode(ids) == text
    merges = open(os.path.join(path, 'merges.txt'), encoding='utf-8').read().splitlines()
    assert merges[0] == '#version: 0.2' and len(merges) == 1 + 50000
    assert merges[1] == '\u0120 t'  # GPT-2's first merge: " t" (space is \u0120 in byte-level BPE)


def test_tokenizer_files_equal_openai_originals(policy_export):
    """vocab.json and merges.txt equal GPT-2's encoder.json and vocab.bpe, which tiktoken's cache
    holds (as files named by a hash of their URL) when it was filled from them."""
    _, path = policy_export
    cache = os.environ['TIKTOKEN_CACHE_DIR']
    originals = {}
    for name in os.listdir(cache):
        text = open(os.path.join(cache, name), encoding='utf-8').read()
        originals['merges' if text.startswith('#version') else 'vocab'] = text
    if set(originals) != {'merges', 'vocab'}:
        pytest.skip(f"GPT-2's original encoder.json / vocab.bpe are not in {cache}")
    assert json.load(open(os.path.join(path, 'vocab.json'), encoding='utf-8')) == json.loads(originals['vocab'])
    ours = open(os.path.join(path, 'merges.txt'), encoding='utf-8').read().split('\n')
    assert [m for m in ours if m] == [m for m in originals['merges'].split('\n') if m]


def test_pipeline_generates_our_greedy_tokens(policy_export):
    from transformers import pipeline
    model, path = policy_export
    pipe = pipeline('text-generation', model=path, device='cpu')
    prompt = "The meaning of life is"
    out = pipe(prompt, max_new_tokens=8, do_sample=False)[0]['generated_text']
    assert out.startswith(prompt) and len(out) > len(prompt)
    tok = GPT2Tokenizer()
    ids = model.generate(torch.tensor([tok.encode(prompt)]), 8, temperature=0, eos_token_id=50256)
    assert out == tok.decode(ids[0].tolist())


def test_lora_export_equals_unmerged_model(tmp_path):
    from transformers import GPT2LMHeadModel
    make_hf_gpt2(str(tmp_path / 'hf-init'), vocab_size=50257, n_positions=64)
    model = GPT.from_pretrained(str(tmp_path / 'hf-init'), lora_rank=4, lora_targets='attn,mlp').eval()
    with torch.no_grad():  # trained-looking adapters (a fresh B = 0 would make merging trivial)
        for n, p in model.named_parameters():
            if n.endswith('lora_B'):
                p.normal_(std=0.1)
    idx = random_ids(50257)
    with torch.no_grad():
        unmerged = model(idx)[0]
        with model.disable_adapters():
            assert (model(idx)[0] - unmerged).abs().max() > 1e-2  # the adapters matter
    save_project_checkpoint(str(tmp_path / 'run'), model)
    export_ok(str(tmp_path / 'run'), str(tmp_path / 'hf'))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / 'hf'), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, unmerged, atol=1e-4, rtol=0)


def test_padded_vocab_is_cut_to_gpt2(tmp_path):
    """A from-scratch model with nanoGPT's 50304 rows exports GPT-2's 50257 (same logits on them)."""
    from transformers import GPT2LMHeadModel
    make_hf_gpt2(str(tmp_path / 'hf-init'), vocab_size=50304, n_positions=64)
    model = GPT.from_pretrained(str(tmp_path / 'hf-init')).eval()
    save_project_checkpoint(str(tmp_path / 'run'), model)
    export_ok(str(tmp_path / 'run'), str(tmp_path / 'hf'), '--verify=False')
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / 'hf'), dtype=torch.float32).eval()
    assert hf.config.vocab_size == 50257
    idx = random_ids(50257)
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0][..., :50257], atol=1e-4, rtol=0)


def test_char_level_no_bias_model_exports_without_tokenizer(tmp_path):
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False)).eval()
    save_project_checkpoint(str(tmp_path / 'run'), model)
    out = export_ok(str(tmp_path / 'run' / 'ckpt.pt'), str(tmp_path / 'hf'))
    assert 'no tokenizer files' in out
    assert not any(f.startswith(('tokenizer', 'vocab', 'merges')) for f in os.listdir(tmp_path / 'hf'))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / 'hf'), dtype=torch.float32).eval()
    assert hf.config.vocab_size == 65 and hf.config.eos_token_id is None
    idx = random_ids(65)
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=0)


@pytest.fixture(scope='module')
def reward_export(tmp_path_factory):
    """(our reward GPT, checkpoint dir, export dir): a value head with non-zero weight AND bias."""
    d = tmp_path_factory.mktemp('reward')
    make_hf_gpt2(str(d / 'hf-init'), vocab_size=50257, n_positions=64)
    model = GPT.from_pretrained(str(d / 'hf-init'), value_head=True).eval()
    with torch.no_grad():
        model.value_head.weight.normal_()
        model.value_head.bias.fill_(0.7)  # HF's score has no bias: export_hf.py folds it into ln_f
    save_project_checkpoint(str(d / 'run'), model, best_val_acc=0.6, reward_mean=0.25, reward_std=1.5)
    export_ok(str(d / 'run' / 'ckpt.pt'), str(d / 'hf'))  # kind='auto' -> reward
    return model, str(d / 'run'), str(d / 'hf')


def test_reward_score_equals_value_head_at_last_real_token(reward_export):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model, _, path = reward_export
    hf = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    assert type(hf).__name__ == 'GPT2ForSequenceClassification' and hf.config.num_labels == 1
    assert hf.config.reward_mean == 0.25 and hf.config.reward_std == 1.5
    assert hf.config.pad_token_id not in (None, 50256)  # pad must differ from the EOS the score is read at
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.pad_token_id == hf.config.pad_token_id and tok.padding_side == 'right'
    pairs = [("\n\nHuman: hi\n\nAssistant:", " hello there, how are you?"), ("Q: 2+2?", " 4"),
             ("A long prompt with many words in it, to make rows of different lengths", " ok")]
    batch = tok([p + r for p, r in pairs], padding=True, return_tensors='pt')  # the tokenizer appends the EOS
    assert (batch['attention_mask'] == 0).any()  # really right-padded
    lengths = batch['attention_mask'].sum(1)
    assert (batch['input_ids'][torch.arange(3), lengths - 1] == 50256).all()  # each text ends in one EOS
    assert (batch['input_ids'][torch.arange(3), lengths - 2] != 50256).all()
    with torch.no_grad():
        theirs = hf(**batch).logits[:, 0]
    ours = score_texts(model, GPT2Tokenizer(), pairs, block_size=64, batch_size=8, device='cpu')
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert ours.std() > 1e-3  # distinct scores: the test would notice a wrong position
    assert not ours.requires_grad  # a scorer builds no autograd graph, even called with grad enabled
    # as ppo_train.py's reward_model: the text pair (the default) and a one-text template score the same
    # and normalize_reward=True uses the reward_mean/reward_std the export wrote (before: ignored, raw scores)
    for template in ('', '{prompt}{response}'):
        rm = HFRewardModel(path, template=template)
        prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
        torch.testing.assert_close(rm.score(prompts, responses), ours, atol=1e-4, rtol=0)
        torch.testing.assert_close(rm.score(prompts, responses, normalize=True), (ours - 0.25) / 1.5, atol=1e-4, rtol=0)


def test_reward_tokenizer_reads_a_literal_endoftext_as_text(reward_export):
    """score_texts (GPT2Tokenizer.encode) reads a literal '<|endoftext|>' inside a text as ordinary
    tokens, with one EOS at the end; so does the exported reward tokenizer (split_special_tokens=True,
    kept through tokenizer_config.json), so the export scores such a text as the checkpoint does
    (before: the literal became EOS id 50256 mid-text and the reward differed)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model, _, path = reward_export
    assert json.load(open(os.path.join(path, 'tokenizer_config.json')))['split_special_tokens'] is True
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.split_special_tokens
    ours = GPT2Tokenizer()
    pairs = [("\n\nHuman: what did the bot print?\n\nAssistant:", " It printed <|endoftext|> and stopped."),
             ("<|endoftext|>Q: 2+2?<|pad|>", " 4 <|endoftext|>")]
    for p, r in pairs:  # one text and the text pair: ordinary tokens, then the real EOS appended by id
        expected = ours.encode(p + r) + [50256]
        assert expected.count(50256) == 1
        assert tok(p + r)['input_ids'] == expected
        assert tok(p, r)['input_ids'] == ours.encode(p) + ours.encode(r) + [50256]
    hf = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(**tok([p + r for p, r in pairs], padding=True, return_tensors='pt')).logits[:, 0]
    expected = score_texts(model, GPT2Tokenizer(), pairs, block_size=64, batch_size=8, device='cpu')
    torch.testing.assert_close(theirs, expected, atol=1e-4, rtol=0)
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    for template in ('', '{prompt}{response}'):  # as ppo_train.py's reward_model
        torch.testing.assert_close(HFRewardModel(path, template=template).score(prompts, responses), expected,
                                   atol=1e-4, rtol=0)


def test_reward_tokenizer_truncates_the_prompt_not_the_eos(reward_export):
    """A text longer than block_size, tokenized with truncation=True, loses its start (as
    score_texts cuts the prompt from the left), so the score is still read at the final EOS. A text
    pair needs truncation='only_first' for that: truncation=True is 'longest_first' for a pair,
    which cuts the response when it is the longer part."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model, _, path = reward_export
    hf = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    pairs = [("\n\nHuman: " + " ".join(f"word{i}" for i in range(80)) + "\n\nAssistant:", " fine, thanks")]
    batch = tok([p + r for p, r in pairs], truncation=True, return_tensors='pt')
    assert batch['input_ids'].shape[1] == 64 and batch['input_ids'][0, -1] == 50256  # cut to block_size, EOS kept
    with torch.no_grad():
        theirs = hf(**batch).logits[:, 0]
    ours = score_texts(model, GPT2Tokenizer(), pairs, block_size=64, batch_size=8, device='cpu')
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # a pair whose response (40 tokens) is longer than its prompt (33), 73 + EOS > 64 tokens
    prompt = "\n\nHuman: " + " ".join(f"p{i}" for i in range(12)) + "?\n\nAssistant:"
    response = " " + " ".join(f"w{i}" for i in range(20))
    enc = GPT2Tokenizer()
    assert len(enc.encode(prompt)) < len(enc.encode(response)) and len(enc.encode(prompt + response)) + 1 > 64
    ours = score_texts(model, enc, [(prompt, response)], block_size=64, batch_size=8, device='cpu')
    pair = tok(prompt, response, truncation='only_first', return_tensors='pt')
    single = tok(prompt + response, truncation=True, return_tensors='pt')
    assert pair['input_ids'].shape[1] == 64 and pair['input_ids'][0, -1] == 50256
    assert pair['input_ids'][0, -41:-1].tolist() == enc.encode(response)  # the whole response kept
    assert pair['input_ids'].tolist() == single['input_ids'].tolist()  # the same ids as the one text
    longest_first = tok(prompt, response, truncation=True, return_tensors='pt')  # cuts the response instead
    assert longest_first['input_ids'][0, -41:-1].tolist() != enc.encode(response)
    with torch.no_grad():
        for batch in (pair, single):
            torch.testing.assert_close(hf(**batch).logits[:, 0], ours, atol=1e-4, rtol=0)


def test_exported_reward_model_scores_a_too_long_response_as_the_checkpoint(reward_export):
    """A response longer than block_size - 2 tokens: the checkpoint (RewardModel, as ppo_train.py and
    sample.py --score use it) scores the prompt's last token + the response's last block_size - 2 tokens
    + EOS; the export as ppo_train.py's reward_model in pair mode (the default) keeps the same tokens
    (before: HF's 'longest_first', which left about half the response). A one-text template keeps
    the text's last block_size - 1 tokens + EOS (the README says so)."""
    from common import RewardModel
    model, run_dir, path = reward_export
    enc = GPT2Tokenizer()
    prompt = "\n\nHuman: " + " ".join(f"p{i}" for i in range(20)) + "?\n\nAssistant:"
    response = " " + " ".join(f"w{i}" for i in range(40))  # 80 tokens > 62
    ids = enc.encode(response)
    assert len(ids) > 62 and len(enc.encode(prompt)) > 20
    pt = RewardModel(os.path.join(run_dir, 'ckpt.pt')).score([prompt], [response])
    with torch.no_grad():  # the value head at the EOS of exactly those 64 tokens
        kept = torch.tensor([enc.encode(prompt)[-1:] + ids[-62:] + [50256]])
        expected = model.value(model.trunk(kept))[0, -1]
    torch.testing.assert_close(pt, expected.view(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(HFRewardModel(path).score([prompt], [response]), pt, atol=1e-4, rtol=0)
    with torch.no_grad():
        text_end = model.value(model.trunk(torch.tensor([enc.encode(prompt + response)[-63:] + [50256]])))[0, -1]
    torch.testing.assert_close(HFRewardModel(path, template='{prompt}{response}').score([prompt], [response]),
                               text_end.view(1), atol=1e-4, rtol=0)


def test_value_head_checkpoint_without_reward_stats_exports_as_policy(reward_export, tmp_path):
    """kind='auto': a value head alone (PPO's shared critic) is a policy; --kind=reward forces it."""
    model, _, _ = reward_export
    save_project_checkpoint(str(tmp_path / 'ppo'), model, iter_num=3, kl_coef=0.05)
    out = export_ok(str(tmp_path / 'ppo'), str(tmp_path / 'hf'), '--verify=False')
    assert 'value head is dropped' in out
    config = json.load(open(tmp_path / 'hf' / 'config.json'))
    assert config['architectures'] == ['GPT2LMHeadModel']


def test_one_line_errors(tmp_path):
    (tmp_path / 'notes.pt').write_text('not a checkpoint')
    torch.save({'weights': 1}, tmp_path / 'foreign.pt')
    policy = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=1, n_embd=8))
    save_project_checkpoint(str(tmp_path / 'policy'), policy)
    cases = [(['--ckpt=' + str(tmp_path / 'missing')], 'not found'),
             (['--ckpt=' + str(tmp_path / 'notes.pt')], 'could not be read'),
             (['--ckpt=' + str(tmp_path / 'foreign.pt')], 'not a checkpoint of this project'),
             (['--ckpt=' + str(tmp_path / 'policy'), '--kind=reward'], 'no value head'),
             (['--ckpt=' + str(tmp_path / 'policy'), '--kind=critic'], "kind must be")]
    for args, message in cases:
        r = export(*args, '--export_dir=' + str(tmp_path / 'out'))
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith('error: ') and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(tmp_path / 'out')


def siblings(path):
    """What an export left beside export_dir: its .tmp-<pid> / .old-<pid> directories, if any."""
    base = os.path.basename(path)
    return [f for f in os.listdir(os.path.dirname(path)) if f.startswith(base + '.')]


def test_export_over_an_earlier_export_replaces_it_whole(policy_export, tmp_path):
    """A char-level export into the directory of a GPT-2 one: GPT-2's tokenizer files go with the old
    export (before: they stayed, and AutoTokenizer loaded GPT-2's BPE for a 65-token model)."""
    import shutil
    from transformers import GPT2LMHeadModel
    ex = str(tmp_path / 'ex')
    shutil.copytree(policy_export[1], ex)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    save_project_checkpoint(str(tmp_path / 'char'), model)
    export_ok(str(tmp_path / 'char'), ex)
    assert not any(f.startswith(('tokenizer', 'vocab', 'merges')) for f in os.listdir(ex)), os.listdir(ex)
    assert GPT2LMHeadModel.from_pretrained(ex).config.vocab_size == 65
    assert siblings(ex) == []


def test_a_failed_export_leaves_the_previous_export_untouched(policy_export, tmp_path):
    """A checkpoint whose verify fails (NaN weights: before, NaN > 1e-3 was False and it 'passed') is
    refused in one line, and the earlier export in export_dir stays byte-identical."""
    import shutil
    ex = str(tmp_path / 'ex')
    shutil.copytree(policy_export[1], ex)
    before = {f: open(os.path.join(ex, f), 'rb').read() for f in os.listdir(ex)}
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.fill_(float('nan'))  # a diverged run
    os.makedirs(tmp_path / 'nan')  # torch.save: save_checkpoint itself refuses NaN weights
    torch.save({'model': model.state_dict(), 'model_args': asdict(model.config)}, tmp_path / 'nan' / 'ckpt.pt')
    r = export(f'--ckpt={tmp_path / "nan"}', f'--export_dir={ex}')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]  # (transformers' progress bars before it)
    assert r.stderr.strip().splitlines()[-1].startswith('error: ') and 'non-finite' in r.stderr, r.stderr[-3000:]
    assert {f: open(os.path.join(ex, f), 'rb').read() for f in os.listdir(ex)} == before
    assert siblings(ex) == []


@pytest.mark.parametrize('weight, dtype', [(float('nan'), 'float32'), (1e6, 'float16')])
def test_verify_false_still_refuses_nonfinite_weights(tmp_path, weight, dtype):
    """--verify=False exported a NaN model (before: exit 0, model.safetensors written; the only
    finiteness check was verify's). NaN weights, or finite ones that overflow float16, are a one-line
    error before anything is written."""
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = weight
    os.makedirs(tmp_path / 'run')  # torch.save: save_checkpoint itself refuses NaN weights
    torch.save({'model': model.state_dict(), 'model_args': asdict(model.config)}, tmp_path / 'run' / 'ckpt.pt')
    r = export(f'--ckpt={tmp_path / "run"}', f'--export_dir={tmp_path / "hf"}', f'--dtype={dtype}', '--verify=False')
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'non-finite' in last and 'mlp.c_fc.weight' in last, r.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ['run']  # no export_dir, no leftover .tmp-<pid>


def test_export_dir_that_is_a_file_or_holds_other_files_is_refused(tmp_path):
    """Nothing written, nothing deleted: a file (before: a NotADirectoryError traceback after
    'saved ... to afile'), a directory of other files (before: exported into, mixed with them; now
    the export would replace the directory, so it is refused), a run directory with its ckpt.pt."""
    policy = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=1, n_embd=8))
    save_project_checkpoint(str(tmp_path / 'policy'), policy)
    (tmp_path / 'afile').write_text('x')
    os.makedirs(tmp_path / 'notes')
    (tmp_path / 'notes' / 'todo.txt').write_text('mine')
    (tmp_path / 'notes' / 'config.json').write_text('{}')  # not enough with a checkpoint beside it:
    (tmp_path / 'notes' / 'ckpt.pt').write_text('a run')
    os.makedirs(tmp_path / 'other')
    (tmp_path / 'other' / 'todo.txt').write_text('mine')
    for target, message in (('afile', 'is a file'), ('notes', 'not a Hugging Face export'),
                            ('other', 'not a Hugging Face export'), ('policy', 'not a Hugging Face export')):
        before = sorted(os.listdir(tmp_path))
        r = export('--ckpt=' + str(tmp_path / 'policy'), '--export_dir=' + str(tmp_path / target))
        assert r.returncode == 1, (target, r.stdout[-2000:], r.stderr[-2000:])
        assert r.stderr.startswith('error: ') and message in r.stderr and target in r.stderr, (target, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / 'afile').read_text() == 'x' and (tmp_path / 'other' / 'todo.txt').read_text() == 'mine'
    assert sorted(os.listdir(tmp_path / 'notes')) == ['ckpt.pt', 'config.json', 'todo.txt']
    assert sorted(os.listdir(tmp_path / 'policy')) == ['ckpt.pt']
