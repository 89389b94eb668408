"""Gradient checkpointing (model.py) and the memory planner (common.py): checkpointing changes no
number; the planner's parameter/gradient/optimizer bytes are exact counts of a real model, its
activation bytes match what autograd saves on CPU, it refuses a config that cannot fit and says
which flags would make it fit, and the gpt2-large configs are predicted to fit a 24 GB card."""
import glob
import os
import sys

import pytest
import torch

from common import (GiB, UserError, activation_bytes, check_fits, make_optimizer, memory_plan, param_counts,
                    plan_config, plan_for_script, script_defaults)
from conftest import run_python
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=100, block_size=64)
CARD = 24 * GiB  # RTX 4090D


def batch(B=2, T=64, seed=0, masked=False):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 100, (B, T), generator=g)
    targets = torch.randint(0, 100, (B, T), generator=g)
    mask = None
    if masked:  # left padding in row 0
        mask = torch.ones(B, T, dtype=torch.long)
        mask[0, :5] = 0
        targets[0, :5] = -1
    return idx, targets, mask


# ----------------------------------------------------------------------------------------------
# gradient checkpointing

def loss_and_grads(checkpointing, dropout, masked, lora=False, value_head=False):
    torch.manual_seed(0)
    extra = dict(lora_rank=4, lora_targets='attn,mlp', lora_dropout=0.1) if lora else {}
    model = GPT(GPTConfig(**TINY, dropout=dropout, gradient_checkpointing=checkpointing, value_head=value_head,
                          **extra)).train()
    idx, targets, mask = batch(masked=masked)
    torch.manual_seed(1)  # the dropout masks: the same draws with and without checkpointing
    logits, loss, values = model(idx, targets, attention_mask=mask, return_values=True) if value_head else \
        (*model(idx, targets, attention_mask=mask), None)
    if values is not None:
        loss = loss + values.pow(2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('dropout,masked,lora,value_head', [
    (0.0, False, False, False), (0.1, False, False, False), (0.1, True, False, False),
    (0.1, True, True, False), (0.0, True, False, True)])
def test_checkpointing_gives_identical_loss_and_gradients(dropout, masked, lora, value_head):
    loss0, grads0 = loss_and_grads(False, dropout, masked, lora, value_head)
    loss1, grads1 = loss_and_grads(True, dropout, masked, lora, value_head)
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and grads0
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=0, atol=1e-6, msg=name)


def test_checkpointing_only_when_a_backward_can_follow():
    model = GPT(GPTConfig(**TINY, gradient_checkpointing=True)).eval()
    idx = batch()[0]
    with torch.no_grad():  # no recomputation under no_grad, and generate's KV cache still works
        out = model.generate(idx[:, :8], 4, temperature=0)
    model.config.gradient_checkpointing = False
    with torch.no_grad():
        assert torch.equal(out, model.generate(idx[:, :8], 4, temperature=0))


# ----------------------------------------------------------------------------------------------
# the planner against a real model

@pytest.mark.parametrize('extra', [{}, dict(lora_rank=8, lora_targets='attn,mlp'), dict(lora_rank=4),
                                   dict(bias=False), dict(value_head=True)])
def test_parameter_gradient_optimizer_bytes_are_exact(extra):
    cfg = GPTConfig(**TINY, **extra)
    model = GPT(cfg)
    params = list(model.parameters())  # the tied wte/lm_head weight once
    trainable = [p for p in params if p.requires_grad]
    counts = param_counts(cfg)
    assert counts['total'] == sum(p.numel() for p in params)
    assert counts['trainable'] == sum(p.numel() for p in trainable)
    plan = memory_plan(cfg, 2, 64, dtype='float32', value_head=cfg.value_head)
    assert plan['weights'] == sum(p.numel() * p.element_size() for p in params)
    # real gradients and AdamW states after one step
    idx, targets, _ = batch()
    _, loss, values = model(idx, targets, return_values=True) if cfg.value_head else (*model(idx, targets), None)
    (loss + (values.mean() if values is not None else 0)).backward()
    opt = make_optimizer(trainable, 'adamw', 1e-3, (0.9, 0.95), 'cpu')
    opt.step()
    assert plan['gradients'] == sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != 'step')
    assert plan['optimizer'] == state_bytes


def test_gpt2_large_parameter_count():
    assert param_counts(dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024))['total'] == 774_030_080


