"""PPO / GRPO / RLOO: the rollout's log-probs, value positions, and ppo_train.py end to end on a
task with a known reward; with LoRA, a LoRA SFT init_from stays the reference and no dropout keeps
each rollout's first ratio at 1."""
import csv
import json
import os
import sys
from dataclasses import asdict

import pytest
import torch

from common import response_forward, response_values
from conftest import ROOT, load_definitions, make_hf_gpt2, run_python
from model import GPT

EOS = 50256


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp('ppo')
    make_hf_gpt2(str(d / 'hf'), vocab_size=50257, n_positions=64, n_embd=32)
    return d


def rollout(model, temperature, seed=0):
    prompts = [[464, 2068, 286], [40, 588], [1212, 318, 257, 1332]]
    T = max(map(len, prompts))
    ids = torch.tensor([[EOS] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    out, sample_logp = model.generate(ids, 6, temperature=temperature, attention_mask=mask, eos_token_id=EOS,
                                      generator=torch.Generator().manual_seed(seed), return_logprobs=True)
    n = out.size(1) - T
    attention_mask = torch.cat([mask, torch.ones(len(prompts), n, dtype=torch.long)], dim=1)
    return out, attention_mask, T, sample_logp


def test_training_logprobs_equal_sampling_logprobs(tiny):
    model = GPT.from_pretrained(str(tiny / 'hf'), value_head=True).eval()
    for temperature in (1.0, 0.7):
        ids, attention_mask, n_prompt, sample_logp = rollout(model, temperature)
        logp, entropy, values = response_forward(model, ids, attention_mask, n_prompt, temperature, True, True)
        torch.testing.assert_close(logp, sample_logp, atol=1e-5, rtol=0)  # so the first PPO ratio is 1
        assert torch.exp(logp - sample_logp).sub(1).abs().max() < 1e-4
        # at another temperature they differ: a mismatch cannot hide
        wrong, no_entropy, no_values = response_forward(model, ids, attention_mask, n_prompt, temperature * 1.5, False)
        assert (wrong - sample_logp).abs().max() > 1e-2
        assert no_entropy is None and no_values is None  # the PPO update asks for neither
        assert entropy.shape == logp.shape == values.shape
        # the entropy is the sampling distribution's, softmax(logits / temperature), at each response position
        with torch.no_grad():
            logits = model(ids, attention_mask=attention_mask)[0][:, n_prompt - 1:-1].float() / temperature
        probs = logits.softmax(-1)
        torch.testing.assert_close(entropy, -(probs * logits.log_softmax(-1)).sum(-1), atol=1e-4, rtol=0)


def test_logprobs_come_from_float32_logits_under_bf16_autocast(tiny):
    """Under bf16 autocast (CUDA's, here the CPU's) the logits are computed in float32, in the training pass and in
    generate: rounded to bf16 (spacing 0.25 at |logit| 32-64; GPT-2's logits are tens in magnitude), the two
    passes' log-probs differed by 0.36 here, far past ppo_train.py's 5e-2 start-up tolerance for bf16, and
    every PPO ratio carried that noise."""
    model = GPT.from_pretrained(str(tiny / 'hf')).eval()
    with torch.no_grad():  # GPT-2-like logits: a large offset shared by every token
        model.transformer.wte.weight.mul_(4)[:, 0] -= 16.0
        model.transformer.ln_f.bias[0] = 10.0
    prompts = torch.randint(0, 50000, (16, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        ids, sample_logp = model.generate(prompts, 16, temperature=0.7, generator=torch.Generator().manual_seed(0),
                                          return_logprobs=True)
        attention_mask = torch.ones_like(ids)
        logp, _, _ = response_forward(model, ids, attention_mask, 8, 0.7, False)
        h = model.trunk(ids, attention_mask)[:, 7:-1]
    assert model(ids[:1])[0].float().mean() < -30  # the logits are GPT-2-like
    expected = torch.log_softmax(model.lm_head(h.float()) / 0.7, dim=-1).gather(-1, ids[:, 8:, None])[..., 0]
    torch.testing.assert_close(logp, expected, atol=1e-4, rtol=0)  # the same hidden states, float32 logits
    assert (logp - sample_logp).abs().max() < 5e-2  # what ppo_train.py checks on its first rollout

def test_values_are_read_where_each_response_token_is_predicted(tiny):
    model = GPT.from_pretrained(str(tiny / 'hf'), value_head=True).eval()
    torch.nn.init.normal_(model.value_head.weight)
    ids, attention_mask, n_prompt, _ = rollout(model, 1.0)
    _, _, values = response_forward(model, ids, attention_mask, n_prompt, 1.0, True)
    for i in range(ids.size(0)):  # row alone, unpadded: the value before response token j is at n_real + j - 1
        real = ids[i][attention_mask[i].bool()]
        n_real_prompt = int(attention_mask[i, :n_prompt].sum())
        v = model.value(model.trunk(real[None]))[0]
        torch.testing.assert_close(values[i], v[n_real_prompt - 1:-1], atol=1e-5, rtol=0)
    # a separate critic's values (common.response_values): the same, without the vocabulary projection
    torch.testing.assert_close(response_values(model, ids, attention_mask, n_prompt), values, atol=0, rtol=0)


REWARD_MODULE = '''
import tiktoken
enc = tiktoken.get_encoding('gpt2')

def space_fraction(prompts, responses):
    """Fraction of the response's GPT-2 tokens that start with a space: 1.0 at best."""
    out = []
    for r in responses:
        ids = enc.encode_ordinary(r)
        out.append(sum(enc.decode([i]).startswith(' ') for i in ids) / max(1, len(ids)))
    return out

def wrong_length(prompts, responses):
    return [0.0]
'''


def run_ppo(tiny, tmp_path, args, fresh=False):
    (tmp_path / 'rewards.py').write_text(REWARD_MODULE)
    (tmp_path / 'prompts.jsonl').write_text('\n'.join(json.dumps({'prompt': f'Once upon a time {i}'}) for i in range(64)))
    base = ([f'--init_from={tiny / "hf"}'] if tiny else []) + ['--prompt_data=prompts.jsonl', '--reward_fn=rewards:space_fraction',
            '--device=cpu', '--block_size=64', '--max_new_tokens=8', '--temperature=1.0', '--missing_eos_penalty=0.0',
            '--kl_coef=0.01', '--sample_interval=0', '--out_dir=out']
    return run_python([sys.executable, os.path.join(ROOT, 'ppo_train.py'), *base, *args], cwd=tmp_path,
                      capture_output=True, text=True, timeout=1800, fresh=fresh)



def ppo_fails(tiny, tmp_path, args, *messages):
    """ppo_train.py with args stops with an error whose text holds every one of messages."""
    p = run_ppo(tiny, tmp_path, args)
    assert p.returncode != 0 and all(m in p.stderr for m in messages), (args, p.stderr[-1500:])


def run_ppo_in_process(tmp_path, monkeypatch, init_from, *args):
    """ppo_train.py in this process (runpy), so a test's monkeypatches reach it: 8 prompts, the
    space_fraction reward, tmp_path as the working directory and out_dir=out; args override."""
    import runpy
    (tmp_path / 'rewards.py').write_text(REWARD_MODULE)
    (tmp_path / 'prompts.jsonl').write_text('\n'.join(json.dumps({'prompt': f'Once upon a time {i}'}) for i in range(8)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, 'argv', ['ppo_train.py', f'--init_from={init_from}', '--prompt_data=prompts.jsonl',
                                      '--reward_fn=rewards:space_fraction', '--device=cpu', '--block_size=64',
                                      '--out_dir=out', *args])
    runpy.run_path(os.path.join(ROOT, 'ppo_train.py'), run_name='__main__')

@pytest.mark.parametrize('algo', [['--advantage_estimator=gae'],
                                  ['--advantage_estimator=grpo', '--batch_size=2', '--group_size=4', '--kl_in_loss=True'],
                                  ['--advantage_estimator=rloo', '--batch_size=2', '--group_size=4']],
                         ids=['ppo', 'grpo', 'rloo'])
def test_ppo_runs_with_invariants_and_logs(tiny, tmp_path, algo):
    """A short PPO run: the start-up invariants hold (sampling = training log-probs, KL 0 to the
    untouched reference), every metric is finite, and a checkpoint is written. (Learning itself is
    not shown here: a random tiny GPT-2's next-token distribution is nearly uniform over 50k tokens.)"""
    p = run_ppo(tiny, tmp_path, ['--batch_size=8', '--mini_batch_size=4', '--learning_rate=1e-3', '--max_iters=3',
                                 '--eval_interval=3'] + algo)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))
    assert len(rows) == 3 and float(rows[0]['objective/kl']) == 0.0
    assert float(rows[-1]['objective/kl']) != 0.0  # the policy moved away from the reference
    for r in rows:
        assert all(v == '' or abs(float(v)) < 1e6 for k, v in r.items())
    assert os.path.isfile(tmp_path / 'out' / 'ckpt.pt')
    # a broken setup for the task: 8 new tokens, and a random model never emits EOS -> the health alarm
    assert '[missing_eos] only 0%, 0%, 0% of the responses end with EOS' in p.stdout
    assert rows[2]['alarm/missing_eos'] == '1.0' and rows[1]['alarm/missing_eos'] == ''  # after 3 iterations
    assert 'missing_eos (warn): turned on 1x' in p.stdout  # the end-of-run summary


def test_prompt_of_each_record_shape_excludes_the_response():
    """PPO's prompt of a record is what the policy must answer: the prompt of {"prompt", "response"}, of an
    hh-rlhf dialogue the text up to its last "\n\nAssistant:", and of {"messages"} the dialogue before the
    assistant's answer. A messages record that ends with the assistant's answer (the SFT shape, which
    train.py requires) got an empty assistant turn appended AFTER that answer, so the prompt held the
    reference answer and the policy was asked for a second one."""
    prompt_text = load_definitions(os.path.join(ROOT, 'ppo_train.py'), 'prompt_text').prompt_text
    expected = '\n\nHuman: Hi\n\nAssistant:'
    hi = {'role': 'user', 'content': 'Hi'}
    assert prompt_text({'prompt': expected, 'response': ' Hello'}, 'r') == expected
    assert prompt_text({'chosen': expected + ' Hello', 'rejected': expected + ' Go away'}, 'r') == expected
    assert prompt_text({'messages': [hi]}, 'r') == expected
    assert prompt_text({'messages': [hi, {'role': 'assistant', 'content': 'Hello'}]}, 'r') == expected


def test_a_messages_record_with_no_dialogue_before_the_answer_is_one_line(tmp_path):
    """{"messages": []} (or only the assistant's answer, or only a system message) was accepted as the
    prompt "\n\nAssistant:" (after the system text), and {"messages": null} was a TypeError traceback;
    each is now a one-line error naming the file and record, before any model is loaded."""
    from common import UserError
    prompt_text = load_definitions(os.path.join(ROOT, 'ppo_train.py'), 'prompt_text').prompt_text
    system = {'role': 'system', 'content': 'Be kind.'}
    for messages in ([], [{'role': 'assistant', 'content': 'Hello'}], None, [system],
                     [system, {'role': 'assistant', 'content': 'Hello'}]):
        with pytest.raises(UserError, match="p.jsonl: record 3: 'messages' needs a list with at least one user message"):
            prompt_text({'messages': messages}, 'p.jsonl: record 3')
    assert prompt_text({'messages': [system, {'role': 'user', 'content': 'Hi'}]}, 'r').endswith('Assistant:')
    (tmp_path / 'empty_chat.jsonl').write_text(json.dumps({'prompt': 'Hi'}) + '\n' + json.dumps({'messages': []}))
    p = run_ppo(None, tmp_path, ['--prompt_data=empty_chat.jsonl', '--max_iters=1'])
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1] == (
        "error: empty_chat.jsonl: record 1: 'messages' needs a list with at least one user message before the "
        "assistant's answer (the prompt), got []"), p.stderr[-1500:]
    assert 'Traceback' not in p.stderr


def test_invariant_stops_training_at_another_temperature(tiny, tmp_path, monkeypatch):
    """The start-up invariant: when the training pass computes log-probs at a different
    temperature than sampling (here: response_forward patched to use 1.5x the temperature), the run
    stops on its first rollout with the message of what it means, before any update."""
    import runpy
    import common
    from common import UserError
    (tmp_path / 'rewards.py').write_text(REWARD_MODULE)
    (tmp_path / 'prompts.jsonl').write_text('\n'.join(json.dumps({'prompt': f'Once upon a time {i}'}) for i in range(8)))
    argv = ['ppo_train.py', f'--init_from={tiny / "hf"}', '--prompt_data=prompts.jsonl', '--reward_fn=rewards:space_fraction',
            '--device=cpu', '--block_size=64', '--max_new_tokens=4', '--batch_size=4', '--mini_batch_size=4',
            '--max_iters=1', '--out_dir=out', '--temperature=0.7']
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, 'argv', argv)
    right = common.response_forward
    monkeypatch.setattr(common, 'response_forward', lambda m, ids, am, n, t, *a: right(m, ids, am, n, 1.5 * t, *a))
    with pytest.raises(UserError, match='training log-probs differ from sampling log-probs'):
        runpy.run_path(os.path.join(ROOT, 'ppo_train.py'), run_name='__main__')
    assert not (tmp_path / 'out' / 'ckpt.pt').exists()
    monkeypatch.setattr(common, 'response_forward', right)  # the same run, correct: no stop
    runpy.run_path(os.path.join(ROOT, 'ppo_train.py'), run_name='__main__')
    assert (tmp_path / 'out' / 'ckpt.pt').exists()


@pytest.fixture(scope='module')
def peaked(tmp_path_factory):
    """A tiny GPT-2 whose token embeddings are scaled up (x6), so its next-token distribution is
    far from uniform (a fresh tiny model is nearly uniform over 50k tokens)."""
    d = tmp_path_factory.mktemp('peaked') / 'hf'
    hf = make_hf_gpt2(str(d), vocab_size=50257, n_positions=64, n_embd=32)
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(6.0)
    hf.save_pretrained(str(d))
    return d


TARGET_REWARD = '''
import tiktoken
enc = tiktoken.get_encoding('gpt2')

def low_id_fraction(prompts, responses):
    """Fraction of the response's GPT-2 tokens with an id below 2000 (the BPE's earliest merges,
    ~4 % of the vocabulary): 1.0 at best."""
    return [sum(i < 2000 for i in enc.encode_ordinary(r)) / max(1, len(enc.encode_ordinary(r))) for r in responses]
'''


@pytest.mark.parametrize('algo', [['--advantage_estimator=gae', '--batch_size=16'],
                                  ['--advantage_estimator=grpo', '--batch_size=4', '--group_size=4', '--kl_in_loss=True'],
                                  ['--advantage_estimator=rloo', '--batch_size=4', '--group_size=4']],
                         ids=['ppo', 'grpo', 'rloo'])
def test_ppo_grpo_rloo_learn_a_known_reward(peaked, tmp_path, algo):
    """Reward = the fraction of response tokens from a fixed 4 % of the vocabulary (ids < 2000),
    which the initial policy samples ~10 % of the time. Each method must raise the mean score to
    >= 0.8 of the maximum (1.0) within 30 iterations. (An earlier version rewarded one target token,
    the mode of a few hundred samples: at ~0.5 % it was sampling noise, and passing depended on the
    sampling seed.)"""
    (tmp_path / 'target_reward.py').write_text(TARGET_REWARD)
    p = run_ppo(tiny=None, tmp_path=tmp_path, args=[f'--init_from={peaked}', '--reward_fn=target_reward:low_id_fraction',
                                                    '--mini_batch_size=8', '--learning_rate=3e-3', '--max_iters=30',
                                                    '--eval_interval=30'] + algo)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))
    scores = [float(r['objective/scores']) for r in rows]
    kls = [float(r['objective/kl']) for r in rows]
    assert scores[0] < 0.3, scores
    assert sum(scores[-5:]) / 5 >= 0.8, scores
    assert all(0 <= k < 100 for k in kls[1:]) and kls[0] == 0.0  # finite, and k1 per sequence stays sane


