"""LoRA in model.py: zero-init adapters change nothing, only adapters train, disable_adapters gives
the base model back exactly, merge_lora keeps the function, and checkpoints round-trip."""
import math
import re

import pytest
import torch
import torch.nn as nn

from model import GPT, GPTConfig, LoRALinear, ModelLoadError

VOCAB = 101  # tiny_hf's vocabulary (conftest.make_hf_gpt2)
TINY = dict(n_layer=2, n_head=2, n_embd=16, vocab_size=50, block_size=16)


def is_adapter(name):
    return name.endswith(('.lora_A', '.lora_B'))


def random_batch(seed=0, B=2, T=12):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (B, T), generator=g)
    return idx, torch.roll(idx, -1, dims=1)


def train_steps(model, steps=3, lr=1e-2):
    """A few AdamW steps on random tokens, so every lora_B moves off zero."""
    model.train()
    opt = model.configure_optimizers(0.0, lr, (0.9, 0.95), 'cpu')
    for step in range(steps):
        idx, targets = random_batch(seed=100 + step)
        model(idx, targets)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope='module')
def base(tiny_hf):
    return GPT.from_pretrained(tiny_hf[0]).eval()


def test_lora_linear_is_linear_plus_scaled_low_rank_update():
    torch.manual_seed(0)
    layer = LoRALinear(6, 5, bias=True, rank=2, alpha=8.0, dropout=0.0)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 6)
    expected = x @ layer.weight.T + layer.bias + (x @ layer.lora_A.T @ layer.lora_B.T) * (8.0 / 2)
    torch.testing.assert_close(layer(x), expected)
    assert layer.lora_A.shape == (2, 6) and layer.lora_B.shape == (5, 2)
    # the Linear's own parameters keep nn.Linear's names: plain state dicts load unchanged
    assert set(nn.Linear(6, 5).state_dict()) < set(layer.state_dict())


@pytest.mark.parametrize('targets', ['attn', 'attn,mlp'])
def test_zero_init_adapters_leave_logits_identical(tiny_hf, base, targets):
    model = GPT.from_pretrained(tiny_hf[0], lora_rank=4, lora_targets=targets).eval()
    assert all(torch.all(p == 0) for n, p in model.named_parameters() if n.endswith('lora_B'))
    assert any(torch.any(p != 0) for n, p in model.named_parameters() if n.endswith('lora_A'))
    idx, _ = random_batch()
    assert torch.equal(model(idx)[0], base(idx)[0])


def test_disable_adapters_gives_the_base_model_back(tiny_hf, base):
    model = GPT.from_pretrained(tiny_hf[0], lora_rank=4, lora_targets='attn,mlp')
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not is_adapter(n)}
    train_steps(model)
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if not is_adapter(n))
    idx, _ = random_batch(seed=1)
    ref, adapted = base(idx)[0], model(idx)[0]
    assert not torch.allclose(adapted, ref, atol=1e-3)  # training moved the adapters
    with model.disable_adapters():
        assert torch.equal(model(idx)[0], ref)
        with model.disable_adapters():  # nested: the inner exit restores "disabled", not "enabled"
            pass
        assert torch.equal(model(idx)[0], ref)
    assert torch.equal(model(idx)[0], adapted)
    with pytest.raises(RuntimeError, match='boom'):
        with model.disable_adapters():
            raise RuntimeError('boom')
    assert torch.equal(model(idx)[0], adapted)  # restored despite the exception


def test_disable_adapters_without_adapters_is_an_error(base):
    with pytest.raises(ValueError, match='no LoRA adapters'):
        with base.disable_adapters():
            pass


