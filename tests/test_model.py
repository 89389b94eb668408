"""model.py against Hugging Face GPT-2 on the same weights, and generate's contracts."""

import json
import os

import pytest
import torch

from conftest import ROOT
from model import GPT, GPTConfig, IGNORE_INDEX, ModelLoadError, positions_from_mask, sample_from_probs, top_k_top_p_filter

VOCAB = 101  # tiny_hf's vocabulary (conftest.make_hf_gpt2)


def left_padded_batch(seed=0, lengths=(10, 7, 3), pad_id=0):
    """Prompts of different lengths, left-padded to the longest, with their attention mask."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    idx = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        idx[i, T - n:] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[i, T - n:] = 1
    return idx, mask


@pytest.fixture(scope='module')
def ours(tiny_hf):
    return GPT.from_pretrained(tiny_hf[0]).eval()


def test_logits_equal_hf(ours, tiny_hf):
    hf = tiny_hf[1]
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    logits, loss = ours(idx)
    assert loss is None and logits.shape == (2, 16, VOCAB)
    torch.testing.assert_close(logits, hf(idx).logits, atol=1e-4, rtol=0)


def test_logits_equal_hf_left_padded(ours, tiny_hf):
    hf = tiny_hf[1]
    idx, mask = left_padded_batch()
    logits, _ = ours(idx, attention_mask=mask)
    ref = hf(idx, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], ref[real], atol=1e-4, rtol=0)
    # and each row's real tokens get the logits of the same row alone, unpadded
    for i in range(idx.size(0)):
        alone, _ = ours(idx[i:i + 1][mask[i:i + 1].bool()][None])
        torch.testing.assert_close(logits[i][real[i]], alone[0], atol=1e-5, rtol=0)
    assert torch.isfinite(logits).all()  # padding queries are not NaN either


def test_loss_ignores_masked_targets(ours):
    idx = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2))
    targets = torch.roll(idx, -1, dims=1)
    targets[:, :3] = IGNORE_INDEX
    logits, loss = ours(idx, targets)
    logp = logits.log_softmax(-1)[:, 3:].gather(-1, targets[:, 3:, None])
    torch.testing.assert_close(loss, -logp.mean())


def test_gelu_is_tanh_approximation(ours):
    assert ours.transformer.h[0].mlp.gelu.approximate == 'tanh'


def test_value_head_zero_init_and_shapes(tiny_hf):
    model = GPT.from_pretrained(tiny_hf[0], value_head=True).eval()
    plain = GPT.from_pretrained(tiny_hf[0]).eval()
    idx, mask = left_padded_batch()
    logits, loss, values = model(idx, attention_mask=mask, return_values=True)
    assert values.shape == idx.shape and values.dtype == torch.float32
    assert torch.all(values == 0)  # zero-initialised head
    torch.testing.assert_close(logits, plain(idx, attention_mask=mask)[0])  # trunk untouched
    # the head reads the final-layer-norm hidden state at each position
    torch.nn.init.normal_(model.value_head.weight)
    h = model.trunk(idx, mask)
    _, _, values = model(idx, attention_mask=mask, return_values=True)
    torch.testing.assert_close(values, (h @ model.value_head.weight.T).squeeze(-1) + model.value_head.bias)
    with pytest.raises(ValueError, match='no value head'):
        plain.value(h)


def test_value_head_runs_in_its_weights_precision_under_autocast(tiny_hf):
    """Under bf16 autocast the trunk runs in bf16, the value head in float32: a reward near 3 in
    bf16 is rounded to steps of 1/64, enough to turn near-ties into ties."""
    model = GPT.from_pretrained(tiny_hf[0], value_head=True).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.value_head.weight)
        model.value_head.bias.fill_(3.0)
    h = torch.randn(2, 5, model.config.n_embd, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        v = model.value(h)
    torch.testing.assert_close(v, model.value_head(h).squeeze(-1).detach(), atol=1e-5, rtol=0)


def test_value_head_survives_checkpoint(tmp_path):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, block_size=16, value_head=True))
    torch.nn.init.normal_(model.value_head.weight)
    torch.save({'model': model.state_dict(), 'model_args': vars(model.config)}, tmp_path / 'ckpt.pt')
    loaded, _ = GPT.from_checkpoint(str(tmp_path))
    assert loaded.value_head is not None
    torch.testing.assert_close(loaded.value_head.weight, model.value_head.weight)


def greedy_no_cache_reference(model, idx, mask, n, eos):
    """The slowest possible decoder: each row alone, unpadded, full forward every step."""
    rows = []
    for i in range(idx.size(0)):
        x = idx[i][mask[i].bool()][None]
        out = []
        for _ in range(n):
            nxt = model(x)[0][0, -1].argmax().item()
            out.append(nxt)
            if nxt == eos:
                break
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        rows.append(out)
    return rows


def test_greedy_generate_equals_hf_and_no_cache_with_eos(ours, tiny_hf):
    hf = tiny_hf[1]
    idx, mask = left_padded_batch(seed=3)
    n, pad = 12, 0
    free = ours.generate(idx, n, temperature=0, attention_mask=mask)
    # choose as EOS a token that row 0 emits mid-way (and not before), so row 0 stops early
    row0 = free[0, idx.size(1):].tolist()
    k = next(j for j in range(2, n) if row0[j] not in row0[:j])
    eos = row0[k]
    out = ours.generate(idx, n, temperature=0, attention_mask=mask, eos_token_id=eos, pad_token_id=pad)
    out_nc = ours.generate(idx, n, temperature=0, attention_mask=mask, eos_token_id=eos, pad_token_id=pad,
                           use_cache=False)
    ref = hf.generate(idx, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=eos,
                      pad_token_id=pad)
    assert torch.equal(out, out_nc)
    assert torch.equal(out, ref)
    # row 0 ends with EOS at step k, then only padding
    new0 = out[0, idx.size(1):].tolist()
    assert new0[k] == eos and all(t == pad for t in new0[k + 1:])
    # and every row equals decoding that row alone, without padding or cache
    for i, ref_row in enumerate(greedy_no_cache_reference(ours, idx, mask, out.size(1) - idx.size(1), eos)):
        assert out[i, idx.size(1):idx.size(1) + len(ref_row)].tolist() == ref_row


def test_generate_stops_early_when_all_rows_finish(ours):
    idx, mask = left_padded_batch(seed=4, lengths=(5, 5))
    free = ours.generate(idx, 10, temperature=0, attention_mask=mask)
    eos = free[0, 5].item()  # row 0's first token
    if eos in free[1, 5:].tolist():  # stops when row 1 emits it too
        stop = free[1, 5:].tolist().index(eos) + 1
    else:
        stop = 10
    out = ours.generate(idx, 10, temperature=0, attention_mask=mask, eos_token_id=eos)
    assert out.size(1) == 5 + stop


def test_generate_zero_new_tokens_and_bad_sampling_arguments(ours):
    """max_new_tokens=0 returns the prompt (and (B, 0) log-probs); a negative temperature or top_k
    and a top_p outside [0, 1] are errors (temperature=-0.01 sampled at 1.0 before)."""
    idx, mask = left_padded_batch(seed=6)
    out, lp = ours.generate(idx, 0, attention_mask=mask, return_logprobs=True)
    assert torch.equal(out, idx) and lp.shape == (idx.size(0), 0) and lp.dtype == torch.float32
    for kw in (dict(temperature=-0.01), dict(top_k=-1), dict(top_p=1.5), dict(top_p=-0.1)):
        with pytest.raises(ValueError, match='generate needs'):
            ours.generate(idx, 2, attention_mask=mask, **kw)
    with pytest.raises(ValueError, match='generate needs'):
        ours.generate(idx, -1, attention_mask=mask)


def test_sampling_is_reproducible_and_cache_consistent(ours):
    idx, mask = left_padded_batch(seed=5)
    kw = dict(temperature=0.9, top_k=20, top_p=0.9, attention_mask=mask)
    a = ours.generate(idx, 10, generator=torch.Generator().manual_seed(7), **kw)
    b = ours.generate(idx, 10, generator=torch.Generator().manual_seed(7), **kw)
    c = ours.generate(idx, 10, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_generate_past_block_size_crops_context(tiny_hf):
    model = GPT.from_pretrained(tiny_hf[0], block_size=8).eval()
    idx = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(6))
    out = model.generate(idx, 5, temperature=0)
    assert out.shape == (1, 11)
    x = idx
    for _ in range(5):  # nanoGPT's loop: crop to the last block_size tokens
        nxt = model(x[:, -8:])[0][:, -1].argmax(-1, keepdim=True)
        x = torch.cat([x, nxt], 1)
    assert torch.equal(out, x)


def test_top_k_top_p_filter_hand_values():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    inf = float('-inf')
    k2 = top_k_top_p_filter(logits, top_k=2)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    # top_p 0.6: 0.5 alone is < 0.6, so 0.2 joins; 0.5 + 0.2 = 0.7 >= 0.6 stops there
    p = top_k_top_p_filter(logits, top_p=0.6)
    assert torch.equal(torch.isfinite(p[0]), torch.tensor([True, True, False, False, False]))
    # top_p exactly reached: 0.5 + 0.2 + 0.15 = 0.85 -> three tokens
    p = top_k_top_p_filter(logits, top_p=0.85)
    assert torch.isfinite(p[0]).sum() == 3
    # the most likely token always survives, even for a tiny top_p; order in the vocab does not matter
    shuffled = logits[:, [3, 0, 4, 1, 2]]
    p = top_k_top_p_filter(shuffled, top_p=0.01)
    assert torch.equal(torch.isfinite(p[0]), torch.tensor([False, True, False, False, False]))
    assert torch.equal(top_k_top_p_filter(logits), logits)  # both filters off
    assert torch.equal(top_k_top_p_filter(logits, top_k=2, top_p=0.5)[0] == inf,
                       torch.tensor([False, True, True, True, True]))


def test_top_k_sampling_never_leaves_the_top_k(ours):
    idx = torch.randint(0, VOCAB, (64, 4), generator=torch.Generator().manual_seed(8))
    allowed = ours(idx)[0][:, -1].topk(3, dim=-1).indices
    out = ours.generate(idx, 1, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert (out[:, -1:] == allowed).any(dim=1).all()


def test_sample_from_probs_draws_each_token_at_its_probability():
    """Inverse-CDF sampling: 200,000 draws of two rows, each token's frequency within 5 standard
    errors of its probability (a sampler off by one token, or drawing from the wrong row, is off
    by 0.1 or more); a zero-probability token, first, between or last, is never drawn."""
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.4, 0.2, 0.3, 0.0],
                          [0.5, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25]])
    n = 200_000
    draws = sample_from_probs(probs.repeat_interleave(n, dim=0), torch.Generator().manual_seed(0))
    assert draws.shape == (2 * n, 1) and draws.dtype == torch.long
    for row in range(2):
        freq = torch.bincount(draws[row * n:(row + 1) * n, 0], minlength=7).double() / n
        se = (probs[row].double() * (1 - probs[row].double()) / n).sqrt()
        assert ((freq - probs[row]).abs() <= 5 * se + 1e-12).all(), (row, freq)
        assert (freq[probs[row] == 0] == 0).all()


def test_sample_from_probs_u_at_the_total_takes_the_last_token_with_probability(monkeypatch):
    """u = total (a uniform number rounding up): the last token with probability, never a
    trailing zero-probability one; u = 0: the first token with probability."""
    probs = torch.tensor([[0.0, 0.6, 0.4, 0.0, 0.0]])
    monkeypatch.setattr(torch, 'rand', lambda *a, **k: torch.ones(1, 1, dtype=k.get('dtype')))
    assert sample_from_probs(probs).item() == 2
    monkeypatch.setattr(torch, 'rand', lambda *a, **k: torch.zeros(1, 1, dtype=k.get('dtype')))
    assert sample_from_probs(probs).item() == 1


def test_checkpoint_round_trip(tmp_path, ours):
    path = tmp_path / 'ckpt.pt'
    torch.save({'model': ours.state_dict(), 'model_args': vars(ours.config), 'iter_num': 3}, path)
    loaded, ckpt = GPT.from_checkpoint(str(path))
    assert ckpt['iter_num'] == 3
    idx = torch.randint(0, VOCAB, (2, 9))
    assert torch.equal(loaded.eval()(idx)[0], ours(idx)[0])
    assert isinstance(GPT.from_pretrained(str(tmp_path)), GPT)  # a checkpoint directory works too


def test_hub_download_failure_is_one_clear_line(monkeypatch, tmp_path):
    """gpt2* offline: transformers' OSError (a multi-screen traceback) becomes one ModelLoadError
    line that says what to do."""
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nmore text")

    monkeypatch.setattr(transformers.GPT2LMHeadModel, 'from_pretrained', offline)
    with pytest.raises(ModelLoadError, match=r"could not load gpt2 from the Hugging Face hub \(We couldn't connect.*"
                                             r"offline, pass a local directory saved with save_pretrained"):
        GPT.from_pretrained('gpt2')
    d = tmp_path / 'noweights'  # a local directory: not a hub failure
    d.mkdir()
    (d / 'config.json').write_text(json.dumps({'model_type': 'gpt2'}))
    with pytest.raises(ModelLoadError, match=r"noweights has no weights transformers can load \(We couldn't"):
        GPT.from_pretrained(str(d))


def test_checkpoint_of_other_architecture_is_a_clear_error(tmp_path, ours):
    sd = ours.state_dict()
    args = dict(vars(ours.config), n_layer=3)  # claims 3 layers, holds 2
    torch.save({'model': sd, 'model_args': args}, tmp_path / 'ckpt.pt')
    with pytest.raises(ModelLoadError, match=r'ckpt.pt does not fit .*missing transformer\.h\.2'):
        GPT.from_checkpoint(str(tmp_path))
    args = dict(vars(ours.config), n_embd=64)
    torch.save({'model': sd, 'model_args': args}, tmp_path / 'ckpt.pt')
    with pytest.raises(ModelLoadError, match='shape mismatch'):
        GPT.from_checkpoint(str(tmp_path))
    torch.save({'weights': sd}, tmp_path / 'other.pt')
    with pytest.raises(ModelLoadError, match='not a checkpoint of this project'):
        GPT.from_checkpoint(str(tmp_path / 'other.pt'))


def test_from_pretrained_bad_paths(tmp_path):
    with pytest.raises(ModelLoadError, match='neither a directory nor one of'):
        GPT.from_pretrained(str(tmp_path / 'nowhere'))
    with pytest.raises(ModelLoadError, match='neither ckpt.pt nor a Hugging Face config.json'):
        GPT.from_pretrained(str(tmp_path))


def test_hf_directory_is_read_without_transformers(tiny_hf):
    """A save_pretrained directory is read from its safetensors file directly: transformers is
    never imported (it costs seconds at every start) and the logits are HF's."""
    import subprocess, sys
    code = ("import sys, torch; from model import GPT; m = GPT.from_pretrained(sys.argv[1]).eval(); "
            "assert 'transformers' not in sys.modules, 'transformers was imported'; "
            "torch.save(m(torch.arange(12).view(1, 12))[0], sys.argv[2])")
    out = os.path.join(tiny_hf[0], '..', 'logits_no_transformers.pt')
    subprocess.run([sys.executable, '-c', code, tiny_hf[0], out], check=True, cwd=ROOT)
    torch.testing.assert_close(torch.load(out), tiny_hf[1](torch.arange(12).view(1, 12)).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize('layout', ['float16', 'no_prefix', 'sharded', 'pytorch_bin'])
def test_hf_directory_layouts_give_hfs_logits(tiny_hf, tmp_path, layout):
    """Every layout transformers writes loads to the same float32 model: weights saved in float16
    (upcast), a GPT2Model without the 'transformer.' prefix and lm_head, shards with an index
    file, and the old pytorch_model.bin (read through transformers)."""
    hf = tiny_hf[1]
    if layout == 'float16':
        from transformers import GPT2LMHeadModel
        GPT2LMHeadModel.from_pretrained(tiny_hf[0], dtype=torch.float16).save_pretrained(tmp_path)
        ref = GPT2LMHeadModel.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    elif layout == 'no_prefix':
        hf.transformer.save_pretrained(tmp_path)
        ref = hf
    elif layout == 'sharded':
        hf.save_pretrained(tmp_path, max_shard_size='20KB')
        assert (tmp_path / 'model.safetensors.index.json').exists()
        ref = hf
    else:
        torch.save(hf.state_dict(), tmp_path / 'pytorch_model.bin')
        hf.config.save_pretrained(tmp_path)
        ref = hf
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    model = GPT.from_pretrained(str(tmp_path)).eval()
    assert next(model.parameters()).dtype == torch.float32
    torch.testing.assert_close(model(idx)[0], ref(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize('change, message', [
    ({'scale_attn_by_inverse_layer_idx': True}, 'attention scaled other than'),
    ({'activation_function': 'relu'}, "activation relu is not GPT-2's tanh GELU"),
    ({'model_type': 'gpt_neo'}, 'a gpt_neo model, not GPT-2'),
    ({'tie_word_embeddings': False}, 'lm_head is not tied'),
])
def test_hf_directory_this_gpt_cannot_compute_is_refused(tiny_hf, tmp_path, change, message):
    """A GPT-2 variant whose computation this model does not have is one clear error, not a
    model that silently computes something else."""
    import json, shutil
    from safetensors.torch import load_file, save_file
    shutil.copytree(tiny_hf[0], tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / 'config.json').read_text())
    (tmp_path / 'config.json').write_text(json.dumps({**config, **change}))
    if 'tie_word_embeddings' in change:  # a separate output matrix, as an untied model saves it
        sd = load_file(tmp_path / 'model.safetensors')
        sd['lm_head.weight'] = sd['transformer.wte.weight'] + 1
        save_file(sd, tmp_path / 'model.safetensors')
    with pytest.raises(ModelLoadError, match=message):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / 'config.json').write_text('{"n_layer": 2,')
    with pytest.raises(ModelLoadError, match='config.json is not valid JSON'):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / 'config.json').write_text('[2, 2]')
    with pytest.raises(ModelLoadError, match='config.json is not a model config'):
        GPT.from_pretrained(str(tmp_path))