def test_ppo_bad_inputs_fail_before_work(tiny, tmp_path):
    ppo_fails(tiny, tmp_path, ['--reward_fn=rewards:nope', '--max_iters=1'],
              "error: reward_fn='rewards:nope' cannot be imported")
    ppo_fails(tiny, tmp_path, ['--reward_fn=rewards:wrong_length', '--max_iters=1'],
              'error: reward function returned 1 scores for 16 responses')
    ppo_fails(tiny, tmp_path, ['--reward_fn=', '--reward_model=missing/best.pt', '--max_iters=1'],
              'error: reward_model missing/best.pt not found')
    ppo_fails(tiny, tmp_path, ['--max_new_tokens=64', '--max_iters=1'], 'leaves no room for a prompt')
    ppo_fails(tiny, tmp_path, ['--temperature=0', '--max_iters=1'],
              'error: temperature=0.0: PPO samples (temperature > 0)')
    ppo_fails(tiny, tmp_path, ['--top_p=0', '--max_iters=1'], 'error: top_k=0, top_p=0.0: top_k must be >= 0')
    ppo_fails(tiny, tmp_path, ['--kl_estimator=k4', '--max_iters=1'],
              "error: kl_estimator='k4': only 'k1' (log pi - log pi_ref) belongs in the reward")
    ppo_fails(tiny, tmp_path, ['--out_dir=prompts.jsonl', '--max_iters=1'],  # a FileExistsError traceback
              'error: out_dir prompts.jsonl is a file, not a directory')
    ppo_fails(tiny, tmp_path, ['--out_dir=gone', '--init_from=resume', '--max_iters=1'],  # it made an empty gone/
              "error: init_from='resume' but out_dir gone does not exist: nothing to resume")
    assert not os.path.exists(tmp_path / 'gone')


def test_the_kl_penalty_in_the_reward_is_k1_and_grpo_keeps_it_out_of_the_std_normalisation(tiny, tmp_path):
    """A penalty in the reward moves the policy by E[grad log pi * penalty]: for k1 = log pi - log pi_ref
    that is grad KL(pi || ref); for k3 it is grad KL(pi || ref) - grad KL(ref || pi), which vanishes near
    the reference (k2's too), so a k3 'penalty' barely holds the policy back and it drifts (the option
    existed, as in TRL). k2/k3 in the reward are refused; k3 stays where it is right, in GRPO/RLOO's loss.
    GRPO divides each group's rewards by their std, so a KL penalty in the reward was divided too: a
    group of tied scores turned KL noise into full-size advantages. GRPO needs kl_in_loss=True (or
    kl_coef=0); RLOO (no std) keeps the paper's KL in the reward."""
    for k in ('k2', 'k3'):
        for algo in ([], ['--advantage_estimator=rloo', '--batch_size=2']):
            ppo_fails(tiny, tmp_path, [f'--kl_estimator={k}', *algo, '--max_iters=1'],
                      f"error: kl_estimator='{k}': only 'k1' (log pi - log pi_ref) belongs in the reward",
                      "k3 is right in the loss: kl_in_loss=True")
    ppo_fails(tiny, tmp_path, ['--advantage_estimator=grpo', '--batch_size=2', '--max_iters=1'],
              "error: advantage_estimator='grpo' divides each group's rewards by their std", 'set kl_in_loss=True')
    for algo in (['--advantage_estimator=grpo', '--kl_coef=0'], ['--advantage_estimator=rloo']):  # both run
        p = run_ppo(tiny, tmp_path, algo + ['--batch_size=2', '--mini_batch_size=4', '--max_iters=1',
                                            '--eval_interval=100'])
        assert p.returncode == 0, p.stderr[-2000:]