def test_merge_lora_keeps_the_function_and_leaves_a_plain_gpt(tiny_hf, base, tmp_path):
    model = train_steps(GPT.from_pretrained(tiny_hf[0], lora_rank=4, lora_targets='attn,mlp'))
    idx, _ = random_batch(seed=2)
    adapted = model(idx)[0]
    merged = model.merge_lora()
    assert merged is model
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert merged.config.lora_rank == 0
    assert all(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(merged(idx)[0], adapted, atol=1e-5, rtol=0)
    assert not torch.allclose(merged(idx)[0], base(idx)[0], atol=1e-3)  # the adapters were folded in
    # the export is a plain GPT-2 checkpoint: same keys as the base, loads without LoRA
    assert set(merged.state_dict()) == set(base.state_dict())
    torch.save({'model': merged.state_dict(), 'model_args': vars(merged.config)}, tmp_path / 'ckpt.pt')
    loaded, _ = GPT.from_checkpoint(str(tmp_path))
    assert torch.equal(loaded.eval()(idx)[0], merged(idx)[0])


def test_only_adapters_get_gradients(tiny_hf):
    model = GPT.from_pretrained(tiny_hf[0], lora_rank=4, lora_targets='attn,mlp')
    idx, targets = random_batch()
    model(idx, targets)[1].backward()
    for n, p in model.named_parameters():
        assert p.requires_grad == is_adapter(n), n
        if not is_adapter(n):
            assert p.grad is None, n
    A = [p for n, p in model.named_parameters() if n.endswith('lora_A')]
    B = [p for n, p in model.named_parameters() if n.endswith('lora_B')]
    assert len(A) == len(B) == 2 * 4  # 2 layers x (c_attn, attn.c_proj, c_fc, mlp.c_proj)
    # step 0: B = 0, so dL/dA = B^T (...) is exactly zero while dL/dB is not
    assert all(p.grad.abs().sum() > 0 for p in B)
    assert all(torch.all(p.grad == 0) for p in A)
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), 'cpu')
    assert sum(p.numel() for g in opt.param_groups for p in g['params']) == sum(p.numel() for p in A + B)
    opt.step()
    opt.zero_grad(set_to_none=True)
    model(idx, targets)[1].backward()
    assert all(p.grad.abs().sum() > 0 for p in A + B)


def test_value_head_trains_with_lora(tiny_hf):
    model = GPT.from_pretrained(tiny_hf[0], value_head=True, lora_rank=4)
    idx, targets = random_batch()
    _, loss, values = model(idx, targets, return_values=True)
    (loss + (values - 1).pow(2).mean()).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert {'value_head.weight', 'value_head.bias'} <= trainable
    assert with_grad == trainable
    assert all(is_adapter(n) or n.startswith('value_head.') for n in trainable)
    assert model.value_head.weight.grad.abs().sum() > 0


def test_crop_block_size_keeps_the_base_frozen(tiny_hf):
    model = GPT.from_pretrained(tiny_hf[0], block_size=16, lora_rank=4)
    assert model.transformer.wpe.weight.shape[0] == 16
    assert not model.transformer.wpe.weight.requires_grad


@pytest.mark.parametrize('targets, attn, mlp', [('attn', True, False), ('mlp', False, True),
                                                ('attn,mlp', True, True), (' mlp , attn ', True, True)])
def test_lora_targets_choose_the_layers(targets, attn, mlp):
    model = GPT(GPTConfig(**TINY, lora_rank=2, lora_targets=targets))
    for block in model.transformer.h:
        assert isinstance(block.attn.c_attn, LoRALinear) == attn
        assert isinstance(block.attn.c_proj, LoRALinear) == attn
        assert isinstance(block.mlp.c_fc, LoRALinear) == mlp
        assert isinstance(block.mlp.c_proj, LoRALinear) == mlp
    assert type(model.lm_head) is nn.Linear
    n_adapted = sum(isinstance(m, LoRALinear) for m in model.modules())
    assert n_adapted == TINY['n_layer'] * 2 * (attn + mlp)
    # without LoRA the targets change nothing: plain Linears everywhere
    assert not any(isinstance(m, LoRALinear) for m in GPT(GPTConfig(**TINY, lora_targets=targets)).modules())