def test_hf_directory_other_files_and_names(tiny_hf, tmp_path):
    """A tied model saved with only lm_head.weight (safetensors' save_model keeps one name of a
    shared tensor), a hand-written config.json with transformers' alias names and left-out
    defaults, and the errors: a classifier's head named as it is, a wider MLP, a broken index."""
    import json, shutil
    from safetensors.torch import load_file, save_file
    hf = tiny_hf[1]
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))
    sd = load_file(os.path.join(tiny_hf[0], 'model.safetensors'))
    (tmp_path / 'head_only').mkdir()
    save_file({('lm_head.weight' if k == 'transformer.wte.weight' else k): v for k, v in sd.items()},
              tmp_path / 'head_only' / 'model.safetensors')
    c = hf.config
    (tmp_path / 'head_only' / 'config.json').write_text(json.dumps(  # aliases; epsilon 1e-5 and activation left out
        {'model_type': 'gpt2', 'hidden_size': c.n_embd, 'num_hidden_layers': c.n_layer, 'num_attention_heads': c.n_head,
         'max_position_embeddings': c.n_positions, 'vocab_size': c.vocab_size}))
    model = GPT.from_pretrained(str(tmp_path / 'head_only')).eval()
    torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)

    shutil.copytree(tiny_hf[0], tmp_path / 'classifier')
    save_file({**sd, 'score.weight': torch.zeros(1, c.n_embd)}, tmp_path / 'classifier' / 'model.safetensors')
    with pytest.raises(ModelLoadError, match=r'unexpected score\.weight'):
        GPT.from_pretrained(str(tmp_path / 'classifier'))
    shutil.copytree(tiny_hf[0], tmp_path / 'wide')
    (tmp_path / 'wide' / 'config.json').write_text(json.dumps({**c.to_dict(), 'n_inner': 3 * c.n_embd}))
    with pytest.raises(ModelLoadError, match='MLP width n_inner=96'):
        GPT.from_pretrained(str(tmp_path / 'wide'))
    (tmp_path / 'sharded').mkdir()
    shutil.copy(os.path.join(tiny_hf[0], 'config.json'), tmp_path / 'sharded')
    (tmp_path / 'sharded' / 'model.safetensors.index.json').write_text('{"metadata": {}}')
    with pytest.raises(ModelLoadError, match='is not a safetensors index'):
        GPT.from_pretrained(str(tmp_path / 'sharded'))
    (tmp_path / 'lora_only').mkdir()
    shutil.copy(os.path.join(tiny_hf[0], 'config.json'), tmp_path / 'lora_only')
    save_file({'transformer.h.0.attn.c_attn.lora_A': torch.zeros(2, 32)}, tmp_path / 'lora_only' / 'model.safetensors')
    with pytest.raises(ModelLoadError, match='does not fit this model'):
        GPT.from_pretrained(str(tmp_path / 'lora_only'))