def test_ppo_prompts_per_epoch_not_a_multiple_of_batch_size(tiny, tmp_path):
    """10 prompts, batch_size 8: each epoch's short last batch is left out (a rollout of 2 prompts
    crashed GAE with 'shape mismatch' and GRPO with 'index out of bounds'); fewer prompts than
    batch_size is one error line. adaptive_kl's row shows the kl_coef its rewards used."""
    (tmp_path / 'few.jsonl').write_text('\n'.join([json.dumps({'prompt': f'Once upon a time {i}'}) for i in range(10)]
                                                  + [json.dumps({'prompt': ''})] * 2))  # empty: skipped, counted
    for algo in (['--advantage_estimator=gae', '--batch_size=8'],
                 ['--advantage_estimator=grpo', '--batch_size=8', '--kl_in_loss=True']):
        p = run_ppo(tiny, tmp_path, algo + ['--prompt_data=few.jsonl', '--mini_batch_size=8', '--max_iters=3',
                                            '--eval_interval=100', '--adaptive_kl=True', '--target_kl=0.001'])
        assert p.returncode == 0, p.stderr[-2000:]
        assert 'prompts: 10 (0 longer than block_size - max_new_tokens = ' in p.stdout and ', 2 empty skipped)' in p.stdout
        rows = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))
        assert len(rows) == 3
        assert float(rows[0]['objective/kl_coef']) == 0.01  # the starting kl_coef, not the one updated after it
        assert float(rows[1]['objective/kl_coef']) != 0.01
    ppo_fails(tiny, tmp_path, ['--prompt_data=few.jsonl', '--batch_size=16', '--max_iters=1'],
              'error: few.jsonl: 10 usable prompts, fewer than batch_size=16')


def test_separate_critic_starts_on_the_normalised_score_scale(tiny, tmp_path):
    """critic='separate' starts from the reward model, whose head gives raw scores r; with
    normalize_reward the values must predict (r - mean) / std, so its head is rescaled at the start
    (before, every initial value was off by about the mean, and value clipping slowed the fix)."""
    from dataclasses import asdict
    from common import save_checkpoint
    from model import GPTConfig
    torch.manual_seed(0)
    rm = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=50257, block_size=64, value_head=True))
    with torch.no_grad():
        rm.value_head.weight.normal_(0, 1.0)
        rm.value_head.bias.fill_(5.0)
    save_checkpoint(str(tmp_path / 'rm.pt'), {'model': rm.state_dict(), 'model_args': asdict(rm.config),
                                              'reward_mean': 5.0, 'reward_std': 2.0}, rm)
    common = ['--reward_fn=', '--reward_model=rm.pt', '--critic=separate', '--batch_size=4', '--mini_batch_size=4',
              '--learning_rate=0.0', '--max_iters=1', '--eval_interval=1']
    # a reward model whose block_size cannot hold a response (8 tokens + EOS + a prompt token): at start
    small = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=50257, block_size=9, value_head=True))
    save_checkpoint(str(tmp_path / 'small.pt'), {'model': small.state_dict(), 'model_args': asdict(small.config)}, small)
    ppo_fails(tiny, tmp_path, common + ['--reward_model=small.pt', '--critic=shared'],
              "do not fit the reward model's block_size=9")
    # a critic from a reward model of a shorter context than block_size would crash on the first long
    # rollout; a block_size past the policy's own context, too: both are refused at start
    short = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=50257, block_size=32, value_head=True))
    save_checkpoint(str(tmp_path / 'short.pt'), {'model': short.state_dict(), 'model_args': asdict(short.config)}, short)
    ppo_fails(tiny, tmp_path, common + ['--reward_model=short.pt'], "whose context 32 is shorter than block_size=64")
    ppo_fails(tiny, tmp_path, common + ['--block_size=128'], "block_size=128 is larger than", "context 64")
    ppo_fails(tiny, tmp_path, common + ['--kl_in_loss=True'], "kl_in_loss=True is GRPO/RLOO's KL term")
    for normalize, scale, shift in [(True, 2.0, 5.0), (False, 1.0, 0.0)]:
        p = run_ppo(tiny, tmp_path, common + [f'--normalize_reward={normalize}'])
        assert p.returncode == 0, p.stderr[-2000:]
        head = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=False)['critic']  # learning_rate 0: as started
        torch.testing.assert_close(head['value_head.weight'], rm.value_head.weight / scale)
        torch.testing.assert_close(head['value_head.bias'], (rm.value_head.bias - shift) / scale)


TIMING = ('time_ms', 'tokens_per_s', 'mem/peak_gib', 'time/rollout', 'time/score', 'time/train')


def test_resume_refuses_another_scripts_checkpoint_and_another_algorithm(tiny, tmp_path):
    """init_from='resume' on another script's out_dir (a DPO run's, which also carries ref_source) was
    a KeyError traceback, as was a resume with another critic; another advantage_estimator silently
    changed the algorithm mid-run. Each is one line now; an older checkpoint is told by its keys."""
    args = ['--batch_size=8', '--mini_batch_size=4', '--max_iters=1', '--eval_interval=100']
    p = run_ppo(tiny, tmp_path, args)
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=False)
    assert ckpt['script'] == 'ppo_train.py'
    for key, value in (('critic', 'separate'), ('advantage_estimator', 'rloo')):
        ppo_fails(None, tmp_path, args + ['--init_from=resume', '--max_iters=2', f'--{key}={value}'],
                  f"error: this run used {key}={ckpt['config'][key]!r}, not {value!r}: a resume continues it as begun")
    os.makedirs(tmp_path / 'dpo')  # a DPO checkpoint from before checkpoints named their script
    dpo = {k: v for k, v in ckpt.items() if k not in ('script', 'kl_coef')}
    torch.save({**dpo, 'ref_is_base': False, 'best_val_loss': 0.7}, tmp_path / 'dpo' / 'ckpt.pt')
    ppo_fails(None, tmp_path, args + ['--init_from=resume', '--out_dir=dpo'],
              "error: dpo/ckpt.pt is a dpo_train.py checkpoint, not ppo_train.py's: init_from='resume' continues a "
              "ppo_train.py run; to start one from its weights use --init_from=dpo and another out_dir")
    from common import UserError, check_resumable
    for checkpoint, writer in (({'iter_num': 3, 'best_val_loss': 1.2}, 'a train.py checkpoint'),  # nanoGPT's too
                               ({'best_val': (0.7, -0.5), 'best_val_acc': 0.7}, 'a reward_train.py checkpoint'),
                               ({'model': {}, 'model_args': {}}, "not a training run's checkpoint")):
        with pytest.raises(UserError, match=f"^x/ckpt.pt is {writer}"):
            check_resumable(checkpoint, 'dpo_train.py', 'x/ckpt.pt')
    check_resumable({'script': 'dpo_train.py', 'kl_coef': 1}, 'dpo_train.py', 'x/ckpt.pt')  # its own name decides


def test_resume_continues_the_identical_run(tiny, tmp_path):
    """4 iterations straight == 2, then init_from=resume to 4: the same log.csv metrics, samples.csv
    and final weights and optimizer state. Regression: the sampling generator was seeded once from
    seed + iter_num at start-up (so a resumed run sampled other responses than the straight one),
    and the resumed reference was a copy of the resumed policy instead of the initial one."""
    args = ['--batch_size=8', '--mini_batch_size=4', '--learning_rate=1e-3', '--eval_interval=100',
            '--adaptive_kl=True', '--target_kl=0.1', '--sample_interval=1']
    p = run_ppo(tiny, tmp_path, args + ['--max_iters=4', '--out_dir=straight'])
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_ppo(tiny, tmp_path, args + ['--max_iters=2', '--out_dir=resumed'])
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_ppo(None, tmp_path, args + ['--init_from=resume', '--max_iters=4', '--out_dir=resumed'], fresh=True)  # new hash seed
    assert p.returncode == 0, p.stderr[-3000:]

    def rows(run, name):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(open(tmp_path / run / name))]
    straight, resumed = rows('straight', 'log.csv'), rows('resumed', 'log.csv')
    assert len(straight) == 4 and straight == resumed
    assert len(set(r['objective/kl_coef'] for r in straight)) > 1  # the controller moved: kl_coef is state
    assert rows('straight', 'samples.csv') == rows('resumed', 'samples.csv')
    a = torch.load(tmp_path / 'straight' / 'ckpt.pt', weights_only=False)
    b = torch.load(tmp_path / 'resumed' / 'ckpt.pt', weights_only=False)
    assert a['model'].keys() == b['model'].keys()
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a['kl_coef'] == b['kl_coef'] and a['prompt_loader'] == b['prompt_loader']


WORDS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '</s>'] + 'once upon a time the cat sat on mat yes no good bad'.split() \
    + [str(i) for i in range(10)]