def test_bad_lora_targets_are_a_clear_error(tiny_hf):
    with pytest.raises(ValueError, match="unknown target 'atn'"):
        GPTConfig(**TINY, lora_rank=2, lora_targets='attn,atn')
    with pytest.raises(ValueError, match="unknown target 'qkv'"):
        GPT.from_pretrained(tiny_hf[0], lora_rank=2, lora_targets='qkv')
    with pytest.raises(ValueError, match='at least one'):
        GPTConfig(**TINY, lora_rank=2, lora_targets='')
    with pytest.raises(ValueError, match='lora_rank'):
        GPTConfig(**TINY, lora_rank=-1)
    # the scripts' keys (common.lora_overrides): one-line UserErrors, not GPTConfig's ValueError traceback
    from common import UserError, lora_overrides
    for args, message in (((-2, 16.0, 0.0, 'attn'), 'lora_rank must be >= 0 (0: no LoRA), got -2'),
                          ((4, 16.0, 0.0, ''), "lora_rank=4 needs at least one of lora_targets (attn, mlp), got ''"),
                          ((4, 0.0, 0.0, 'attn'), 'lora_alpha must be > 0 with lora_rank=4')):
        with pytest.raises(UserError, match=re.escape(message)):
            lora_overrides(*args)
    assert lora_overrides(0, 0.0, 0.0, '') == {}  # no LoRA: the other keys do not matter


def test_lora_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, lora_rank=4, lora_alpha=8.0, lora_targets='attn,mlp')).eval()
    for n, p in model.named_parameters():
        if n.endswith('lora_B'):
            nn.init.normal_(p)  # nonzero adapters, so a lost or mis-scaled adapter shows
    torch.save({'model': model.state_dict(), 'model_args': vars(model.config)}, tmp_path / 'ckpt.pt')
    loaded, _ = GPT.from_checkpoint(str(tmp_path))
    loaded.eval()
    assert loaded.config.lora_rank == 4 and loaded.config.lora_alpha == 8.0
    assert loaded.config.lora_targets == 'attn,mlp'
    idx = torch.randint(0, TINY['vocab_size'], (2, 9))
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    assert isinstance(GPT.from_pretrained(str(tmp_path)), GPT)  # and through from_pretrained


def test_lora_loading_tolerates_missing_adapters_only(tmp_path):
    plain = GPT(GPTConfig(**TINY))
    lora = GPT(GPTConfig(**TINY, lora_rank=4))
    lora.load_state_dict_checked(plain.state_dict(), 'plain')  # adapters keep their init
    assert torch.equal(lora.transformer.h[0].attn.c_attn.weight, plain.transformer.h[0].attn.c_attn.weight)
    assert torch.all(lora.transformer.h[0].attn.c_attn.lora_B == 0)
    sd = plain.state_dict()
    del sd['transformer.h.1.mlp.c_fc.weight']
    with pytest.raises(ModelLoadError, match=r'missing transformer\.h\.1\.mlp\.c_fc\.weight'):
        lora.load_state_dict_checked(sd, 'partial')
    with pytest.raises(ModelLoadError, match=r'unexpected transformer\.h\.0\.attn\.c_attn\.lora_A'):
        plain.load_state_dict_checked(lora.state_dict(), 'lora ckpt')  # adapters need lora_rank > 0
    lora8 = GPT(GPTConfig(**TINY, lora_rank=8))
    with pytest.raises(ModelLoadError, match='shape mismatch'):
        lora8.load_state_dict_checked(lora.state_dict(), 'rank 4')
    # a value head + LoRA checkpoint round-trips with a trainable head
    vh = GPT(GPTConfig(**TINY, lora_rank=4, value_head=True))
    nn.init.normal_(vh.value_head.weight)
    torch.save({'model': vh.state_dict(), 'model_args': vars(vh.config)}, tmp_path / 'ckpt.pt')
    loaded, _ = GPT.from_checkpoint(str(tmp_path))
    assert loaded.value_head.weight.requires_grad and loaded.value_head.bias.requires_grad
    assert torch.equal(loaded.value_head.weight, vh.value_head.weight)