def test_crop_block_size(ours, tiny_hf):
    model = GPT.from_pretrained(tiny_hf[0], block_size=16).eval()
    assert model.config.block_size == 16 and model.transformer.wpe.weight.shape[0] == 16
    idx = torch.randint(0, VOCAB, (1, 16))
    torch.testing.assert_close(model(idx)[0], ours(idx)[0])
    with pytest.raises(ValueError, match='longer than block_size'):
        model(torch.zeros(1, 17, dtype=torch.long))
    # a longer context than the model's cannot be made: an error, not a shorter model than asked for
    n = ours.config.block_size
    with pytest.raises(ModelLoadError, match=f'block_size={n + 1} is larger than .*\'s {n}'):
        GPT.from_pretrained(tiny_hf[0], block_size=n + 1)
    ckpt = tiny_hf[0] + '-crop.pt'
    torch.save({'model': model.state_dict(), 'model_args': dict(vars(model.config))}, ckpt)
    with pytest.raises(ModelLoadError, match=f'block_size=17 is larger than {ckpt}\'s 16'):
        GPT.from_checkpoint(ckpt, block_size=17)
    assert GPT.from_checkpoint(ckpt, block_size=8)[0].config.block_size == 8


def test_configure_optimizers_groups(ours):
    opt = ours.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() < 2 for p in no_decay['params'])
    n = sum(p.numel() for g in opt.param_groups for p in g['params'])
    assert n == sum(p.numel() for p in ours.parameters())  # tied embedding counted once


