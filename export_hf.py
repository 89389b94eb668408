"""
Export a checkpoint of this project to a Hugging Face transformers directory.

    python export_hf.py --ckpt=out-sft-gpt2large/best.pt --export_dir=hf-sft       # policy -> GPT2LMHeadModel
    python export_hf.py --ckpt=out-reward-gpt2large/best.pt --export_dir=hf-reward # reward -> GPT2ForSequenceClassification
    python export_hf.py --ckpt=out-shakespeare-char --export_dir=hf-char           # char-level: weights only

then `GPT2LMHeadModel.from_pretrained('hf-sft')`, `pipeline('text-generation', model='hf-sft')`,
`AutoModelForSequenceClassification.from_pretrained('hf-reward')`.

What it writes (save_pretrained, safetensors):
- a policy (train.py / SFT / DPO / PPO checkpoints; `kind='policy'`): GPT2LMHeadModel. LoRA adapters
  are merged into the weights (W + B A * alpha / r, model.merge_lora); a value head (PPO's shared
  critic) is dropped.
- a reward model (reward_train.py; `kind='reward'`): GPT2ForSequenceClassification with
  num_labels=1, score.weight = the value head's weight, and `reward_mean` / `reward_std` in
  config.json when the checkpoint has them (PPO's normalisation: (r - mean) / std).
- GPT-2's tokenizer (tokenizer.json, vocab.json, merges.txt), rebuilt offline from tiktoken's BPE
  ranks, when the vocabulary is GPT-2's. A char-level model (e.g. vocab 65) gets no tokenizer
  files: encode with its data/<dataset>/meta.pkl.

Departures from a plain weight copy, each exact (the export computes the same numbers):
1. Conv1D: HF stores c_attn/c_proj/c_fc weights as (in, out), ours are Linear (out, in): transposed.
2. A vocabulary padded to 50304 (nanoGPT's from-scratch speed-up) is cut to GPT-2's 50257 tokens:
   no token id reaches the extra rows. A model built with bias=False gets zero biases.
3. Our value head has a bias b; HF's score Linear has none. The reward is r = w . h + b with
   h = ln_f(x) = g * x_hat + beta. In the classifier ln_f feeds only the score, so b is folded into
   ln_f's bias: beta' = beta + b * w / (w . w), giving w . h' = w . h + b exactly (so the exported
   classifier's ln_f differs from the policy's; do not use its trunk as a language model).
4. The reward is read at the last real token, the EOS that ends the response (as reward_train.py
   trains it: score `prompt + response + "<|endoftext|>"`): the classifier's tokenizer appends
   that EOS to every text (or text pair) itself, so tok(prompt + response) is scored right. It reads
   a literal "<|endoftext|>" inside a text as ordinary tokens (split_special_tokens=True), as
   score_texts does. HF finds the last token that is not
   pad_token_id, so pad cannot be EOS: the classifier gets one more token row, `<|pad|>` (id =
   vocabulary size, a zero embedding), as its pad_token_id, and its tokenizer pads on the right
   and truncates on the left: tok(prompt + response, truncation=True) or
   tok(prompt, response, truncation='only_first') cuts the prompt's start, as score_texts does, not
   the EOS (for a pair, truncation=True is 'longest_first': it cuts a longer response instead).
   HF's GPT-2 takes positions 0..T-1 whatever the mask, so left padding needs explicit position_ids.
The policy's tokenizer pads with EOS on the left, as model.generate does.

Where it writes: everything goes first into a sibling directory, <export_dir>.tmp-<pid>, and the
verification reloads it from there. Only when that has passed does it replace export_dir (the old
directory is renamed aside, the new one renamed in, then the old one deleted), so an export never
mixes with an earlier one's files (e.g. GPT-2's tokenizer files left beside a char-level model) and
a failed export or verify leaves the previous export_dir as it was. An existing export_dir must be
an earlier Hugging Face export (it holds config.json and no .pt checkpoint) or empty; a directory
holding other files, or a file, is refused in one line, before anything is written.
"""

import atexit
import json
import math
import os
import shutil

import torch

from common import GPT2Tokenizer, UserError, configure, print_config
from model import GPT