def make_hf_classifier(path, arch='bert', num_labels=1, max_length=32, words=WORDS):
    """A tiny random sequence classifier saved with its own word-level tokenizer (not GPT-2's BPE)
    over `words` (ids in order): 'bert' (pair template [CLS] A [SEP] B [SEP], a pad token) or 'gpt2'
    (no pad token, only EOS '</s>')."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification,
                              PreTrainedTokenizerFast)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    if arch == 'bert':
        tok.post_processor = processors.TemplateProcessing(single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1',
                                                           special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
        specials = dict(unk_token='[UNK]', pad_token='[PAD]', cls_token='[CLS]', sep_token='[SEP]')
        model = BertForSequenceClassification(BertConfig(
            vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=max_length, num_labels=num_labels))
    else:
        specials = dict(unk_token='[UNK]', eos_token='</s>')
        eos = words.index('</s>')
        model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(words), n_embd=16, n_layer=2, n_head=2,
                                                         n_positions=max_length, num_labels=num_labels, bos_token_id=eos, eos_token_id=eos))
    PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **specials).save_pretrained(path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))  # away from the init, so different texts score differently
    model.save_pretrained(path)


@pytest.fixture(scope='module')
def hf_rm(tmp_path_factory):
    d = tmp_path_factory.mktemp('hf_rm')
    make_hf_classifier(str(d / 'bert'))
    make_hf_classifier(str(d / 'gpt2'), arch='gpt2')
    make_hf_classifier(str(d / 'two'), num_labels=2)
    return d


def test_hf_reward_model_scores_as_the_model_does_alone(hf_rm):
    """HFRewardModel (batched, right-padded, re-tokenised with the reward model's own tokenizer) gives
    each text the score of the model and tokenizer run on that text alone; a too-long prompt loses its
    start; a GPT-2-style tokenizer without a pad token is padded with EOS."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from common import HFRewardModel
    prompts = ['once upon a time', 'the cat sat on the mat 3', 'a', 'good 1 2 3 bad bad']
    responses = [' yes good', ' no', ' the cat', ' bad 7']
    for arch, template in [('bert', ''), ('bert', '{prompt} | {response}'), ('gpt2', '{prompt}{response}')]:
        rm = HFRewardModel(str(hf_rm / arch), batch_size=3, template=template)
        tok, model = AutoTokenizer.from_pretrained(hf_rm / arch), AutoModelForSequenceClassification.from_pretrained(hf_rm / arch)
        def alone(p, r):
            x = tok(template.format(prompt=p, response=r)) if template else tok(p, r)
            return model(**{k: torch.tensor([v]) for k, v in x.items()}).logits[0, 0].item()
        expected = torch.tensor([alone(p, r) for p, r in zip(prompts, responses)])
        got = rm.score(prompts, responses)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        assert got.std() > 1e-3  # the texts really score differently
        assert torch.equal(rm.score(prompts, responses, normalize=True), got)  # no stats: no-op
        rm16 = HFRewardModel(str(hf_rm / arch), batch_size=4, template=template, weights_dtype='bfloat16')
        assert {p.dtype for p in rm16.model.parameters()} == {torch.bfloat16}  # reward_dtype='bfloat16'
        # exactly the scores of the model itself in bf16 (these random, noisy models are touchy: bf16
        # moves their scores by up to 0.12; a trained reward model in bf16 is checked in test_reward.py)
        inputs16 = rm16.encode(prompts, responses)  # sets the pad id it chose for this batch
        model.config.pad_token_id = rm16.model.config.pad_token_id
        with torch.no_grad():
            alone16 = model.to(torch.bfloat16)(**inputs16).logits[:, 0].float()
        got16 = rm16.score(prompts, responses)
        assert torch.equal(got16, alone16)
    # 40 prompt words + [CLS] [SEP] 2 response words [SEP] = 45 > 32 tokens: the first 13 prompt words go
    rm = HFRewardModel(str(hf_rm / 'bert'))
    words = [WORDS[5 + i * 7 % 23] for i in range(40)]
    long_score = rm.score([' '.join(words)], ['yes no'])
    torch.testing.assert_close(long_score, rm.score([' '.join(words[13:])], ['yes no']), atol=1e-6, rtol=0)
    assert (long_score - rm.score([' '.join(words[14:])], ['yes no'])).abs().item() > 1e-6  # 13 exactly
    # a response of 40 words (it was a UserError): the prompt and the response's last 28 words
    torch.testing.assert_close(rm.score(['a'], [' '.join(words)]), rm.score(['a'], [' '.join(words[12:])]), atol=1e-6, rtol=0)


def test_hf_reward_model_runs_in_its_own_dtype_outside_the_policys_autocast(hf_rm):
    """ppo_train.py gave HFRewardModel the policy's dtype and it ran the model under that autocast (bf16 on a
    recent GPU), so a float32 reward model's scores carried bf16 rounding. It now runs in its own dtype
    (reward_dtype) with autocast off, also when called under one: under a bf16 autocast (the CPU's here, as
    CUDA's in a run) a float32 model scores exactly as alone in float32, a bf16 one as alone in bf16."""
    from transformers import AutoModelForSequenceClassification
    from common import HFRewardModel
    prompts, responses = ['once upon a time', 'the cat sat on the mat 3', 'a'], [' yes good', ' no', ' the cat']
    for weights_dtype, dt in (('float32', torch.float32), ('bfloat16', torch.bfloat16)):
        rm = HFRewardModel(str(hf_rm / 'bert'), batch_size=3, weights_dtype=weights_dtype)
        model = AutoModelForSequenceClassification.from_pretrained(hf_rm / 'bert').to(dt).eval()
        with torch.no_grad():
            alone = model(**rm.encode(prompts, responses)).logits[:, 0].float()
        with torch.autocast('cpu', dtype=torch.bfloat16):  # the policy's
            got = rm.score(prompts, responses)
        assert torch.equal(got, alone), (weights_dtype, got, alone)


def test_hf_reward_model_scores_a_text_ending_in_eos_at_that_eos(hf_rm):
    """A GPT-2-style classifier whose config names no pad token is scored by HF at a text's last token
    (alone, batch 1). HFRewardModel pads such a batch with EOS; HF pools at the rightmost token that is
    not the pad, so a text that ENDS with EOS (a template '...{response} </s>', as GPT-2 reward models
    are often trained) was scored one token early, at the token before its EOS."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from common import HFRewardModel
    template = '{prompt}{response} </s>'
    prompts, responses = ['once upon a time', 'a', 'the cat'], [' yes good', ' the cat sat on', ' no </s> bad']
    tok = AutoTokenizer.from_pretrained(hf_rm / 'gpt2')
    model = AutoModelForSequenceClassification.from_pretrained(hf_rm / 'gpt2')
    assert model.config.pad_token_id is None and tok.pad_token is None
    with torch.no_grad():  # each text alone: HF scores its last token, the EOS
        alone = torch.tensor([model(**tok(template.format(prompt=p, response=r), return_tensors='pt')).logits[0, 0].item()
                              for p, r in zip(prompts, responses)])
    for batch_size in (1, 3):
        got = HFRewardModel(str(hf_rm / 'gpt2'), batch_size=batch_size, template=template).score(prompts, responses)
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


def test_hf_reward_model_pads_with_the_configs_pad_id(tmp_path):
    """A GPT-2-style classifier whose config names a pad id that its tokenizer does not pad with (here the
    tokenizer has no pad token and pads with its EOS '</s>'; the config says [UNK]): HF scores the rightmost
    token that is not the config's pad, so padding with EOS scored every shorter text of a batch at its
    padding. The padding positions now hold the config's id: each text scores as alone, in any batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from common import HFRewardModel
    make_hf_classifier(str(tmp_path), arch='gpt2')
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    model.config.pad_token_id = 0  # [UNK]
    model.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.pad_token is None
    template = '{prompt}{response}'
    prompts, responses = ['once upon a time', 'a', 'the cat sat on the mat'], [' yes good', ' no', ' the cat']
    with torch.no_grad():
        alone = torch.tensor([model(**tok(template.format(prompt=p, response=r), return_tensors='pt')).logits[0, 0].item()
                              for p, r in zip(prompts, responses)])
    for batch_size in (1, 3):
        got = HFRewardModel(str(tmp_path), batch_size=batch_size, template=template).score(prompts, responses)
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
    assert alone.std() > 1e-3
    # a config pad id that is no id of the vocabulary (one past it): padded with a free id instead (it would
    # index past the embedding)
    model.config.pad_token_id = model.config.vocab_size
    model.save_pretrained(tmp_path)
    got = HFRewardModel(str(tmp_path), batch_size=3, template=template).score(prompts, responses)
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


def test_hf_reward_model_without_a_free_pad_id_scores_one_text_at_a_time(tmp_path):
    """A classifier with no pad id in its config is padded with an id no text of the batch uses; when
    the batch uses every id of its (tiny) vocabulary there is none, and each text is scored alone, at
    its own length (HF refuses a batch > 1 without a pad id)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from common import HFRewardModel
    make_hf_classifier(str(tmp_path), arch='gpt2', words=['[UNK]', '</s>', 'a', 'b'])
    template = '{prompt}{response}'
    prompts, responses = ['a b a', 'b', 'a'], [' zzz </s>', ' a a b', ' b']  # zzz is [UNK]: ids 0-3 all used
    tok, model = AutoTokenizer.from_pretrained(tmp_path), AutoModelForSequenceClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        alone = torch.tensor([model(**tok(template.format(prompt=p, response=r), return_tensors='pt')).logits[0, 0].item()
                              for p, r in zip(prompts, responses)])
    rm = HFRewardModel(str(tmp_path), batch_size=3, template=template)
    rm.encode(prompts, responses)
    assert rm.model.config.pad_token_id is None  # no free id in this batch: the one-at-a-time path
    got = rm.score(prompts, responses)
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
    assert got.std() > 1e-3
    rm.encode(prompts[1:], responses[1:])
    assert rm.model.config.pad_token_id == 0  # without zzz, [UNK] is free again: a batch
    torch.testing.assert_close(rm.score(prompts[1:], responses[1:]), alone[1:], atol=1e-5, rtol=0)


def test_hf_reward_model_response_that_fills_the_max_length(hf_rm):
    """Pair mode: a response that leaves no room for a single prompt token (29 words + [CLS] [SEP] [SEP]
    = 32 = max length) passed the length check, and the fast tokenizer then raised 'Truncation error:
    Sequence to truncate too short' in the middle of a run; then it was a UserError, which still stopped
    PPO mid-run. Such a response now keeps its end (the reward is read there): a pair keeps the prompt's
    last token and the response's last 28 (as RewardModel cuts a .pt's; HF's 'longest_first' left about
    half the response to a long prompt), a template's text is cut from its left (here the prompt and the
    response's first word or three), with a note the first time. 28 words (one prompt token left) keep
    'only_first': the whole response."""
    from transformers import AutoModelForSequenceClassification
    from common import HFRewardModel
    words = [WORDS[5 + i * 7 % 23] for i in range(60)]
    rm = HFRewardModel(str(hf_rm / 'bert'))
    model = AutoModelForSequenceClassification.from_pretrained(hf_rm / 'bert').eval()
    assert rm.score(['once upon a'], [' '.join(words[:28])]).shape == (1,)
    for prompt in ('once upon a', ' '.join(words[30:50])):  # a short prompt and one of 20 words
        cut = rm.encode([prompt], [' '.join(words[:29])])
        kept = rm.tokenizer(prompt.split()[-1], ' '.join(words[1:29]), return_tensors='pt')
        assert set(cut) == set(kept) and cut['input_ids'].shape == (1, 32)
        assert all(cut[k].tolist() == kept[k].tolist() for k in kept), {k: (cut[k], kept[k]) for k in kept}
        with torch.no_grad():
            alone = model(**kept).logits[:, 0]
        torch.testing.assert_close(rm.score([prompt], [' '.join(words[:29])]), alone, atol=1e-6, rtol=0)
    assert rm.noted_cut  # (the note: printed once per model)
    for arch, template, kept in [('bert', '{prompt} | {response}', words[3:33]), ('gpt2', '{prompt}{response}', words[1:33])]:
        rm = HFRewardModel(str(hf_rm / arch), template=template)
        assert rm.score(['once upon a'], [' '.join(words[:25])]).shape == (1,)
        model = AutoModelForSequenceClassification.from_pretrained(hf_rm / arch).eval()
        with torch.no_grad():  # the last 32 tokens of "once upon a ... w32" (bert: its [CLS] and [SEP] kept)
            alone = model(**rm.tokenizer(' '.join(kept), return_tensors='pt')).logits[:, 0]
        assert rm.tokenizer(' '.join(kept), return_tensors='pt')['input_ids'].shape == (1, 32)
        torch.testing.assert_close(rm.score(['once upon a'], [' '.join(words[:33])]), alone, atol=1e-6, rtol=0)


def test_hf_reward_model_errors(hf_rm, tmp_path):
    from common import HFRewardModel, UserError
    with pytest.raises(UserError, match='num_labels=2'):
        HFRewardModel(str(hf_rm / 'two'))
    with pytest.raises(UserError, match='without a Hugging Face config.json'):
        HFRewardModel(str(tmp_path))
    with pytest.raises(UserError, match='not a loadable Hugging Face'):
        HFRewardModel(str(tmp_path / 'missing_rm'))
    with pytest.raises(UserError, match='must contain'):
        HFRewardModel(str(hf_rm / 'bert'), template='{prompt}')


def test_ppo_runs_with_a_hf_reward_model(tiny, hf_rm, tmp_path):
    """ppo_train.py with reward_model = a Hugging Face classifier directory (not a .pt): the GPT-2
    texts are re-tokenised with its tokenizer and scored; samples.csv holds the scores."""
    p = run_ppo(tiny, tmp_path, ['--reward_fn=', f'--reward_model={hf_rm / "bert"}', '--batch_size=4',
                                 '--mini_batch_size=4', '--max_iters=2', '--sample_interval=1', '--ppo_epochs=1'])
    assert p.returncode == 0, p.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))
    samples = list(csv.DictReader(open(tmp_path / 'out' / 'samples.csv')))
    assert len(rows) == 2 and len(samples) == 8 and {s['step'] for s in samples} == {'0', '1'}
    assert all(abs(float(s['score'])) < 1e3 for s in samples)
    ppo_fails(tiny, tmp_path, ['--reward_fn=', f'--reward_model={tmp_path / "nope"}', '--max_iters=1'],
              'is not a loadable Hugging Face sequence-classification model')


def test_ppo_scores_responses_longer_than_the_hf_reward_models_context(tiny, hf_rm, tmp_path):
    """40 new GPT-2 tokens of a random policy are ~30 words of the HF reward model's word-level tokenizer,
    more than its max length 32 holds with a prompt: PPO stopped with 'a response of 30 reward-model
    tokens does not fit its max length 32' (at whichever rollout first had one). The response now keeps
    its end, with a note, and the run goes on."""
    p = run_ppo(tiny, tmp_path, ['--reward_fn=', f'--reward_model={hf_rm / "bert"}', '--batch_size=4',
                                 '--mini_batch_size=4', '--max_iters=2', '--ppo_epochs=1', '--max_new_tokens=40'])
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("reward-model tokens is longer than the reward model's max length 32") == 1
    assert len(list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))) == 2


def test_ppo_and_grpo_configs_parse():
    """config/ppo_*.py and grpo_*.py assign only ppo_train.py's keys, with their types."""
    import glob
    from common import configure
    src = open(os.path.join(ROOT, 'ppo_train.py')).read()
    defaults = src[src.index('# I/O'):src.index('config = configure(globals())')]  # the config block
    paths = sorted(glob.glob(os.path.join(ROOT, 'config', 'ppo_*.py')) + glob.glob(os.path.join(ROOT, 'config', 'grpo_*.py')))
    assert len(paths) >= 3
    for path in paths:
        scope = {}
        exec(defaults, scope)
        configure(scope, [path])