def test_estimate_mfu_formula():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=50, block_size=8))
    N = model.get_num_params()
    flops = (6 * N + 12 * 2 * 2 * 8 * 8) * 8 * 4  # per token, times T, times 4 sequences
    assert model.estimate_mfu(4, dt=2.0, flops_promised=1e9) == pytest.approx(flops / 2.0 / 1e9)
    # rows shorter than block_size (SFT's, padded to their longest example): attention at their length
    flops = (6 * N + 12 * 2 * 2 * 8 * 5) * 32  # 32 tokens in rows of 5
    assert model.estimate_mfu(32 / 5, dt=2.0, flops_promised=1e9, seq_len=5) == pytest.approx(flops / 2.0 / 1e9)


def test_estimate_mfu_of_a_lora_model_leaves_out_the_frozen_weight_gradients():
    """LoRA's frozen base gets no weight gradient: 4 flops per frozen parameter (forward, input
    gradient), not 6, so a LoRA run's MFU is not inflated by work it never does (it counted 6N). The
    planner-shape count bench.py --scripts uses agrees."""
    import os
    from conftest import ROOT, load_definitions
    shape = dict(n_layer=2, n_head=2, n_embd=16, vocab_size=50, block_size=8, lora_rank=2, lora_targets='attn,mlp')
    model = GPT(GPTConfig(**shape))
    N = model.get_num_params()
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) - 8 * 16  # less wpe
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert frozen + trainable == N and 0 < trainable < frozen
    per_token = 6 * trainable + 4 * frozen + 12 * 2 * 16 * 8
    assert model.estimate_mfu(4, dt=2.0, flops_promised=1e9) == pytest.approx(per_token * 8 * 4 / 2.0 / 1e9)
    flops_per_token = load_definitions(os.path.join(ROOT, 'bench.py'), 'flops_per_token').flops_per_token
    assert flops_per_token(shape, 8) == per_token
    assert flops_per_token({**shape, 'lora_rank': 0}, 8) == 6 * (N - trainable) + 12 * 2 * 16 * 8  # no adapters