# -----------------------------------------------------------------------------
ckpt = 'out/ckpt.pt'        # this project's checkpoint file, or a directory holding ckpt.pt
export_dir = ''             # where the HF model goes; '' = <checkpoint's directory>/hf
kind = 'auto'               # 'policy' | 'reward' | 'auto' (reward when it has a value head and came from reward_train.py)
dtype = 'float32'           # weights as saved: 'float32' | 'bfloat16' | 'float16' (half the size; not exact)
verify = True               # reload the export and compare its logits/scores with ours on random tokens
# -----------------------------------------------------------------------------
config = configure(globals())
# -----------------------------------------------------------------------------

print_config(config)
if kind not in ('auto', 'policy', 'reward'):
    raise UserError(f"kind must be 'auto', 'policy' or 'reward', got {kind!r}")
if dtype not in ('float32', 'bfloat16', 'float16'):
    raise UserError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
GPT2_VOCAB = 50257          # GPT-2's BPE: 50256 merges' tokens + <|endoftext|>
EOT = 50256
PAD_TOKEN = '<|pad|>'       # the reward classifier's pad (see point 4 above)

# -----------------------------------------------------------------------------
# the checkpoint: LoRA merged, kind decided
model, checkpoint = GPT.from_checkpoint(ckpt)  # a missing/foreign file is a one-line ModelLoadError
model.eval()
if model.config.lora_rank > 0:
    model.merge_lora()
    print("LoRA adapters merged into the weights")
if kind == 'auto':  # reward_train.py checkpoints carry best_val_acc (and reward_mean/std at the end)
    from_reward_train = 'best_val_acc' in checkpoint or 'reward_mean' in checkpoint
    kind = 'reward' if model.value_head is not None and from_reward_train else 'policy'
if kind == 'reward' and model.value_head is None:
    raise UserError(f"{ckpt} has no value head, so it is not a reward model; use --kind=policy")
if kind == 'policy' and model.value_head is not None:
    print("note: the value head is dropped (a policy export has only the language-model head)")
cfg = model.config
gpt2_bpe = cfg.vocab_size >= GPT2_VOCAB
vocab_size = GPT2_VOCAB if gpt2_bpe else cfg.vocab_size  # drop the padding rows of 50304
if cfg.vocab_size > GPT2_VOCAB:
    print(f"vocabulary cut from {cfg.vocab_size} (padded) to GPT-2's {GPT2_VOCAB} tokens")
if kind == 'reward':
    pad_id = vocab_size  # one new row: <|pad|>
    vocab_size += 1
if not export_dir:
    ckpt_dir = ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)
    export_dir = os.path.join(ckpt_dir or '.', 'hf')
export_dir = os.path.normpath(export_dir)
if os.path.exists(export_dir) and not os.path.isdir(export_dir):
    raise UserError(f"export_dir={export_dir!r} is a file, not a directory; choose another --export_dir")
if os.path.isdir(export_dir):
    entries = os.listdir(export_dir)
    if entries and ('config.json' not in entries or any(e.endswith('.pt') for e in entries)):
        raise UserError(f"export_dir={export_dir!r} holds files that are not a Hugging Face export "
                        f"(no config.json, or a .pt checkpoint); the export replaces the whole directory, "
                        f"so choose a new or empty --export_dir")
# written here, verified, then moved into place (see the docstring); removed if the script fails
tmp_dir = os.path.abspath(export_dir) + f'.tmp-{os.getpid()}'
shutil.rmtree(tmp_dir, ignore_errors=True)
atexit.register(shutil.rmtree, tmp_dir, ignore_errors=True)

# -----------------------------------------------------------------------------
# the HF model, weights copied
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel  # heavy, only now

hf_config = GPT2Config(
    vocab_size=vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
    n_head=cfg.n_head, layer_norm_epsilon=cfg.layer_norm_epsilon, activation_function='gelu_new',
    resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,  # training-time only
    bos_token_id=EOT if gpt2_bpe else None, eos_token_id=EOT if gpt2_bpe else None)
if kind == 'reward':
    hf_config.num_labels = 1  # a regression head: one scalar
    hf_config.id2label, hf_config.label2id = {0: 'reward'}, {'reward': 0}
    hf_config.pad_token_id = pad_id
    for key in ('reward_mean', 'reward_std'):
        if key in checkpoint:
            setattr(hf_config, key, float(checkpoint[key]))
    hf = GPT2ForSequenceClassification(hf_config)
else:
    hf = GPT2LMHeadModel(hf_config)