def test_ppo_tiny_config_runs_with_a_project_reward_checkpoint(tmp_path):
    """config/ppo_tiny.py for 2 iterations, with stand-ins for the tiny chain's outputs: a random
    GPT as out-sft-tiny/ckpt.pt, a random GPT with a value head (and normalisation stats) as
    out-reward-tiny/best.pt, and a few prompts as data/hh_rlhf/sft_train.jsonl. Covers the project
    reward-model path (common.RewardModel) of ppo_train.py."""
    from dataclasses import asdict
    from model import GPTConfig
    torch.manual_seed(0)
    for path, value_head in [('out-sft-tiny/ckpt.pt', False), ('out-reward-tiny/best.pt', True)]:
        model = GPT(GPTConfig(block_size=256, vocab_size=50304, n_layer=1, n_head=2, n_embd=32, value_head=value_head))
        if value_head:
            torch.nn.init.normal_(model.value_head.weight)
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        torch.save({'model': model.state_dict(), 'model_args': asdict(model.config), 'reward_mean': 0.5,
                    'reward_std': 2.0}, tmp_path / path)
    os.makedirs(tmp_path / 'data' / 'hh_rlhf')
    (tmp_path / 'data' / 'hh_rlhf' / 'sft_train.jsonl').write_text('\n'.join(
        json.dumps({'prompt': f'\n\nHuman: what is {i}?\n\nAssistant:', 'response': ' no'}) for i in range(16)))
    p = run_python([sys.executable, os.path.join(ROOT, 'ppo_train.py'), os.path.join(ROOT, 'config', 'ppo_tiny.py'),
                        '--max_iters=2', '--max_new_tokens=8', '--ppo_epochs=1'], cwd=tmp_path, capture_output=True,
                   text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / 'out-ppo-tiny' / 'log.csv')))
    assert len(rows) == 2 and all(abs(float(r['objective/scores'])) < 1e3 for r in rows)
    assert float(rows[0]['objective/scores']) != 0.0  # the value head really scored the texts
    assert os.path.isfile(tmp_path / 'out-ppo-tiny' / 'ckpt.pt')
    assert len(list(csv.DictReader(open(tmp_path / 'out-ppo-tiny' / 'samples.csv')))) == 8  # iteration 0
    # the reward model in bf16 on the CPU (reward_dtype, reward_device): the same first rollout (same
    # seed), scored the same to bf16 precision
    p = run_python([sys.executable, os.path.join(ROOT, 'ppo_train.py'), os.path.join(ROOT, 'config', 'ppo_tiny.py'),
                        '--max_iters=1', '--max_new_tokens=8', '--ppo_epochs=1', '--out_dir=out-bf16',
                        '--reward_dtype=bfloat16', '--reward_device=cpu'], cwd=tmp_path, capture_output=True,
                   text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    fp32, bf16 = (list(csv.DictReader(open(tmp_path / d / 'samples.csv'))) for d in ('out-ppo-tiny', 'out-bf16'))
    assert [r['response'] for r in bf16] == [r['response'] for r in fp32[:len(bf16)]]
    scores = torch.tensor([[float(r['score']) for r in rows[:len(bf16)]] for rows in (fp32, bf16)])
    assert scores[0].std() > 0.1  # the responses really score differently
    torch.testing.assert_close(scores[1], scores[0], atol=0.05 * scores[0].abs().max().item(), rtol=0)
    assert not torch.equal(scores[1], scores[0])  # bf16 really was used


def test_logger_table_csv_keeps_one_history_on_resume(tmp_path):
    """Logger.log_table writes <name>.csv next to log.csv; a resumed Logger drops the rows from the
    resumed step on, as it does for the metrics (samples.csv stays one run)."""
    from common import Logger
    log = Logger(str(tmp_path / 'log.csv'))
    for step in range(3):
        log.log_table('samples', [{'prompt': 'a,"b"\nc', 'response': f'r{step}{i}', 'score': step + i} for i in range(2)], step)
    log = Logger(str(tmp_path / 'log.csv'), resume_step=1)
    log.log_table('samples', [{'prompt': 'p', 'response': 'new', 'score': 9.0}], 1)
    rows = list(csv.DictReader(open(tmp_path / 'samples.csv')))
    assert [(r['step'], r['response']) for r in rows] == [('0', 'r00'), ('0', 'r01'), ('1', 'new')]
    assert rows[0]['prompt'] == 'a,"b"\nc'


# LoRA: a LoRA SFT checkpoint as init_from stays the reference; no dropout anywhere in PPO

def lora_checkpoint(tiny, name, lora_dropout=0.0):
    """A checkpoint of this project with TRAINED LoRA adapters (lora_B != 0), as train.py writes
    for config/sft_gpt2large_lora.py, the init_from of config/ppo_gpt2large.py and grpo_gpt2large.py."""
    m = GPT.from_pretrained(str(tiny / 'hf'), lora_rank=4, lora_alpha=8.0, lora_dropout=lora_dropout)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith('lora_B'):
                p.normal_(0, 0.3)
    os.makedirs(tiny / name, exist_ok=True)
    torch.save({'model': m.state_dict(), 'model_args': asdict(m.config)}, tiny / name / 'ckpt.pt')
    return m, str(tiny / name)


def ppo_log(tmp_path, args):
    """log.csv rows of a ppo_train.py run (init_from in args) on the space_fraction task."""
    p = run_ppo(None, tmp_path, args)
    assert p.returncode == 0, p.stdout[-1500:] + p.stderr[-1500:]
    return list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))