def test_bench_mfu_of_a_reward_model_leaves_out_the_lm_head_it_never_runs():
    """reward_train.py's forward (PairLoss) is trunk + value head: no LM head, whose 6 V h flops a
    token (4 with LoRA's frozen wte) bench.py --scripts counted anyway (its reward MFU read 8 % high
    at gpt2-large, 77 % here); with chosen_lm_coef > 0 the chosen rows, half the tokens, run it.
    Checked against torch's flop counter: the formula is as close for the reward model as for an LM."""
    import os
    from torch.utils.flop_counter import FlopCounterMode
    from conftest import ROOT, load_definitions
    from common import plan_for_script, script_defaults
    ns = load_definitions(os.path.join(ROOT, 'bench.py'), 'flops_per_token', 'lm_head_share')
    shape = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=500, block_size=16)
    full = ns.flops_per_token(shape, 16)
    assert ns.flops_per_token(shape, 16, 0.0) == full - 6 * 500 * 32
    lora = {**shape, 'lora_rank': 2, 'lora_targets': 'attn'}
    assert ns.flops_per_token(lora, 16, 0.5) == ns.flops_per_token(lora, 16) - 0.5 * 4 * 500 * 32
    model = GPT(GPTConfig(**shape, value_head=True))
    ids = torch.randint(0, 500, (4, 16))
    ratios = []
    for share, step in ((0.0, lambda: model.value(model.trunk(ids)).sum()), (1.0, lambda: model(ids, ids)[1])):
        with FlopCounterMode(display=False) as counter:
            step().backward()
        ratios.append(ns.flops_per_token(shape, 16, share) / (counter.get_total_flops() / ids.numel()))
    assert 1.0 <= ratios[0] < 1.15 and abs(ratios[0] - ratios[1]) < 0.06, ratios
    # the share bench.py reads from reward_train.py's plan: no LM term, or the chosen half
    config = {**script_defaults(os.path.join(ROOT, 'reward_train.py')), 'init_from': 'gpt2', 'block_size': 64}
    assert ns.lm_head_share(plan_for_script('reward_train.py', config)['inputs']) == 0.0
    config['chosen_lm_coef'] = 0.1
    assert ns.lm_head_share(plan_for_script('reward_train.py', config)['inputs']) == 0.5
    assert ns.lm_head_share(plan_for_script('dpo_train.py', {**script_defaults(os.path.join(ROOT, 'dpo_train.py')),
                                                             'init_from': 'gpt2'})['inputs']) == 1.0