# HF's Conv1D stores these weights as (in, out); our Linears hold (out, in)
TRANSPOSED = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
ours = {k: (v.t() if k.endswith(TRANSPOSED) else v) for k, v in model.state_dict().items()}
wte = ours['transformer.wte.weight'][:vocab_size]
if kind == 'reward':
    wte = torch.cat([wte[:pad_id], torch.zeros(1, cfg.n_embd)])  # the <|pad|> row: never attended to
ours['transformer.wte.weight'] = wte
if kind == 'reward':
    w, b = model.value_head.weight[0].double(), model.value_head.bias[0].double()  # (C,), ()
    if b != 0 and (w @ w) == 0:
        raise UserError(f"{ckpt}: the value head's weight is zero but its bias is not; "
                        f"HF's bias-free score layer cannot represent that constant reward")
    ours['score.weight'] = model.value_head.weight
    if b != 0:  # point 3: beta' = beta + b * w / (w . w), so that w . h' = w . h + b
        beta = ours.get('transformer.ln_f.bias', torch.zeros(cfg.n_embd)).double()
        ours['transformer.ln_f.bias'] = (beta + b * w / (w @ w)).float()
else:
    ours['lm_head.weight'] = wte  # tied to wte, as in GPT-2
sd = {}
for k, v in hf.state_dict().items():
    if k in ours:
        if ours[k].shape != v.shape:
            raise UserError(f"{ckpt}: {k} has shape {tuple(ours[k].shape)}, HF expects {tuple(v.shape)}")
        sd[k] = ours[k]
    elif k.endswith('.bias') and not cfg.bias:
        sd[k] = torch.zeros_like(v)  # a bias=False model: HF's GPT-2 always has biases, zero is the same
    else:
        raise UserError(f"{ckpt}: no weight for HF's {k}")