def test_lora_dropout_is_random_in_train_mode_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, lora_rank=4, lora_dropout=0.5))
    for n, p in model.named_parameters():
        if n.endswith('lora_B'):
            nn.init.normal_(p)  # with B = 0 the adapter path would be zero whatever the dropout
    idx = torch.randint(0, TINY['vocab_size'], (2, 9))
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    # the base path has no dropout (config.dropout = 0): disabled adapters are deterministic in train
    model.train()
    with model.disable_adapters():
        assert torch.equal(model(idx)[0], model(idx)[0])
    assert math.isclose(model.transformer.h[0].attn.c_attn.scale, 16.0 / 4)  # alpha / rank


def test_with_new_adapters_keeps_the_trained_model_as_the_adapters_off_reference():
    """A model with trained adapters (a LoRA SFT checkpoint) given fresh adapters for DPO/PPO: the
    function is unchanged (new B = 0), and with the new adapters disabled it is still that model,
    not its pre-adapter base; the new rank and targets apply, and only the new adapters train."""
    torch.manual_seed(0)
    sft = GPT(GPTConfig(**TINY, lora_rank=4, lora_alpha=8.0, lora_targets='attn'))
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if n.endswith('lora_B'):
                p.normal_(0, 0.3)
    sft.eval()
    idx = torch.randint(0, TINY['vocab_size'], (2, 12))
    with torch.no_grad():
        want = sft(idx)[0]
        with sft.disable_adapters():
            pre_sft_base = sft(idx)[0]
    assert (want - pre_sft_base).abs().max() > 1e-3  # the adapters are trained
    new = sft.with_new_adapters(lora_rank=2, lora_alpha=4.0, lora_dropout=0.0, lora_targets='attn,mlp').eval()
    with torch.no_grad():
        torch.testing.assert_close(new(idx)[0], want, atol=1e-5, rtol=0)
        with new.disable_adapters():
            torch.testing.assert_close(new(idx)[0], want, atol=1e-5, rtol=0)
    assert new.config.lora_rank == 2 and new.transformer.h[0].mlp.c_fc.lora_A.shape == (2, TINY['n_embd'])
    assert all(p.requires_grad == is_adapter(n) for n, p in new.named_parameters())


def test_run_adapters_for_dpo_and_ppo(tiny_hf):
    """common.run_adapters, DPO's and PPO's policy from a LoRA SFT model: with lora_rank > 0 fresh
    adapters whose adapters-off model is the SFT model itself; with lora_rank 0 its adapters merged
    and every weight trainable (before, its adapters came along under a frozen base)."""
    from common import lora_overrides, run_adapters
    idx = random_batch()[0]

    def sft_model():
        torch.manual_seed(1)  # the same lora_A init and trained lora_B at every call
        m = GPT.from_pretrained(tiny_hf[0], lora_rank=4, lora_alpha=8.0)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.endswith('lora_B'):
                    p.normal_(0, 0.3)  # trained adapters: the SFT model differs from its base
        return m.eval()

    expected = sft_model()(idx)[0]
    notes = []
    full = run_adapters(sft_model(), {}, 'sft', notes.append).eval()
    assert full.config.lora_rank == 0 and all(p.requires_grad for p in full.parameters())
    assert notes == ['sft has LoRA adapters; lora_rank=0: merged into its weights, every weight trains']
    torch.testing.assert_close(full(idx)[0], expected, atol=1e-5, rtol=0)
    lora = run_adapters(sft_model(), lora_overrides(2, 4.0, 0.0, 'attn'), 'sft', notes.append).eval()
    assert lora.config.lora_rank == 2 and len(notes) == 1
    with torch.no_grad(), lora.disable_adapters():
        torch.testing.assert_close(lora(idx)[0], expected, atol=1e-5, rtol=0)
    plain = GPT.from_pretrained(tiny_hf[0])
    assert run_adapters(plain, {}, 'gpt2', notes.append) is plain and len(notes) == 1