def saved_bytes_of(model, loss_fn):
    """Sum of the unique storages autograd saves for backward while loss_fn() computes a loss, which
    is then backpropagated (parameters excluded: they are counted as weights)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn().backward()
    return sum(seen.values())


def saved_bytes(model, idx, targets, mask):
    """saved_bytes_of one LM forward pass of model.py's GPT."""
    return saved_bytes_of(model, lambda: model(idx, targets, attention_mask=mask)[1])


TOLERANCE = 0.25  # the planner's activation bytes vs the measurement; within 1 % without LoRA


@pytest.mark.parametrize('checkpointing', [False, True])
@pytest.mark.parametrize('masked', [False, True])
@pytest.mark.parametrize('extra', [{}, dict(lora_rank=4, lora_targets='attn,mlp'), dict(n_layer=4, n_embd=128)])
def test_activation_bytes_match_what_autograd_saves(checkpointing, masked, extra):
    # dropout 0: with dropout CPU SDPA falls back to the math kernel (s^2 matrices); CUDA's flash does not
    cfg = GPTConfig(**{**TINY, **extra}, gradient_checkpointing=checkpointing)
    model = GPT(cfg).train()
    idx, targets, mask = batch(masked=masked)
    measured = saved_bytes(model, idx, targets, mask)
    predicted = activation_bytes(cfg, 2, 64, 'float32', checkpointing, masked)['saved']
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)
    if not extra:
        assert abs(predicted - measured) <= 0.01 * measured, (predicted, measured)


def test_checkpointing_saves_most_activations_of_gpt2_large():
    large = dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024)
    full, ckpt = (activation_bytes(large, 1, 1024, 'bfloat16', c)['layers'] for c in (False, True))
    assert full == 36 * 1024 * (36 * 1280 + 4 * 20 + 16)  # 36 h + 4 a + 16 bytes a token a layer
    assert ckpt == 36 * 1024 * 4 * 1280 and ckpt < full / 8  # only each layer's fp32 input


# ----------------------------------------------------------------------------------------------
# refusing what cannot fit, and the project's configs

def test_planner_refuses_gpt2_large_fp32_batch_16_and_names_the_fixes():
    large = dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024)
    plan = memory_plan(large, 16, 1024, dtype='float32', optimizer='adamw')
    with pytest.raises(UserError) as e:
        check_fits(plan, CARD, 'config/x.py')
    msg = str(e.value)
    assert '\n' not in msg and 'gradient_checkpointing=True' in msg and 'batch_size=' in msg, msg
    # the advice is right: checkpointing keeps a larger micro-batch than no checkpointing does
    assert '--gradient_checkpointing=True --batch_size=' in msg
    with_ckpt = int(msg.split('--gradient_checkpointing=True --batch_size=')[1].split()[0])
    without = int(msg.split('--batch_size=')[1].split()[0])
    assert with_ckpt > without >= 1
    check_fits(memory_plan(large, with_ckpt, 1024, dtype='float32', gradient_checkpointing=True), CARD)


def test_eval_only_is_planned_but_not_refused(monkeypatch, capsys):
    """nanoGPT's config/eval_gpt2_large.py (eval_only, batch 8, gpt2-large) needs no gradients nor
    optimizer: the training step's plan (~33 GiB) is printed as an upper bound, not refused on a
    24 GB card; the same config training is refused."""
    import common
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(torch.cuda, 'get_device_properties', lambda d: type('P', (), {'total_memory': CARD})())
    args = ['--batch_size=8', '--eval_iters=500', '--wandb_log=False', '--init_from=gpt2-large']
    config = common.configure(common.script_defaults(os.path.join(ROOT, 'train.py')), args + ['--eval_only=True'])
    assert common.plan_memory('train.py', config, 'cuda')['total'] > CARD
    assert "eval_only: that is a training step's peak, an upper bound for an evaluation; not checked" in capsys.readouterr().out
    config = common.configure(common.script_defaults(os.path.join(ROOT, 'train.py')), args)
    with pytest.raises(UserError, match='needs ~'):
        common.plan_memory('train.py', config, 'cuda')


def test_dpo_advice_names_the_reference_flags():
    large = dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024)
    frozen = [('reference', large, 'float32', {"ref_dtype='bfloat16'": 'bfloat16', 'precompute_ref_logps=True': None})]
    plan = memory_plan(large, 2, 1024, frozen=frozen, rows_per_unit=2)
    with pytest.raises(UserError) as e:
        check_fits(plan, plan['total'] - 1 * GiB)
    assert "precompute_ref_logps=True" in str(e.value) and "ref_dtype='bfloat16'" in str(e.value)