def test_train_flops_per_token_from_a_planner_shape():
    """bench.py --scripts computes MFU from the planner's shape, without a model: its N (the
    planner's exact count less the position embeddings) is GPT.get_num_params()."""
    from common import param_counts
    from model import train_flops_per_token
    shape = dict(n_layer=3, n_head=2, n_embd=16, vocab_size=50, block_size=12)
    model = GPT(GPTConfig(**shape))
    n = param_counts(shape)['total'] - shape['block_size'] * shape['n_embd']
    assert n == model.get_num_params()
    assert train_flops_per_token(n, 3, 16, 10) == 6 * n + 12 * 3 * 16 * 10


def peaked_tiny():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        m.transformer.wte.weight.mul_(10)  # a peaked next-token distribution, not one-hot
    return m


def test_top_p_nucleus_is_taken_at_the_sampling_temperature():
    """top_p filters the distribution generate samples from, logits / temperature: at T = 0.5 the nucleus
    of 0.6 is smaller than at T = 1, and every sampled token is inside the T = 0.5 one (filtering before
    the temperature passed the suite)."""
    m = peaked_tiny()
    idx = torch.tensor([[1, 2, 3]]).repeat(4000, 1)
    with torch.no_grad():
        logits = m(idx[:1])[0][0, -1]
    T, p = 0.5, 0.6
    allowed = torch.isfinite(top_k_top_p_filter((logits / T)[None], top_p=p))[0]
    wider = torch.isfinite(top_k_top_p_filter(logits[None], top_p=p))[0]
    assert wider.sum() > allowed.sum()  # the two orders differ here
    out = m.generate(idx, 1, temperature=T, top_p=p, generator=torch.Generator().manual_seed(0))
    assert allowed[out[:, -1]].all()