@pytest.mark.parametrize('ref_dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('rank', [4, 2])
def test_lora_ppo_from_a_lora_sft_checkpoint_keeps_it_as_the_reference(tiny, tmp_path, ref_dtype, rank):
    """LoRA PPO's reference is the policy with its adapters disabled. When init_from already has
    trained adapters (the documented pipeline sft_gpt2large_lora -> ppo_gpt2large), disabling them
    gave the BASE model, not the SFT policy: the KL to the reference was not 0 before any update
    (iteration 0 stopped with 'KL to the reference is 1.62e+00', or, with ref_dtype='bfloat16',
    which skipped that check, PPO silently penalised the distance to the pre-SFT base).
    Expected: the KL of iteration 0 is exactly 0 (reference = init_from's function), with PPO's own
    lora_rank equal to or different from the checkpoint's."""
    sft, path = lora_checkpoint(tiny, 'sft_lora')
    rows = ppo_log(tmp_path, ['--batch_size=8', f'--init_from={path}', f'--lora_rank={rank}', '--lora_alpha=8.0', f'--ref_dtype={ref_dtype}',
                              '--mini_batch_size=4', '--learning_rate=1e-3', '--max_iters=1', '--eval_interval=1'])
    assert float(rows[0]['objective/kl']) == 0.0
    # the trained policy's adapters-off model is the SFT policy (its adapters merged), not the base
    policy, _ = GPT.from_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))
    ids = torch.randint(50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), policy.disable_adapters():
        torch.testing.assert_close(policy.eval()(ids)[0], sft.eval()(ids)[0], atol=1e-4, rtol=0)


def test_resume_refuses_a_changed_reference(tiny, tmp_path):
    """A resumed PPO run reloads its reference from init_from's path: replaced meanwhile, the KL would
    silently be to other weights (the KL=0 check only runs at iteration 0); it is one error line."""
    import shutil
    shutil.copytree(tiny / 'hf', tmp_path / 'init')
    args = ['--batch_size=8', '--mini_batch_size=8', '--eval_interval=1']
    p = run_ppo(None, tmp_path, args + [f'--init_from={tmp_path / "init"}', '--max_iters=1'])
    assert p.returncode == 0, p.stderr[-2000:]
    shutil.move(tmp_path / 'init', tmp_path / 'moved')
    p = run_ppo(None, tmp_path, args + ['--init_from=resume', '--max_iters=2'])
    assert p.returncode != 0 and 'not found' in p.stderr.strip().splitlines()[-1], p.stderr[-1500:]
    shutil.copytree(tmp_path / 'moved', tmp_path / 'init')  # a copy (new times) of the same weights: resumes
    assert run_ppo(None, tmp_path, args + ['--init_from=resume', '--max_iters=2']).returncode == 0
    from safetensors.torch import load_file, save_file
    sd = load_file(tmp_path / 'init' / 'model.safetensors')
    save_file({k: v + 0.01 if 'wte' in k else v for k, v in sd.items()}, tmp_path / 'init' / 'model.safetensors')
    p = run_ppo(None, tmp_path, args + ['--init_from=resume', '--max_iters=3'])  # other weights, same shapes
    assert p.returncode != 0 and 'changed since this run started' in p.stderr.strip().splitlines()[-1], p.stderr[-1500:]


def test_resume_takes_a_fixed_kl_coef_from_the_command_line_and_lora_rank_from_the_checkpoint(tiny, tmp_path):
    """--kl_coef on resume applies when kl_coef is fixed (it was silently replaced by the
    checkpoint's); with adaptive_kl the checkpoint's, the controller's state, carries on. lora_rank
    is the checkpoint's (a --lora_rank on resume made the reference the adapters-off policy)."""
    args = ['--batch_size=8', '--mini_batch_size=8', '--eval_interval=1']
    assert run_ppo(tiny, tmp_path, args + ['--max_iters=1']).returncode == 0
    p = run_ppo(None, tmp_path, args + ['--init_from=resume', '--max_iters=2', '--kl_coef=0.3'])
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'kl_coef 0.3 from the config (the checkpoint\'s run used 0.01)' in p.stdout
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))
    assert [float(r['objective/kl_coef']) for r in rows] == [0.01, 0.3]
    # --lora_rank on resuming a full finetune: the checkpoint's (none) decides; as LoRA, the reference
    # would be the adapters-off policy, i.e. the trained policy itself, and the KL 0 forever
    p = run_ppo(None, tmp_path, args + ['--init_from=resume', '--max_iters=3', '--kl_coef=0.3', '--lora_rank=4'])
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'lora_rank 0 from the checkpoint (config says 4)' in p.stdout
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))
    assert float(rows[2]['objective/kl']) != 0.0


def test_lora_rank_0_from_a_lora_checkpoint_trains_every_weight(tiny, tmp_path):
    """lora_rank=0 (LoRA off) from a LoRA SFT checkpoint: its adapters are merged and every weight
    trains. Before, the checkpoint's adapters came along with a frozen base, so only they trained."""
    sft, path = lora_checkpoint(tiny, 'sft_lora_full')
    p = run_ppo(None, tmp_path, ['--batch_size=8', f'--init_from={path}', '--mini_batch_size=4', '--learning_rate=1e-3',
                                 '--max_iters=1', '--eval_interval=1'])
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'has LoRA adapters; lora_rank=0: merged into its weights, every weight trains' in p.stdout
    trained, _ = GPT.from_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))
    assert trained.config.lora_rank == 0
    merged = sft.merge_lora().state_dict()
    moved = [k for k, v in trained.state_dict().items() if k in merged and not torch.equal(v, merged[k])]
    assert 'transformer.wpe.weight' in moved and 'transformer.h.0.mlp.c_fc.weight' in moved  # not adapters only
    # it resumes exactly: the reference reloaded from the LoRA checkpoint is merged, as the copy the run
    # started with (it was the unmerged model: the same function up to rounding)
    args = ['--batch_size=8', '--mini_batch_size=4', '--learning_rate=1e-3', '--max_iters=2', '--eval_interval=1']
    for out, init in (('straight', path), ('out', 'resume')):
        p = run_ppo(None, tmp_path, args + [f'--init_from={init}', f'--out_dir={out}'])
        assert p.returncode == 0, p.stderr[-2000:]
    rows = [[{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(open(tmp_path / d / 'log.csv'))]
            for d in ('straight', 'out')]
    assert len(rows[0]) == 2 and rows[0] == rows[1]
    a, b = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=False)['model'] for d in ('straight', 'out'))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ppo_update_has_no_dropout_so_each_rollouts_first_ratio_is_1(tiny, tmp_path):
    """The PPO epochs ran in train mode (policy.train()), so LoRA dropout was active in the update
    but not in the rollout that computed old_logp: with one mini-batch step per rollout (weights
    unchanged since old_logp) the ratio must be exactly 1, but was not. Shown with an init_from
    whose adapters carry lora_dropout=0.5 (here before the fix: iteration 0 stopped on 'first PPO
    ratio is ..., not 1'); with --lora_rank=4 --lora_dropout=0.5 the same happened silently from
    iteration 1 on (ratio_max 1.094, approxkl 5.5e-4 at iteration 1 with learning_rate=1e-2)."""
    _, path = lora_checkpoint(tiny, 'sft_lora_dropout', lora_dropout=0.5)
    rows = ppo_log(tmp_path, ['--batch_size=8', f'--init_from={path}', '--mini_batch_size=8', '--ppo_epochs=1', '--learning_rate=1e-2',
                              '--max_iters=3', '--eval_interval=3'])
    assert float(rows[-1]['objective/kl']) != 0.0  # the policy moved
    for r in rows:
        assert float(r['policy/ratio_max']) == 1.0 and float(r['policy/approxkl']) == 0.0, r


def test_ppo_refuses_lora_dropout(tiny, tmp_path):
    ppo_fails(tiny, tmp_path, ['--lora_rank=4', '--lora_dropout=0.5', '--max_iters=1'],
              'lora_dropout=0.5: PPO runs without dropout')


def test_an_iteration_whose_every_step_was_skipped_logs_nan_not_zero(tiny, tmp_path, monkeypatch):
    """Every PPO step non-finite (here: ppo_policy_loss patched to return inf) -> no update
    happened, so the update's metrics are NaN, not the 0.0 of an empty average: the fatal
    `nonfinite` alarm stops the run naming them, and `ratio_explosion` does not misread a mean
    ratio of 0 as a runaway policy."""
    import losses
    from alarms import TrainingHealthError
    right = losses.ppo_policy_loss

    def inf_loss(*args, **kwargs):
        loss, stats = right(*args, **kwargs)
        return loss * float('inf'), stats
    monkeypatch.setattr(losses, 'ppo_policy_loss', inf_loss)
    with pytest.raises(TrainingHealthError) as e:
        run_ppo_in_process(tmp_path, monkeypatch, tiny / 'hf', '--max_new_tokens=4', '--batch_size=4',
                           '--mini_batch_size=2', '--max_iters=3')
    message = str(e.value)
    assert 'nonfinite' in message and 'val/ratio' in message and 'policy/clipfrac' in message, message
    assert 'ratio_explosion' not in message and 'at step 0' in message, message
    assert 'objective/scores' not in message  # the rollout itself was fine
    row = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))[-1]  # the row it stopped on reaches the CSV
    assert row['step'] == '0' and row['val/ratio'] == 'nan' and row['alarm/nonfinite'] == '1.0', row
    assert int(float(row['skipped_steps'])) >= 2 and row['objective/scores'] != 'nan'