def test_ppo_reward_model_placement_in_the_plan(monkeypatch):
    """reward_dtype='bfloat16' halves the reward model's bytes, reward_device='cpu' takes it off the
    GPU plan, and the advice for a config that does not fit names both."""
    monkeypatch.chdir(ROOT)
    plans = {flags: plan_config('config/ppo_gpt2large.py', list(flags))[2]
             for flags in [(), ("--reward_dtype=bfloat16",), ("--reward_device=cpu",)]}
    rm_bytes = (774_030_080 + 1280 + 1) * 4  # gpt2-large (counted exactly above) + Linear(1280, 1), fp32
    fp32, bf16, cpu = (plans[k]['frozen'] for k in plans)
    assert fp32 - bf16 == rm_bytes // 2 and fp32 - cpu == rm_bytes
    assert plans[("--reward_device=cpu",)]['total'] < plans[("--reward_dtype=bfloat16",)]['total'] < plans[()]['total']
    with pytest.raises(UserError) as e:
        check_fits(plans[()], plans[()]['total'] - 1 * GiB)
    assert "reward_dtype='bfloat16'" in str(e.value) and "reward_device='cpu'" in str(e.value)


def test_plan_of_a_char_level_model_from_scratch_uses_the_dataset_vocabulary(tmp_path, monkeypatch):
    """train.py from scratch takes vocab_size from data/<dataset>/meta.pkl; so does the planner."""
    import pickle
    os.makedirs(tmp_path / 'data' / 'shakespeare_char')
    with open(tmp_path / 'data' / 'shakespeare_char' / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': 65}, f)
    monkeypatch.chdir(tmp_path)
    config = os.path.join(ROOT, 'config', 'train_shakespeare_char.py')
    assert plan_config(config)[2]['inputs']['cfg']['vocab_size'] == 65
    assert plan_config(config, ['--dataset=other'])[2]['inputs']['cfg']['vocab_size'] == 50304  # no meta.pkl


def test_plan_of_a_resumed_train_run_uses_the_checkpoint_block_size(tmp_path):
    """train.py with init_from='resume' trains at the checkpoint's block_size whatever block_size the
    config says (train.py: block_size = model.config.block_size); the plan's sequence must be that one."""
    from dataclasses import asdict
    cfg = GPTConfig(**TINY)  # block_size 64
    torch.save({'model_args': asdict(cfg)}, tmp_path / 'ckpt.pt')
    defaults = script_defaults(os.path.join(ROOT, 'train.py'))
    for block_size in (1024, 32):  # the default, and a smaller one
        config = {**defaults, 'init_from': 'resume', 'out_dir': str(tmp_path), 'block_size': block_size}
        plan = plan_for_script('train.py', config)
        assert plan['inputs']['seq_len'] == 64 and plan['inputs']['cfg']['block_size'] == 64, block_size
        assert plan['total'] == memory_plan(plan['inputs']['cfg'], defaults['batch_size'], 64, dtype='bfloat16')['total']


def test_plan_of_lora_rank_0_from_a_lora_checkpoint_trains_every_weight(tmp_path):
    """dpo_train.py and ppo_train.py merge a LoRA init_from's adapters when lora_rank=0 and train
    every weight (DPO/PPO also keep a full reference copy): the plan counts that, not the checkpoint's
    adapters only (it predicted a fit, then the run ran out of memory)."""
    from dataclasses import asdict
    lora_cfg = GPTConfig(**TINY, lora_rank=4)
    torch.save({'model_args': asdict(lora_cfg)}, tmp_path / 'ckpt.pt')
    full = memory_plan(GPTConfig(**TINY), 1, 64, dtype='bfloat16')
    for script, extra in [('dpo_train.py', {'precompute_ref_logps': False}), ('ppo_train.py', {'reward_fn': 'r:f'}),
                          ('train.py', {}), ('reward_train.py', {})]:  # train/reward_train: common.run_adapters too
        config = {**script_defaults(os.path.join(ROOT, script)), 'init_from': str(tmp_path), 'block_size': 64, **extra}
        plan = plan_for_script(script, config)
        assert plan['inputs']['cfg'].get('lora_rank', 0) == 0, script
        assert plan['gradients'] >= full['gradients'] and plan['optimizer'] >= full['optimizer'], script  # (+ PPO's value head)
        if script in ('dpo_train.py', 'ppo_train.py'):
            assert any(f[0] == 'reference' for f in plan['inputs']['frozen']), script


def test_dpo_plan_with_lora_and_ref_from_counts_the_reference(monkeypatch):
    """LoRA DPO's reference is the adapters-off policy, unless ref_from names another model: then
    dpo_train.py loads it as a frozen copy (ref_dtype), and the plan must count it (it counted none:
    2.9 GiB too few for gpt2-large in fp32). Its LoRA advice keeps that reference too."""
    monkeypatch.chdir(ROOT)
    lora = ['--precompute_ref_logps=False', '--lora_rank=16', '--lora_targets=attn,mlp']
    without = plan_config('config/dpo_gpt2large.py', lora)[2]
    with_ref = plan_config('config/dpo_gpt2large.py', lora + ['--ref_from=gpt2-large'])[2]
    assert without['frozen'] == 0 and with_ref['inputs']['lora_frees'] == ()
    assert with_ref['frozen'] == (774_030_080 + 1280 + 1) * 4  # gpt2-large in fp32 (+ the planner's value head)


def test_lora_advice_drops_the_reference_that_lora_does_not_load(monkeypatch):
    """Full-finetune PPO keeps a reference copy; with LoRA the reference is the adapters-off policy. The
    advice priced '--lora_rank=16' with the copy still loaded, so on a card where LoRA alone fits it
    was not offered."""
    monkeypatch.chdir(ROOT)
    full = plan_config('config/ppo_gpt2large.py', ['--lora_rank=0', '--ref_dtype=float32'])[2]
    lora = plan_config('config/ppo_gpt2large.py', ['--lora_rank=16', '--lora_targets=attn,mlp'])[2]
    assert full['total'] > lora['total']
    with pytest.raises(UserError) as e:
        check_fits(full, lora['total'] + GiB // 10)
    assert f"--lora_rank=16 --lora_targets=attn,mlp ({lora['total'] / GiB:.1f} GiB)" in str(e.value)


def test_rollout_and_weight_copy_terms_by_hand():
    """The rollout phase is the larger of the KV cache (freed when generate returns) and the no-grad
    log-probs/entropies after it (20 bytes x V per response token), plus the autocast copies of the
    trainable weights (cached in either; LoRA: the adapters' only). It was their sum without the
    copies. With LoRA and gradient checkpointing the 16-bit copies kept are lm_head's, one layer's and
    the adapters' (frozen weights are cast at each use, not cached, and checkpointed layers keep none)."""
    h, L, V, T = 64, 2, 100, 64
    shape = dict(n_layer=L, n_head=4, n_embd=h, vocab_size=V, block_size=T)
    matmul = V * h + L * 12 * h * h
    kv = 2 * L * 8 * T * h * 2  # 8 sequences of 64 tokens, bf16
    for kv_logit_rows in (8 * 16, 8 * 64):  # the KV cache larger / the log-probs larger
        plan = memory_plan(shape, 4, T, kv_batch=8, kv_len=T, kv_logit_rows=kv_logit_rows)
        assert plan['kv_cache'] == max(kv, 20 * V * kv_logit_rows) + 2 * matmul
    lora = {**shape, 'lora_rank': 4, 'lora_targets': 'attn,mlp'}
    adapters = L * 4 * (6 * h + 10 * h)
    plan = memory_plan(lora, 4, T, kv_batch=8, kv_len=T, kv_logit_rows=8 * 16)
    assert plan['kv_cache'] == max(kv, 20 * V * 8 * 16) + 2 * adapters
    assert plan['autocast'] == 2 * (matmul + adapters)  # without checkpointing autograd saves every copy
    assert memory_plan(lora, 4, T, gradient_checkpointing=True)['autocast'] == 2 * (V * h + 12 * h * h + adapters)
    assert memory_plan(shape, 4, T, gradient_checkpointing=True)['autocast'] == 2 * matmul  # trainable: cached
    assert memory_plan(shape, 4, T)['kv_cache'] == 0  # no rollout


def test_reward_plan_counts_lm_logits_of_the_chosen_rows_only(tmp_path):
    """reward_train.py's LM term (chosen_lm_coef > 0) runs lm_head on the chosen half of the 2B rows,
    while the value head scores all of them: the plan's logit rows are B x T and its activation bytes
    match what autograd saves for the script's own PairLoss."""
    from dataclasses import asdict
    from conftest import load_definitions
    PairLoss = load_definitions(os.path.join(ROOT, 'reward_train.py'), 'PairLoss').PairLoss
    cfg = GPTConfig(**{**TINY, 'vocab_size': 2000}, value_head=True)  # a vocabulary large enough to see the logits
    torch.save({'model_args': asdict(cfg)}, tmp_path / 'ckpt.pt')
    config = {**script_defaults(os.path.join(ROOT, 'reward_train.py')), 'init_from': str(tmp_path), 'batch_size': 2,
              'block_size': 64, 'chosen_lm_coef': 0.5, 'dtype': 'float32'}
    plan = plan_for_script('reward_train.py', config)
    assert plan['inputs']['batch_size'] == 4 and plan['inputs']['logit_rows'] == 2 * 64
    assert plan['logits'] == (4 + 12) * 2000 * 2 * 64
    torch.manual_seed(0)
    model = PairLoss(GPT(cfg).train(), 0.5)
    ids = torch.randint(0, 2000, (4, 64))
    ones = torch.ones(4, 64, dtype=torch.long)
    measured = saved_bytes_of(model, lambda: model(ids, ones, ones.float(), torch.zeros(2))[0])
    i = plan['inputs']
    predicted = activation_bytes(i['cfg'], i['batch_size'], i['seq_len'], 'float32', logit_rows=i['logit_rows'],
                                 value_head=True, value_rows=i['value_rows'])['saved']
    assert abs(predicted - measured) <= 0.05 * measured, (predicted, measured)


GPT2_LARGE_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'config', '*gpt2large*.py'))) + \
    [os.path.join(ROOT, 'config', 'finetune_shakespeare.py')]