def test_top_p_zero_keeps_the_most_likely_token():
    """top_p=0 (accepted) keeps one token, the most likely, instead of filtering every logit to -inf (NaN)."""
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    assert torch.equal(torch.isfinite(top_k_top_p_filter(logits, top_p=0.0)[0]), torch.tensor([False, True, False]))


def test_generate_logprobs_are_under_the_full_distribution_and_zero_after_eos():
    """return_logprobs gives log-probs under softmax(logits / temperature), not the top-k filtered one
    (PPO's training log-probs are unfiltered: they must be the same numbers), and 0 after a row's EOS."""
    m = peaked_tiny()
    idx = torch.tensor([[1, 2, 3]]).repeat(64, 1)
    with torch.no_grad():
        eos = int(m(idx[:1])[0][0, -1].argmax())  # a likely first token as EOS, so rows finish early
        out, lp = m.generate(idx, 4, temperature=0.7, top_k=3, eos_token_id=eos,
                             generator=torch.Generator().manual_seed(0), return_logprobs=True)
        logits = m(out)[0][:, 2:-1] / 0.7
    full = torch.log_softmax(logits, -1).gather(-1, out[:, 3:, None])[..., 0]
    is_eos = (out[:, 3:] == eos).long()
    after = torch.cumsum(is_eos, 1) - is_eos > 0  # strictly after the first EOS
    assert after.any() and (~after).any()
    torch.testing.assert_close(lp[~after], full[~after], atol=1e-5, rtol=0)
    assert (lp[after] == 0).all()


def test_trunk_with_a_kv_cache_and_no_mask_equals_the_full_pass():
    """trunk(kv_cache=...) without an attention mask (generate always passes one): the new tokens take
    the positions after the cached ones (arange(past, past + T)), so prefill + one token at a time gives
    the full pass's hidden states (positions restarting at 0 passed the suite)."""
    from model import KVCache
    m = peaked_tiny()
    idx = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m.trunk(idx)
        cache = KVCache(m.config, 2, 9, idx.device, torch.float32)
        parts = [m.trunk(idx[:, :5], kv_cache=cache)] + [m.trunk(idx[:, t:t + 1], kv_cache=cache) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