def test_bf16_start_up_invariants_pass_a_healthy_run_and_stop_a_temperature_mismatch(tmp_path, monkeypatch):
    """Under bf16 autocast (CUDA's; here the CPU's, with common.setup_device patched) cached decoding and
    the full forward round differently, so ppo_train.py checks the MEAN |training - sampling log-prob|
    over response tokens (5e-2) and the mean |log ratio| of the first step (1e-2) instead of float32's
    per-token maxima. An 8-layer model with GPT-2-like logits (a large shared offset) passes both on a
    healthy run (its largest token gap is ~0.04, growing with depth: 0.005 at 2 layers); the same run
    with the training pass at 1.5x the sampling temperature still stops on its first rollout."""
    import runpy
    import common
    from common import UserError
    hf = make_hf_gpt2(str(tmp_path / 'hf'), n_layer=8, n_embd=64, vocab_size=50257, n_positions=64)
    with torch.no_grad():  # GPT-2-like logits: tens below zero, an offset every token shares
        hf.transformer.wte.weight.mul_(4)[:, 0] -= 16.0
        hf.transformer.ln_f.bias[0] = 10.0
    hf.save_pretrained(str(tmp_path / 'hf'))
    (tmp_path / 'rewards.py').write_text(REWARD_MODULE)
    (tmp_path / 'prompts.jsonl').write_text('\n'.join(json.dumps({'prompt': f'Once upon a time {i}'}) for i in range(8)))
    monkeypatch.setattr(common, 'setup_device',
                        lambda device, dtype: ('cpu', 'cpu', 'bfloat16', torch.autocast('cpu', dtype=torch.bfloat16)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ['ppo_train.py', f'--init_from={tmp_path / "hf"}', '--prompt_data=prompts.jsonl', '--reward_fn=rewards:space_fraction',
            '--device=cpu', '--block_size=64', '--max_new_tokens=12', '--batch_size=8', '--mini_batch_size=4',
            '--max_iters=1', '--out_dir=out', '--temperature=0.7']
    monkeypatch.setattr(sys, 'argv', argv)
    runpy.run_path(os.path.join(ROOT, 'ppo_train.py'), run_name='__main__')  # no stop
    assert (tmp_path / 'out' / 'ckpt.pt').exists()
    right = common.response_forward
    monkeypatch.setattr(common, 'response_forward', lambda m, ids, am, n, t, *a: right(m, ids, am, n, 1.5 * t, *a))
    monkeypatch.setattr(sys, 'argv', argv[:-2] + ['--out_dir=out2', '--temperature=0.7'])
    with pytest.raises(UserError, match=r'training log-probs differ from sampling log-probs by .* on average .*bfloat16'):
        runpy.run_path(os.path.join(ROOT, 'ppo_train.py'), run_name='__main__')


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_first_ratio_check_stops_log_probs_that_moved_between_rollout_and_update(tiny, tmp_path, monkeypatch, dtype):
    """The first PPO step's invariant: nothing changed since the rollout, so the ratio is 1. Here the
    update pass's log-probs are shifted by 0.05 nats (response_forward patched: only with grad, so the
    rollout's own check, sampling vs training log-probs, still passes): float32 stops on the largest
    ratio (1.05 > 1 + 1e-4), bf16 (CUDA's autocast, here the CPU's) on the mean |log ratio| (0.05 > 1e-2)."""
    import common
    from common import UserError
    if dtype == 'bfloat16':
        monkeypatch.setattr(common, 'setup_device',
                            lambda device, dt: ('cpu', 'cpu', 'bfloat16', torch.autocast('cpu', dtype=torch.bfloat16)))
    right = common.response_forward

    def moved(*args):
        logp, entropy, values = right(*args)
        return (logp + 0.05 if torch.is_grad_enabled() else logp), entropy, values
    monkeypatch.setattr(common, 'response_forward', moved)
    with pytest.raises(UserError, match=rf'first PPO ratio is 1\.05\d* at most \(mean \|log ratio\| 5\.0\de-02, {dtype}\)'):
        run_ppo_in_process(tmp_path, monkeypatch, tiny / 'hf', '--max_new_tokens=4', '--batch_size=4',
                           '--mini_batch_size=2', '--max_iters=1')


def test_consecutive_seeds_draw_unrelated_rollouts(tiny, tmp_path):
    """Seeds 1 and 2 (a seed sweep) must not repeat each other's random numbers. With the rollout
    generator reseeded seed + iter_num and the epoch order from seed + epoch, seed 2's first
    rollout drew exactly seed 1's second: the same prompt order and the same samples (learning
    rate 0, so the policy is the same; one prompt batch per epoch)."""
    rows = {}
    for s in (1, 2):
        d = tmp_path / f'seed{s}'
        d.mkdir()
        p = run_ppo(tiny, d, [f'--seed={s}', '--batch_size=64', '--mini_batch_size=64', '--max_iters=2',
                              '--learning_rate=0', '--sample_interval=1', '--eval_interval=100'])
        assert p.returncode == 0, p.stderr[-2000:]
        rows[s] = list(csv.DictReader(open(d / 'out' / 'samples.csv')))
    at = lambda s, it: [(r['prompt'], r['response']) for r in rows[s] if int(r['step']) == it]
    assert len(at(1, 1)) == len(at(2, 0)) == 64
    assert at(1, 0) != at(1, 1)  # two rollouts of one run differ
    same = sum(a == b for a, b in zip(at(1, 1), at(2, 0)))
    assert same < 8, f"{same} of 64 samples of seed 2's first rollout repeat seed 1's second"


def test_a_checkpoint_from_before_stream_seed_resumes_with_its_own_rollout_seeds(tiny, tmp_path, monkeypatch):
    """A PPO checkpoint without 'rollout_seeding' (saved before stream_seed) keeps reseeding its
    rollouts seed + iter_num, as the run began; a new checkpoint keeps stream_seed."""
    import common
    right, calls = common.stream_seed, []

    def spy(seed, *keys):
        calls.append(keys)
        return right(seed, *keys)

    monkeypatch.setattr(common, 'stream_seed', spy)
    args = ['--max_new_tokens=4', '--batch_size=4', '--mini_batch_size=4', '--eval_interval=1']
    run_ppo_in_process(tmp_path, monkeypatch, tiny / 'hf', *args, '--max_iters=1')
    assert ('rollout', 0) in calls
    ckpt_path = tmp_path / 'out' / 'ckpt.pt'
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt['rollout_seeding'] == 'stream' and ckpt['prompt_loader']['order'] == 'stream'
    del ckpt['rollout_seeding'], ckpt['prompt_loader']['order']
    torch.save(ckpt, ckpt_path)
    calls.clear()
    run_ppo_in_process(tmp_path, monkeypatch, tiny / 'hf', *args, '--max_iters=2', '--init_from=resume')
    assert not [c for c in calls if c[0] == 'rollout']  # seed + iter_num, as the run began
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt['rollout_seeding'] == 'seed+iter' and ckpt['prompt_loader']['order'] == 'seed+epoch'


def test_one_token_rollout_and_a_lora_reward_model_as_the_separate_critic(tiny, tmp_path):
    """A rollout of one response token in all (batch_size 1, max_new_tokens 1) trains without
    whitening (a variance of one token raised). A separate critic from a LoRA reward checkpoint is
    merged and trains every weight, as the policy does (only its adapters and head moved)."""
    from dataclasses import asdict
    from common import save_checkpoint
    from model import GPTConfig
    p = run_ppo(tiny, tmp_path, ['--batch_size=1', '--mini_batch_size=1', '--max_new_tokens=1', '--max_iters=1'])
    assert p.returncode == 0, p.stderr[-2000:]
    torch.manual_seed(0)
    rm = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=50257, block_size=64, value_head=True,
                       lora_rank=2, lora_targets='attn'))
    with torch.no_grad():
        rm.value_head.weight.normal_(0, 1.0)  # a zero head passes no gradient to the trunk
    save_checkpoint(str(tmp_path / 'rmlora.pt'), {'model': rm.state_dict(), 'model_args': asdict(rm.config),
                                                  'reward_mean': 0.0, 'reward_std': 1.0}, rm)
    p = run_ppo(tiny, tmp_path, ['--reward_fn=', '--reward_model=rmlora.pt', '--critic=separate', '--batch_size=4',
                                 '--mini_batch_size=4', '--learning_rate=1e-2', '--max_iters=1', '--eval_interval=1'])
    assert p.returncode == 0, p.stderr[-2000:]
    critic = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=False)['critic']
    merged = rm.merge_lora().state_dict()
    assert not any('lora_' in k for k in critic) and critic.keys() == merged.keys()
    assert not torch.equal(critic['transformer.h.0.mlp.c_fc.weight'], merged['transformer.h.0.mlp.c_fc.weight'])


def test_distinct_2_is_logged_over_each_responses_first_16_tokens(tiny, tmp_path, monkeypatch):
    """objective/distinct_2 is alarms.distinct_n of the rollout's responses cut to 16 tokens (the
    collapse alarm's length-robust measure), and the logged value is what it returned."""
    import alarms
    right, seen = alarms.distinct_n, []

    def spy(sequences, n=2, max_len=None):
        seen.append((n, max_len))
        return right(sequences, n, max_len)

    monkeypatch.setattr(alarms, 'distinct_n', spy)
    run_ppo_in_process(tmp_path, monkeypatch, tiny / 'hf', '--max_new_tokens=4', '--batch_size=4',
                       '--mini_batch_size=4', '--max_iters=1')
    assert seen == [(2, 16)]
    row = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))[0]
    assert 0 < float(row['objective/distinct_2']) <= 1