hf.load_state_dict(sd, strict=True)
hf.to({'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]).eval()
# never export NaN/inf weights (a diverged run, or float16's overflow past 65504), verify or not:
# --verify=False skips only the comparison below, and NaN logits would not be caught without it
bad = [k for k, v in hf.state_dict().items() if not torch.isfinite(v).all()]
if bad:
    raise UserError(f"{ckpt} has non-finite (NaN/inf) weights in {dtype} ({len(bad)} tensor(s), first {bad[0]}); "
                    f"nothing exported, {export_dir} is left as it was")
if kind == 'policy' and gpt2_bpe:
    hf.generation_config.pad_token_id = EOT  # generate pads finished rows with EOS, as model.generate
hf.save_pretrained(tmp_dir)
print(f"wrote {type(hf).__name__} ({dtype})")


# -----------------------------------------------------------------------------
# GPT-2's tokenizer from tiktoken's BPE ranks (no download)

def gpt2_vocab_and_merges():
    """GPT-2's encoder.json (token string -> id) and merges (in rank order) rebuilt from tiktoken's
    mergeable ranks (token bytes -> id; ids 0..50255 are also the merge order, 256.. merges).
    Token strings use GPT-2's byte-to-unicode map. The merge that made token r is found by running
    BPE on its bytes with only the merges ranked below r: it ends in exactly two parts, which
    reproduces GPT-2's vocab.bpe line for line."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    enc = GPT2Tokenizer().enc  # tiktoken's 'gpt2', offline via TIKTOKEN_CACHE_DIR
    ranks = enc._mergeable_ranks  # bytes -> rank (no public accessor in tiktoken)
    byte_to_char = bytes_to_unicode()

    def to_str(token):
        return ''.join(byte_to_char[b] for b in token)

    def bpe_parts(token, below):
        parts = [bytes([b]) for b in token]
        while True:  # merge the lowest-ranked adjacent pair, as BPE encoding does
            best = min(((ranks.get(parts[i] + parts[i + 1], below), i) for i in range(len(parts) - 1)),
                       default=(below, 0))
            if best[0] >= below:
                return parts
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]

    vocab = {to_str(t): r for t, r in ranks.items()}
    vocab.update(enc._special_tokens)  # <|endoftext|>: 50256
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = bpe_parts(token, rank)
            assert len(parts) == 2, f"token {token!r} is not one merge of lower-ranked tokens"
            merges.append((to_str(parts[0]), to_str(parts[1])))
    return vocab, merges


if gpt2_bpe:
    from transformers import GPT2Tokenizer as HFGPT2Tokenizer
    vocab, merges = gpt2_vocab_and_merges()
    if kind == 'reward':  # point 4: a pad distinct from EOS, right padding, EOS appended to every text
        from tokenizers.processors import TemplateProcessing
        # split_special_tokens=True (saved in tokenizer_config.json): a literal "<|endoftext|>" (or
        # "<|pad|>") inside a text is read as ordinary tokens, as GPT2Tokenizer.encode (encode_ordinary)
        # does for score_texts / RewardModel, not as id 50256 mid-text; the EOS the reward is read at
        # is still appended by id (the post-processor below)
        tokenizer = HFGPT2Tokenizer(vocab=vocab, merges=merges, pad_token=PAD_TOKEN, padding_side='right',
                                    truncation_side='left', model_max_length=cfg.block_size,
                                    split_special_tokens=True)
        assert tokenizer.pad_token_id == pad_id, (tokenizer.pad_token_id, pad_id)
        # tok(prompt + response) and tok(prompt, response) both end in the EOS the reward is read at
        # (truncation keeps it: it cuts the text, then adds the EOS), so any tool scores as we do
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single='$A <|endoftext|>', pair='$A $B:0 <|endoftext|>', special_tokens=[('<|endoftext|>', EOT)])
    else:  # generation: pad with EOS on the left. A literal "<|endoftext|>" in a prompt stays the EOS
        # token (default split_special_tokens=False), as sample.py reads its prompt (allow_eos=True, as
        # nanoGPT) and as GPT-2's own HF tokenizer does; the training scripts' texts never reach this one
        tokenizer = HFGPT2Tokenizer(vocab=vocab, merges=merges, pad_token='<|endoftext|>', padding_side='left',
                                    model_max_length=cfg.block_size)
    tokenizer.save_pretrained(tmp_dir)  # tokenizer.json + tokenizer_config.json
    # the classic slow-tokenizer pair as well, for tools that read GPT-2's original files
    with open(os.path.join(tmp_dir, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(tmp_dir, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + ''.join(f"{a} {b}\n" for a, b in merges))
    print(f"wrote GPT-2's tokenizer ({len(vocab)} tokens, {len(merges)} merges)")
else:
    print(f"no tokenizer files: vocab_size {cfg.vocab_size} is not GPT-2's BPE (a char-level model?); "
          f"encode with the dataset's meta.pkl")

# -----------------------------------------------------------------------------
# check: the reloaded export computes what our model computes
if verify:
    cls = GPT2ForSequenceClassification if kind == 'reward' else GPT2LMHeadModel
    reloaded = cls.from_pretrained(tmp_dir, dtype=torch.float32).eval()
    n_real = min(GPT2_VOCAB if gpt2_bpe else cfg.vocab_size, vocab_size)  # real token ids (not <|pad|>)
    idx = torch.randint(n_real, (2, min(16, cfg.block_size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if kind == 'reward':  # the score at the last token of each (unpadded) row
            theirs = reloaded(idx).logits[:, 0]
            mine = model.value(model.trunk(idx))[:, -1]
        else:
            theirs = reloaded(idx).logits
            mine = model(idx)[0][..., :vocab_size]
    diff = (theirs - mine).abs().max().item()
    what = 'score' if kind == 'reward' else 'logit'
    print(f"verify: max |{what} difference| on random tokens = {diff:.2e}")
    if not math.isfinite(diff):  # NaN > 1e-3 is False: a diverged checkpoint's NaNs would pass
        raise UserError(f"{ckpt} or its {dtype} export computes non-finite {what}s on random tokens "
                        f"(NaN/inf weights, or an overflow in {dtype}); {export_dir} is left as it was")
    if dtype == 'float32' and diff > 1e-3:
        raise UserError(f"the exported model differs from {ckpt} by {diff:.2e} (max |{what} difference|); "
                        f"{export_dir} is left as it was")

# -----------------------------------------------------------------------------
# into place: the old export renamed aside, the new one renamed in, then the old one deleted
final = os.path.abspath(export_dir)
old_dir = final + f'.old-{os.getpid()}'
if os.path.isdir(final):
    os.rename(final, old_dir)
try:
    os.rename(tmp_dir, final)
except BaseException:
    if os.path.isdir(old_dir):
        os.rename(old_dir, final)  # put the previous export back
    raise
shutil.rmtree(old_dir, ignore_errors=True)
print(f"saved {type(hf).__name__} ({dtype}){' and its tokenizer' if gpt2_bpe else ''} to {export_dir}")