@pytest.mark.parametrize('path', GPT2_LARGE_CONFIGS, ids=os.path.basename)
def test_gpt2_large_configs_are_predicted_to_fit_24gb(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # out_dir / init_from paths are relative to the repository
    script, config, plan = plan_config(os.path.relpath(path, ROOT))
    assert plan['inputs']['cfg']['n_embd'] == 1280, script  # gpt2-large, resolved without weights
    assert check_fits(plan, CARD) is plan, f"{path}: {plan['total'] / GiB:.1f} GiB"


def test_bench_plan_prints_the_table_without_running_anything():
    out = run_python([sys.executable, 'bench.py', '--plan', 'config/dpo_gpt2large.py', '--batch_size=2'],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'dpo_train.py' in out.stdout and 'predicted peak' in out.stdout and 'activations' in out.stdout
    bad = run_python([sys.executable, 'bench.py', '--plan', 'config/finetune_shakespeare.py', '--batch_size=16',
                          '--dtype=float32'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith('error: ') and 'gradient_checkpointing' in bad.stderr
    for args, message in ((['--plan'], '--plan needs a config file'),
                          (['--plan', 'config/dpo_gpt2large.py', '--plan_gb=abc'], '--plan_gb must be a positive number')):
        p = run_python([sys.executable, 'bench.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and p.stderr.strip().splitlines() == [p.stderr.strip()], p.stderr
        assert p.stderr.startswith(f'error: {message}'), p.stderr


def test_plan_config_reads_configs_as_the_scripts_do_and_runs_no_other_file(tmp_path):
    """bench.py --plan runs the planned config as the script would (its defaults visible:
    warmup_iters = lr_decay_iters // 10), a file that is not Python is one line, and looking for the
    config whose out_dir makes an untrained init_from reads the files beside it, never runs them (a
    launcher there ran, side effects and all)."""
    from common import plan_config
    d = tmp_path / 'exp'
    d.mkdir()
    (d / 'dpo.py').write_text("beta = 0.1\ninit_from = 'out-sft'\nwarmup_iters = lr_decay_iters // 10\n")
    (d / 'sft.py').write_text("out_dir = 'out-sft'\ninit_from = 'gpt2-medium'\nlr_decay_iters = 10 * 5\n")
    marker = tmp_path / 'launched'
    (d / 'launch.py').write_text(f"open({str(marker)!r}, 'w').write('ran')\nout_dir = 'out-launch'\n")
    script, config, plan = plan_config(str(d / 'dpo.py'))
    assert script == 'dpo_train.py' and config['warmup_iters'] == config['lr_decay_iters'] // 10
    assert plan['inputs']['cfg']['n_layer'] == 24  # out-sft: sft.py's init_from, gpt2-medium
    assert not marker.exists()
    (d / 'notes.md').write_text("# plan\nrun it: python dpo_train.py exp/dpo.py\n")
    with pytest.raises(UserError, match=r'notes.md, line 2: syntax error'):
        plan_config(str(d / 'notes.md'))


# ----------------------------------------------------------------------------------------------
# the optimizer flag

def test_adamw8bit_is_a_one_line_error_without_cuda():
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(UserError, match="adamw8bit.*CUDA"):
        make_optimizer(params, 'adamw8bit', 1e-3, (0.9, 0.95), 'cpu')
    with pytest.raises(UserError, match="adamw, adamw8bit"):
        make_optimizer(params, 'sgd', 1e-3, (0.9, 0.95), 'cpu')


def test_adamw8bit_without_bitsandbytes_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'bitsandbytes', None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install bitsandbytes"):
        make_optimizer([torch.nn.Parameter(torch.zeros(3))], 'adamw8bit', 1e-3, (0.9, 0.95), 'cuda')


def test_smaller_batch_advice_for_a_reward_model_rescales_its_value_and_logit_rows():
    """A reward plan's rows (2 per pair) score the value head on every token and the LM term's logits
    on the chosen half: the advice's smaller micro-batches and shorter blocks are planned with both
    rescaled, i.e. exactly as memory_plan would plan that smaller config."""
    from common import fit_remedies
    # LoRA, checkpointing and 8-bit AdamW already on, so the advice can only be a smaller batch or block
    large = dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257, block_size=1024, lora_rank=16,
                 lora_targets='attn,mlp')
    pairs, T = 8, 1024

    def reward_plan(pairs, T):
        return memory_plan(large, 2 * pairs, T, value_head=True, value_rows=2 * pairs * T, logit_rows=pairs * T,
                           rows_per_unit=2, gradient_checkpointing=True, optimizer='adamw8bit')
    fits = fit_remedies(reward_plan(pairs, T), reward_plan(2, T)['total'] + 1)
    assert fits == [('--batch_size=2', reward_plan(2, T)['total'])]  # the largest micro-batch that fits
    fits = fit_remedies(reward_plan(1, T), reward_plan(1, 512)['total'] + 1)  # 1 pair: no smaller batch
    assert fits == [('--block_size=512', reward_plan(1, 512)['total'])]


def test_plan_of_a_checkpoint_whose_config_leaves_init_from_at_the_default(tmp_path, monkeypatch):
    """A checkpoint not trained yet is sized from the config/*.py whose out_dir writes it; a config that
    leaves init_from at the script's default (demo_pretrain.py: train.py's 'scratch') was skipped, so
    bench.py --plan config/demo_reward.py said no config writes 'out-demo/pretrain'. The scratch model's
    vocabulary is its dataset's meta.pkl, as train.py's."""
    import pickle
    os.makedirs(tmp_path / 'config')
    os.makedirs(tmp_path / 'data' / 'chars')
    (tmp_path / 'config' / 'pre.py').write_text("out_dir = 'out/pre'\ndataset = 'chars'\nn_layer = 3\nn_embd = 96\n")
    with open(tmp_path / 'data' / 'chars' / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': 65}, f)
    monkeypatch.chdir(tmp_path)
    from common import model_shape
    shape = model_shape('out/pre')
    assert (shape['n_layer'], shape['n_embd'], shape['n_head'], shape['vocab_size']) == (3, 96, 12, 65)
    monkeypatch.chdir(ROOT)
    script, _, plan = plan_config('config/demo_reward.py')
    assert script == 'reward_train.py' and plan['inputs']['cfg']['n_embd'] == 128  # demo_pretrain's model


EXPECTED_SCRIPT = {'demo_dpo': 'dpo_train.py', 'demo_grpo': 'ppo_train.py', 'demo_ppo': 'ppo_train.py',
                   'demo_reward': 'reward_train.py', 'dpo_gpt2large': 'dpo_train.py', 'dpo_tiny': 'dpo_train.py',
                   'grpo_gpt2large': 'ppo_train.py', 'ppo_gpt2large': 'ppo_train.py', 'ppo_tiny': 'ppo_train.py',
                   'reward_gpt2large': 'reward_train.py', 'reward_tiny': 'reward_train.py'}  # the rest: train.py


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'config', '*.py'))), ids=os.path.basename)
def test_every_config_plans_for_its_script(path, monkeypatch):
    """bench.py --plan config/X.py: every shipped config is read as its own script's (which
    configure() checks key by key: an unknown key is an error) and its model's size is known without
    weights (dpo_tiny.py was planned as reward_train.py; the demo's later stages could not be sized)."""
    monkeypatch.chdir(ROOT)
    name = os.path.basename(path)[:-3]
    script, _, plan = plan_config(os.path.relpath(path, ROOT))
    assert script == EXPECTED_SCRIPT.get(name, 'train.py') and plan['total'] > 0