def test_weight_decay_spares_biases_and_layer_norms_and_an_old_one_group_checkpoint_resumes(tiny, tmp_path):
    """ppo_train.py's AdamW has the other scripts' two groups (model.param_groups): weight_decay on
    matrices, none on biases and layer norms (before: one group, so a weight_decay > 0 decayed them all;
    the default is 0). A checkpoint saved with the one group resumes in its own layout, exactly."""
    args = ['--batch_size=8', '--mini_batch_size=4', '--learning_rate=1e-3', '--eval_interval=1']
    p = run_ppo(tiny, tmp_path, args + ['--max_iters=1', '--out_dir=decay', '--weight_decay=0.1'])
    assert p.returncode == 0, p.stderr[-2000:]
    policy, _ = GPT.from_checkpoint(str(tmp_path / 'decay' / 'ckpt.pt'))
    params = [p for p in policy.parameters() if p.requires_grad]
    groups = torch.load(tmp_path / 'decay' / 'ckpt.pt', weights_only=False)['optimizer']['param_groups']
    assert [g['weight_decay'] for g in groups] == [0.1, 0.0]
    assert [len(g['params']) for g in groups] == [sum(p.dim() >= 2 for p in params), sum(p.dim() < 2 for p in params)]
    # weight_decay 0: a one-group run is the two-group run. The iteration-1 checkpoint rewritten as one
    # group in parameter order (the layout before the groups) resumes to the straight run's weights
    for out, n in (('straight', 2), ('old', 1)):
        p = run_ppo(tiny, tmp_path, args + [f'--max_iters={n}', f'--out_dir={out}'])
        assert p.returncode == 0, p.stderr[-2000:]
    old = torch.load(tmp_path / 'old' / 'ckpt.pt', weights_only=False)
    order = [i for i, p in enumerate(params) if p.dim() >= 2] + [i for i, p in enumerate(params) if p.dim() < 2]
    index = {i: k for k, i in enumerate(order)}  # parameter order -> index in the two-group layout
    sd = old['optimizer']
    one = {**sd['param_groups'][0], 'params': list(range(len(params)))}
    old['optimizer'] = {'state': {i: sd['state'][index[i]] for i in range(len(params))}, 'param_groups': [one]}
    torch.save(old, tmp_path / 'old' / 'ckpt.pt')
    p = run_ppo(None, tmp_path, args + ['--init_from=resume', '--max_iters=2', '--out_dir=old'])
    assert p.returncode == 0, p.stderr[-2000:]
    resumed, straight = (torch.load(tmp_path / d / 'ckpt.pt', weights_only=False) for d in ('old', 'straight'))
    assert len(resumed['optimizer']['param_groups']) == 1
    assert all(torch.equal(v, resumed['model'][k]) for k, v in straight['model'].items())


SPY_REWARD = '''
CALLS, TEXTS = [], []

def score(prompts, responses):
    """A made-up score of each response's text, recorded so the test knows what the scorer returned."""
    s = [((len(r) * 7) % 5) * 0.25 - 0.5 for r in responses]
    CALLS.append(s)
    TEXTS.extend(responses)
    return s
'''


def eos_prone_gpt2(path):
    """A tiny GPT-2 that emits EOS often, at varied positions (its EOS embedding scaled up and the final
    layer norm's bias pointed at it): about 3 responses in 4 end early, the others run to max_new_tokens."""
    hf = make_hf_gpt2(str(path), vocab_size=50257, n_positions=64, n_embd=32)
    with torch.no_grad():
        hf.transformer.wte.weight[EOS] *= 30
        w = hf.transformer.wte.weight[EOS]
        hf.transformer.ln_f.weight.fill_(1.0)
        hf.transformer.ln_f.bias.copy_(0.45 * w / w.norm())
    hf.save_pretrained(str(path))
    return path


@pytest.mark.parametrize('algo', ['gae', 'rloo'])
def test_the_rewards_the_loop_builds_from_scores_kl_and_missing_eos(tmp_path, monkeypatch, algo):
    """What ppo_train.py hands to GAE (per-token rewards) and to RLOO (sequence scores), checked against
    the scorer's own outputs, the KL it computed and the response masks, at the first iteration (KL 0)
    and the second (KL not 0): -kl_coef x k1 on every response token, the score on the last real token
    (the EOS where a response has one: the responses here end at varied positions), missing_eos_penalty
    subtracted where a response has none, and GAE called with (gamma, lam) in that order. A hand
    mutation test found each of these unguarded: the score placed on the last column, the KL sign, the
    penalty's sign and gamma/lam swapped all passed the suite."""
    import importlib
    import losses
    model = eos_prone_gpt2(tmp_path / 'eos-hf')
    (tmp_path / 'spyrewards.py').write_text(SPY_REWARD)
    seen = {'kl': [], 'calls': []}
    real_kl, real_gae, real_rloo, real_whiten = losses.kl_estimate, losses.gae, losses.rloo_advantages, losses.masked_whiten
    seen['whitened'] = []

    def whiten_spy(x, mask, *args, **kwargs):
        out = real_whiten(x, mask, *args, **kwargs)
        seen['whitened'].append((out.clone(), mask.clone()))
        return out

    def kl_spy(logp, ref_logp, estimator):
        out = real_kl(logp, ref_logp, estimator)
        if estimator == 'k1' and not logp.requires_grad:  # the rollout's (no graph), not a loss's
            seen['kl'].append(out.detach().clone())
        return out

    def gae_spy(rewards, values, mask, *args):
        seen['calls'].append((rewards.clone(), mask.clone(), args))
        return real_gae(rewards, values, mask, *args)

    def rloo_spy(scores, group_size):
        seen['calls'].append((scores.clone(), None, (group_size,)))
        return real_rloo(scores, group_size)

    monkeypatch.setattr(losses, 'kl_estimate', kl_spy)
    monkeypatch.setattr(losses, 'gae', gae_spy)
    monkeypatch.setattr(losses, 'rloo_advantages', rloo_spy)
    monkeypatch.setattr(losses, 'masked_whiten', whiten_spy)
    extra = ['--advantage_estimator=rloo', '--batch_size=2', '--group_size=4'] if algo == 'rloo' else ['--batch_size=8']
    run_ppo_in_process(tmp_path, monkeypatch, model, '--reward_fn=spyrewards:score', '--max_new_tokens=8',
                       '--mini_batch_size=4', '--kl_coef=0.3', '--missing_eos_penalty=0.7', '--gamma=0.9', '--lam=0.8',
                       '--learning_rate=1e-2', '--max_iters=2', '--eval_interval=100', *extra)
    scores_seen = importlib.import_module('spyrewards').CALLS
    # the texts scored are the responses without their EOS (the scorer appends its own): never the EOS as text
    assert not any('<|endoftext|>' in t for t in importlib.import_module('spyrewards').TEXTS)
    rows = list(csv.DictReader(open(tmp_path / 'out' / 'log.csv')))
    assert len(seen['calls']) == len(scores_seen) == len(rows) == 2 and len(seen['kl']) == 2
    n_short = 0
    for it, ((got, mask, args), kl, scores) in enumerate(zip(seen['calls'], seen['kl'], scores_seen)):
        scores, n_seq = torch.tensor(scores), len(scores)
        n_eos = int(float(rows[it]['val/num_eos_tokens']))
        assert (it == 0) == bool(kl.abs().max() == 0)  # the first rollout's policy is the reference
        if algo == 'rloo':
            # the sequence score: score - kl_coef x the summed k1, less the penalty where no EOS (sum over rows)
            kl_sum = kl.nan_to_num(0.0).sum(1)  # (k1 is 0 after each response's end: masked by the loop)
            assert args == (4,)
            residual = got - (scores - 0.3 * kl_sum)
            assert residual.sum().item() == pytest.approx(-0.7 * (n_seq - n_eos), abs=1e-4)
            assert ((residual.abs() < 1e-4) | ((residual + 0.7).abs() < 1e-4)).all()  # 0 or the penalty, per row
            continue
        assert args == (0.9, 0.8)  # gae(rewards, values, mask, gamma, lam)
        kl_part = -0.3 * kl * mask
        last = mask.sum(1).long() - 1  # the last real token: the EOS, or the last one sampled
        at_last = got[torch.arange(n_seq), last] - kl_part[torch.arange(n_seq), last]
        rest = got - kl_part
        rest[torch.arange(n_seq), last] = 0.0
        assert rest.abs().max().item() < 1e-5  # only -kl_coef x k1 away from the last real token
        short = mask.sum(1) < mask.size(1)  # ended by an EOS before max_new_tokens: the score, no penalty
        torch.testing.assert_close(at_last[short], scores[short], atol=1e-5, rtol=0)
        assert (at_last - scores).sum().item() == pytest.approx(-0.7 * (n_seq - n_eos), abs=1e-4)
        n_short += int(short.sum())
    if algo == 'gae':
        assert 0 < n_short < 2 * 8  # responses of both kinds were checked
        # GAE's advantages whitened over the response tokens: mean 0 and variance 1 there (RLOO's are not)
        assert len(seen['whitened']) == 2
        for adv, mask in seen['whitened']:
            mean = (adv * mask).sum() / mask.sum()
            var = ((adv - mean) ** 2 * mask).sum() / (mask.sum() - 1)
            assert abs(mean.item()) < 1e-5 and var.item() == pytest.approx(1.0, abs=1e-3)
    else:
        assert seen['whitened'] == []


def test_a_char_tokenizer_with_a_gpt2_vocab_policy_is_one_line(tiny, tmp_path):
    """tokenizer=<a char-level meta.pkl> with a policy of GPT-2's vocabulary: the policy samples ids
    the 96 characters do not name, and decoding them was a KeyError traceback mid-rollout."""
    from test_reward import char_vocab
    n = char_vocab(tmp_path / 'meta.pkl')
    ppo_fails(tiny, tmp_path, ['--max_iters=1', '--batch_size=4', '--mini_batch_size=4', '--max_new_tokens=4',
                               f'--tokenizer={tmp_path / "meta.pkl"}'],
              f"error: {tiny / 'hf'} has vocab_size 50257, not the {n} characters of the char-level tokenizer")