@pytest.mark.parametrize('script', ['train.py', 'reward_train.py'])
def test_train_and_reward_train_from_a_lora_checkpoint(tmp_path, script):
    """train.py and reward_train.py start from a LoRA SFT checkpoint as DPO and PPO do (common.run_adapters):
    with lora_rank=0 its adapters are merged and every weight trains (before: its adapters were the only
    weights that trained, under a frozen base, and the checkpoint stayed a LoRA one); with lora_rank > 0
    and another lora_alpha the run starts from the checkpoint's function, fresh adapters on top (before:
    its trained adapters were loaded at the run's scale, alpha 16 / r instead of 4 / r: another model)."""
    import json
    import os
    import sys
    from dataclasses import asdict
    from conftest import ROOT, make_hf_gpt2, run_python
    make_hf_gpt2(str(tmp_path / 'hf'), vocab_size=50257, n_positions=64)
    torch.manual_seed(0)
    sft = GPT.from_pretrained(str(tmp_path / 'hf'), lora_rank=2, lora_alpha=4.0, lora_targets='attn,mlp')
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if n.endswith('lora_B'):
                p.normal_(0, 0.3)  # trained adapters
    (tmp_path / 'lora').mkdir()
    torch.save({'model': sft.state_dict(), 'model_args': asdict(sft.config)}, tmp_path / 'lora' / 'ckpt.pt')
    merged = sft.merge_lora().eval()
    if script == 'train.py':
        records = [{'prompt': f"\n\nHuman: say {w}\n\nAssistant:", 'response': f" {w}"} for w in 'abcdefghijklmnopqrst']
        (tmp_path / 'data.jsonl').write_text('\n'.join(json.dumps(r) for r in records))
        args = ['--sft_data=data.jsonl', '--compile=False', '--batch_size=4', '--val_fraction=0.2', '--eval_iters=1',
                '--warmup_iters=0']
    else:
        records = [{'prompt': f"\n\nHuman: say {w}\n\nAssistant:", 'chosen': f" {w}", 'rejected': ' no'}
                   for w in 'abcdefghijklmnopqrst']
        (tmp_path / 'data.jsonl').write_text('\n'.join(json.dumps(r) for r in records))
        args = ['--pref_data=data.jsonl', '--pref_val_data=', '--val_fraction=0.2', '--batch_size=4',
                '--eval_iters=1', '--warmup_iters=0', '--norm_samples=4']
    args += ['--init_from=lora', '--device=cpu', '--block_size=32', '--gradient_accumulation_steps=1', '--max_iters=1',
             '--eval_interval=1']

    def run(out, *extra):
        p = run_python([sys.executable, os.path.join(ROOT, script), *args, f'--out_dir={out}', *extra], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout, GPT.from_checkpoint(str(tmp_path / out / 'ckpt.pt'))[0].eval()

    out, full = run('full', '--lora_rank=0', '--learning_rate=1e-2', '--max_iters=2', '--eval_interval=2')  # reward:
    # step 0 moves only the zero-initialised value head
    assert 'lora has LoRA adapters; lora_rank=0: merged into its weights, every weight trains' in out
    assert full.config.lora_rank == 0
    w = 'transformer.h.0.mlp.c_fc.weight'
    assert not torch.allclose(full.state_dict()[w], merged.state_dict()[w])  # a base weight trained
    out, lora = run('new', '--lora_rank=2', '--lora_alpha=16', '--learning_rate=0', '--min_lr=0')
    assert lora.config.lora_rank == 2 and lora.config.lora_alpha == 16
    n_train = sum(p.numel() for p in lora.parameters() if p.requires_grad)  # (reward_train: + the value head)
    summary = f"LoRA rank 2 on {lora.config.lora_targets}: {n_train:,} trainable parameters"
    assert f"{summary} of {lora.get_num_params():,}" in out
    idx = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lora(idx)[0], merged(idx)[0], atol=1e-5, rtol=0)  # the checkpoint's function
