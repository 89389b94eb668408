"""
One GPT-2, readable top to bottom (after karpathy/nanoGPT's model.py), with what RLHF needs:

- logits for every position, a cross-entropy loss whose masked targets are IGNORE_INDEX;
- left-padded batches: pass `attention_mask` (B, T) of 1 = real token, 0 = padding. Positions
  then come from the mask (cumsum - 1, as Hugging Face's generate does), so a left-padded row
  gives the same logits on its real tokens as the same row alone;
- an optional scalar value head (GPTConfig(value_head=True)): a zero-initialised Linear on the
  final-layer-norm hidden state. One trunk pass gives both:
      h = model.trunk(idx, attention_mask)           # (B, T, C)
      logits, values = model.lm_head(h), model.value(h)   # (B, T, V), (B, T)
  or simply `logits, loss, values = model(idx, targets, attention_mask, return_values=True)`.
  values[:, t] is the head's output on the hidden state of token t (the one that predicts
  token t+1); the reward model reads it at the last real token, the PPO critic at the
  positions that predict response tokens;
- `generate` with a KV cache for a left-padded batch of prompts, EOS handling and top-k/top-p;
- optional LoRA (Hu et al. 2021, arXiv:2106.09685): GPTConfig(lora_rank=8) or
  GPT.from_pretrained(path, lora_rank=8) puts low-rank adapters on the layers named by
  lora_targets ('attn', 'mlp' or 'attn,mlp') and freezes everything else except the value head.
  `with model.disable_adapters():` runs the frozen base model (DPO/PPO's reference, with no second
  copy of the weights); `model.merge_lora()` folds the adapters into plain Linears for export.
  QLoRA (a 4-bit frozen base) is not implemented;
- gradient checkpointing: GPTConfig(gradient_checkpointing=True), or set
  model.config.gradient_checkpointing at any time: each Block keeps only its input and is
  recomputed in backward (common.py's memory planner gives the bytes either way).

Weight names match nanoGPT's, so nanoGPT checkpoints load; GPT.from_pretrained takes the
gpt2* names, a directory saved by transformers' GPT2LMHeadModel.save_pretrained, or one of this
project's checkpoints.
"""

import contextlib
import inspect
import json
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch.nn import functional as F

IGNORE_INDEX = -1  # target value that the loss skips (prompt tokens, padding); nanoGPT's choice
HF_GPT2_NAMES = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')


class ModelLoadError(ValueError):
    """A checkpoint or pretrained directory that cannot be loaded; the message names it."""


# GPT2Config's defaults (for a hand-written config.json that leaves keys out) and the names
# transformers also accepts for its keys
_HF_GPT2_ALIASES = {'hidden_size': 'n_embd', 'num_hidden_layers': 'n_layer', 'num_attention_heads': 'n_head',
                    'max_position_embeddings': 'n_positions'}
_HF_GPT2_DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                         layer_norm_epsilon=1e-5, activation_function='gelu_new',
                         scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False)


def _read_hf_gpt2_weights(path):
    """The state dict of a directory saved by transformers' save_pretrained, read straight from
    its safetensors file(s) (one model.safetensors, or shards listed in model.safetensors.index.json)
    without importing transformers (which takes seconds to import and builds its own model first).
    None when the directory holds another layout (pytorch_model.bin, ...): transformers reads it."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        return None
    index = os.path.join(path, 'model.safetensors.index.json')
    if os.path.isfile(os.path.join(path, 'model.safetensors')):
        files = ['model.safetensors']
    elif os.path.isfile(index):
        try:
            with open(index) as f:
                files = sorted(set(json.load(f)['weight_map'].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{index} is not a safetensors index (a JSON object with a weight_map): {e!r}") from None
    else:
        return None
    sd = {}
    for name in files:
        try:
            sd.update(load_file(os.path.join(path, name)))
        except Exception as e:  # a truncated or foreign file: say which one
            raise ModelLoadError(f"{os.path.join(path, name)} could not be read: {e}") from None
    return sd



@dataclass
class GPTConfig:
    block_size: int = 1024      # longest sequence (positions); gpt2* have 1024
    vocab_size: int = 50304     # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0        # 0 for pretraining/RLHF, 0.1+ for small-data finetuning
    bias: bool = True           # biases in Linears and LayerNorms, as GPT-2
    layer_norm_epsilon: float = 1e-5
    value_head: bool = False    # add the scalar head used by the reward model and PPO critic
    lora_rank: int = 0          # LoRA adapter rank r; 0 = no LoRA (full finetuning). 8-64 is typical
    lora_alpha: float = 16.0    # the adapter output is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0   # dropout on the adapter input only; 0.05-0.1 for small data
    lora_targets: str = 'attn'  # which Linears get adapters: 'attn', 'mlp' or 'attn,mlp'
    gradient_checkpointing: bool = False  # recompute each Block's activations in backward (less memory, ~1/3 more compute)

    def __post_init__(self):  # fail at construction, naming the bad value, not deep inside GPT()
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = no LoRA), got {self.lora_rank}")
        targets = parse_lora_targets(self.lora_targets)  # raises on an unknown entry
        if self.lora_rank > 0 and not targets:
            raise ValueError("lora_rank > 0 needs at least one of lora_targets 'attn', 'mlp'")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim, bias, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


# ----------------------------------------------------------------------------------------------
# LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685)

LORA_TARGETS = ('attn', 'mlp')  # attn: attn.c_attn and attn.c_proj; mlp: mlp.c_fc and mlp.c_proj


def parse_lora_targets(targets):
    """'attn,mlp' -> {'attn', 'mlp'}; an entry that is not 'attn' or 'mlp' is a ValueError naming it."""
    names = {t.strip() for t in targets.split(',') if t.strip()}
    for t in sorted(names):
        if t not in LORA_TARGETS:
            raise ValueError(f"lora_targets: unknown target '{t}' in '{targets}' (choose among "
                             f"{', '.join(LORA_TARGETS)}, comma-separated)")
    return names


class LoRALinear(nn.Module):
    """A Linear y = x W^T + b plus a trainable low-rank update (x A^T B^T) * alpha / r.
    `weight` (out, in) and `bias` keep nn.Linear's names, so GPT-2/nanoGPT state dicts load
    unchanged; lora_A (r, in) and lora_B (out, r) are the adapter. B starts at zero, so a fresh
    adapter leaves the model exactly as it was (paper section 4.1)."""

    def __init__(self, in_features, out_features, bias, rank, alpha, dropout):
        super().__init__()
        base = nn.Linear(in_features, out_features, bias=bias)  # GPT._init_weights re-inits it
        self.weight, self.bias = base.weight, base.bias
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        # A: kaiming-uniform as nn.Linear (the paper says random Gaussian; Microsoft's loralib and
        # PEFT use this). Scaling by alpha / r means changing r needs no new learning rate (sec. 4.1)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapter_enabled = True  # False under GPT.disable_adapters(): the plain base Linear

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if not self.adapter_enabled:
            return y
        # two thin matmuls (r << in, out); never materialise the (out, in) matrix B @ A
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale

    @torch.no_grad()
    def merged(self):
        """A plain nn.Linear with W + B A * alpha / r: the same function, no adapter."""
        out = nn.Linear(self.weight.size(1), self.weight.size(0), bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        out.weight.copy_(self.weight + (self.lora_B @ self.lora_A) * self.scale)
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out


def make_linear(config, in_features, out_features, target):
    """The Linear of a Block: a LoRALinear when LoRA is on and `target` ('attn' or 'mlp') is in
    config.lora_targets, else nn.Linear. Either way the module keeps its name (c_attn, c_fc...)."""
    if config.lora_rank > 0 and target in parse_lora_targets(config.lora_targets):
        return LoRALinear(in_features, out_features, config.bias, config.lora_rank,
                          config.lora_alpha, config.lora_dropout)
    return nn.Linear(in_features, out_features, bias=config.bias)


class KVCache:
    """Keys and values of every layer for a batch, preallocated to max_len positions."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0  # how many positions are filled (the same for every layer)

    def update(self, layer, k, v):
        """Store k, v (B, nh, T, hs) at the current position; return all keys/values so far."""
        T = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.c_attn = make_linear(config, config.n_embd, 3 * config.n_embd, 'attn')  # q, k, v at once
        self.c_proj = make_linear(config, config.n_embd, config.n_embd, 'attn')
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.layer_idx = layer_idx

    def forward(self, x, attn_mask=None, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, T_past + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:  # plain causal attention: the flash kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:  # attn_mask (B, 1, T, T_k), True = may attend
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = make_linear(config, config.n_embd, 4 * config.n_embd, 'mlp')
        self.gelu = nn.GELU(approximate='tanh')  # GPT-2 was trained with the tanh approximation
        self.c_proj = make_linear(config, 4 * config.n_embd, config.n_embd, 'mlp')
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias, config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, config.bias, config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, kv_cache=None):
        x = x + self.attn(self.ln_1(x), attn_mask, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


def positions_from_mask(attention_mask):
    """Position ids (B, T) for a padded batch: each real token's index among the real tokens of
    its row (cumsum - 1); padding gets 0. This is what Hugging Face's generate uses."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def build_attn_mask(key_mask, T, past=0):
    """Boolean SDPA mask (B, 1, T, past + T): query i (absolute position past + i) may attend to
    key j when j <= past + i and key j is a real token. Every query also attends to itself, so a
    padding query is never left with no key at all (that row would be NaN); its output is
    garbage nobody reads."""
    Tk = key_mask.size(1)
    q_pos = torch.arange(past, past + T, device=key_mask.device)[:, None]  # (T, 1)
    k_pos = torch.arange(Tk, device=key_mask.device)[None, :]              # (1, Tk)
    mask = (k_pos <= q_pos) & key_mask[:, None, None, :].bool()            # (B, 1, T, Tk)
    return mask | (k_pos == q_pos)


def top_k_top_p_filter(logits, top_k=None, top_p=None):
    """Set to -inf every logit (B, V) outside the top_k largest and outside the smallest set of
    tokens whose probability sums to at least top_p (nucleus). The most likely token is always
    kept. top_k=None/0 and top_p=None/1.0 switch a filter off."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = (cum - sorted_logits.softmax(dim=-1)) >= top_p  # mass *before* this token already >= top_p
        remove[:, 0] = False
        logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float('-inf'))
    return logits


def sample_from_probs(probs, generator=None):
    """One token per row from the distributions probs (B, V) (rows sum to 1; zeros allowed) ->
    (B, 1), by inverse-CDF sampling: u ~ U[0, total), the first token whose cumulative
    probability exceeds u. It needs B uniform numbers where torch.multinomial draws B x V
    exponentials (about 20x slower on CPU for GPT-2's vocabulary). A zero-probability token
    (filtered by top-k/top-p) is never drawn: its cumulative sum equals its predecessor's, and
    the rare u that rounds up to the total goes to the last token that adds probability."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True)  # number of cumulative sums <= u
    return torch.minimum(idx, cdf.argmax(dim=-1, keepdim=True))  # argmax: where the sum last grew


def train_flops_per_token(n_params, n_layer, n_embd, seq_len, n_frozen=0):
    """Training flops (forward + backward) per token of a sequence of seq_len tokens, as the PaLM
    paper's appendix B counts them: 6 N + 12 L H Q T, with H Q = n_embd and N the parameters
    without the position embeddings (GPT.get_num_params()); less 2 per frozen one of them
    (n_frozen: LoRA's base gets no weight gradient, only its forward, 2, and input gradient, 2)."""
    return 6 * n_params - 2 * n_frozen + 12 * n_layer * n_embd * seq_len


class GPT(nn.Module):
    """GPT-2. With config.lora_rank > 0 only the LoRA adapters (lora_A, lora_B) and the value head
    (which the reward model and critic train from scratch) require grad; every other parameter is
    frozen at construction, and merge_lora() makes them all trainable again."""

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, config.bias, config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.value_head = nn.Linear(config.n_embd, 1) if config.value_head else None
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # GPT-2 paper: scaled init of residual projections
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if self.value_head is not None:  # zero init: values start at 0, the trunk is unchanged
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        if config.lora_rank > 0:  # LoRA: the pretrained weights stay fixed, only adapters learn
            for pn, p in self.named_parameters():
                p.requires_grad = pn.endswith(('.lora_A', '.lora_B')) or pn.startswith('value_head.')

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, LoRALinear)):  # lora_A/lora_B keep their own init
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count; position embeddings are subtracted by default (token embeddings
        are shared with lm_head, so they count as weights), as nanoGPT does."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    # ------------------------------------------------------------------------------------------
    # forward

    def trunk(self, idx, attention_mask=None, position_ids=None, kv_cache=None):
        """Hidden states after the final layer norm, (B, T, C). attention_mask (B, T_past + T):
        1 = real token, 0 = padding; with a kv_cache it covers the cached positions too."""
        B, T = idx.size()
        past = kv_cache.pos if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of length {past + T} is longer than block_size {self.config.block_size}")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, past:past + T]
            else:
                position_ids = torch.arange(past, past + T, device=idx.device)[None, :]
        attn_mask = None
        if attention_mask is not None or past > 0 or (kv_cache is not None and T > 1):
            key_mask = attention_mask if attention_mask is not None else torch.ones(B, past + T, device=idx.device)
            attn_mask = build_attn_mask(key_mask[:, :past + T], T, past)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(position_ids))
        # gradient checkpointing (Chen et al. 2016, arXiv:1604.06174): keep only each Block's input
        # and recompute its activations during backward. Only when a backward can follow (grad
        # enabled, no KV cache). Non-reentrant (use_reentrant=False): works with inputs that do
        # not require grad (LoRA's frozen embeddings) and with the attention mask; the RNG state is
        # saved and restored (preserve_rng_state, the default), so dropout draws the same masks
        # when a Block is recomputed.
        recompute = self.config.gradient_checkpointing and torch.is_grad_enabled() and kv_cache is None
        for block in self.transformer.h:
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.transformer.ln_f(x)

    def value(self, h):
        """Scalar value of each hidden state: (B, T, C) -> (B, T), in float32: the head runs outside
        autocast, in its weights' precision (bf16 would round a reward of 2-4 to steps of 1/64)."""
        if self.value_head is None:
            raise ValueError("this model has no value head: build it with value_head=True")
        with torch.autocast(h.device.type, enabled=False):
            return self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()

    def forward(self, idx, targets=None, attention_mask=None, position_ids=None, return_values=False):
        """idx (B, T) token ids -> logits (B, T, V) and, with targets (B, T), the mean
        cross-entropy over targets != IGNORE_INDEX (else loss is None). return_values=True adds
        the value head's (B, T) output from the same trunk pass: (logits, loss, values)."""
        h = self.trunk(idx, attention_mask, position_ids)
        logits = self.lm_head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        if return_values:
            return logits, loss, self.value(h)
        return logits, loss

    # ------------------------------------------------------------------------------------------
    # building, loading, saving

    def crop_block_size(self, block_size):
        """Shrink the model's context (e.g. gpt2's 1024 down to 256) by cutting position embeddings."""
        assert block_size <= self.config.block_size, f"can only crop: {block_size} > {self.config.block_size}"
        self.config.block_size = block_size
        wpe = self.transformer.wpe.weight  # a new Parameter would require grad: keep LoRA's freeze
        self.transformer.wpe.weight = nn.Parameter(wpe[:block_size], requires_grad=wpe.requires_grad)

    def load_state_dict_checked(self, state_dict, source):
        """load_state_dict that tolerates nanoGPT's torch.compile prefix, and a value head or LoRA
        adapters missing from the source (plain GPT-2 weights into a value/LoRA model: they keep
        their init, zero head and B = 0), and turns any other mismatch into one clear
        ModelLoadError naming `source`."""
        sd = {k.removeprefix('_orig_mod.').removeprefix('module.'): v for k, v in state_dict.items()}
        own = self.state_dict()
        missing = [k for k in own if k not in sd and not k.startswith('value_head.')
                   and not k.endswith(('.lora_A', '.lora_B'))]
        unexpected = [k for k in sd if k not in own and not k.endswith('.attn.bias')]  # old nanoGPT mask buffer
        shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            parts = []
            if shapes:
                parts.append(f"shape mismatch {shapes[0]}" + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
            if missing:
                parts.append(f"missing {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
            if unexpected:
                parts.append(f"unexpected {unexpected[0]}" + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
            raise ModelLoadError(f"{source} does not fit this model ({self.config.n_layer} layers, "
                                 f"{self.config.n_head} heads, n_embd {self.config.n_embd}, "
                                 f"vocab {self.config.vocab_size}): " + "; ".join(parts))
        self.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)

    @classmethod
    def from_checkpoint(cls, path, device='cpu', **overrides):
        """A model from one of this project's checkpoint files (or a directory holding ckpt.pt).
        Returns (model, checkpoint dict)."""
        if os.path.isdir(path):
            path = os.path.join(path, 'ckpt.pt')
        if not os.path.isfile(path):
            raise ModelLoadError(f"checkpoint {path} not found")
        try:
            checkpoint = torch.load(path, map_location=device, weights_only=False)
        except Exception as e:  # a truncated or foreign file: say which one
            raise ModelLoadError(f"checkpoint {path} could not be read: {e}") from None
        if not isinstance(checkpoint, dict) or 'model' not in checkpoint or 'model_args' not in checkpoint:
            raise ModelLoadError(f"{path} is not a checkpoint of this project (no 'model'/'model_args')")
        known = {f.name for f in fields(GPTConfig)}
        model_args = {k: v for k, v in checkpoint['model_args'].items() if k in known}
        block_size = overrides.pop('block_size', None)
        if block_size is not None and block_size > model_args.get('block_size', 1024):  # only a crop is possible
            raise ModelLoadError(f"block_size={block_size} is larger than {path}'s {model_args.get('block_size', 1024)}")
        model = cls(GPTConfig(**{**model_args, **overrides}))
        model.load_state_dict_checked(checkpoint['model'], path)
        if block_size is not None and block_size < model.config.block_size:
            model.crop_block_size(block_size)
        return model, checkpoint

    @classmethod
    def from_pretrained(cls, name_or_path, **overrides):
        """GPT-2 weights from `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl` (downloaded by
        transformers; set HF_ENDPOINT for a mirror), a directory saved by
        GPT2LMHeadModel.save_pretrained (sizes read from its config.json), or a directory/file of
        this project's checkpoint (ckpt.pt). overrides: dropout, value_head, block_size (crops),
        gradient_checkpointing, lora_rank, lora_alpha, lora_dropout, lora_targets (adapters on top of the loaded weights)."""
        allowed = {'dropout', 'value_head', 'block_size', 'gradient_checkpointing',
                   'lora_rank', 'lora_alpha', 'lora_dropout', 'lora_targets'}
        assert set(overrides) <= allowed, f"from_pretrained overrides must be in {allowed}"
        is_dir = os.path.isdir(name_or_path)
        if os.path.isfile(name_or_path) or (is_dir and os.path.isfile(os.path.join(name_or_path, 'ckpt.pt'))):
            return cls.from_checkpoint(name_or_path, **overrides)[0]
        if not is_dir and name_or_path not in HF_GPT2_NAMES:
            raise ModelLoadError(f"'{name_or_path}' is neither a directory nor one of {', '.join(HF_GPT2_NAMES)}")
        if is_dir and not os.path.isfile(os.path.join(name_or_path, 'config.json')):
            raise ModelLoadError(f"directory {name_or_path} has neither ckpt.pt nor a Hugging Face config.json")
        if is_dir:
            config_path = os.path.join(name_or_path, 'config.json')
            try:
                with open(config_path) as f:
                    c = json.load(f)
            except ValueError as e:
                raise ModelLoadError(f"{config_path} is not valid JSON: {e}") from None
            if not isinstance(c, dict):
                raise ModelLoadError(f"{config_path} is not a model config (a JSON object)")
            sd = _read_hf_gpt2_weights(name_or_path)  # None: a layout only transformers reads
        else:
            c, sd = None, None
        if sd is None:
            from transformers import GPT2LMHeadModel  # heavy import, only when needed
            try:
                hf = GPT2LMHeadModel.from_pretrained(name_or_path, dtype=torch.float32)
            except OSError as e:  # no network, a hub error, a mirror without the files; a directory without weights
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if is_dir:
                    raise ModelLoadError(f"{name_or_path} has no weights transformers can load ({first[:160]})") from None
                raise ModelLoadError(f"could not load {name_or_path} from the Hugging Face hub ({first[:160]}); "
                                     f"offline, pass a local directory saved with save_pretrained, or set "
                                     f"HF_ENDPOINT to a mirror") from None
            c, sd = hf.config.to_dict(), hf.state_dict()
        c = {_HF_GPT2_ALIASES.get(k, k): v for k, v in c.items() if v is not None}
        c = {**_HF_GPT2_DEFAULTS, **c}
        if c.get('model_type', 'gpt2') != 'gpt2':
            raise ModelLoadError(f"{name_or_path}: a {c['model_type']} model, not GPT-2")
        if c['activation_function'] not in ('gelu_new', 'gelu_pytorch_tanh'):
            raise ModelLoadError(f"{name_or_path}: activation {c['activation_function']} is not GPT-2's tanh GELU")
        if not c['scale_attn_weights'] or c['scale_attn_by_inverse_layer_idx']:
            raise ModelLoadError(f"{name_or_path}: attention scaled other than GPT-2's 1/sqrt(head_dim) "
                                 "(scale_attn_weights=false or scale_attn_by_inverse_layer_idx=true)")
        if c.get('n_inner') not in (None, 4 * c['n_embd']):
            raise ModelLoadError(f"{name_or_path}: MLP width n_inner={c['n_inner']}; this GPT's is 4 * n_embd = {4 * c['n_embd']}")
        # HF keys: the trunk's with a 'transformer.' prefix (GPT2LMHeadModel) or without (GPT2Model);
        # lm_head tied to wte (save_pretrained keeps wte, safetensors' save_model may keep lm_head).
        # Other heads (a classifier's score.weight) keep their names: load_state_dict_checked names them
        trunk = ('wte.', 'wpe.', 'h.', 'ln_f.')
        sd = {'transformer.' + k if k.startswith(trunk) else k: v for k, v in sd.items()
              if not k.endswith(('.attn.masked_bias', '.attn.bias'))}
        # HF's Conv1D stores these weights as (in, out); our Linears want (out, in). Converted one
        # tensor at a time, so a float16/bfloat16 file's tensors go as their float32 copies come
        transposed = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
        for k in list(sd):
            sd[k] = (sd[k].t() if k.endswith(transposed) else sd[k]).float()
        wte, head = sd.get('transformer.wte.weight'), sd.get('lm_head.weight')
        if wte is not None and head is not None and head is not wte and not torch.equal(head, wte):
            raise ModelLoadError(f"{name_or_path}: lm_head is not tied to the token embedding "
                                 "(tie_word_embeddings=false); this GPT ties them, as GPT-2 does")
        if wte is None and head is not None:
            sd['transformer.wte.weight'] = head
        elif wte is not None:
            sd['lm_head.weight'] = wte
        block_size = overrides.pop('block_size', None)
        config = GPTConfig(block_size=c['n_positions'], vocab_size=c['vocab_size'], n_layer=c['n_layer'],
                           n_head=c['n_head'], n_embd=c['n_embd'], bias=True,
                           layer_norm_epsilon=c['layer_norm_epsilon'], **overrides)
        if block_size is not None and block_size > config.block_size:  # only a crop is possible
            raise ModelLoadError(f"block_size={block_size} is larger than {name_or_path}'s {config.block_size}")
        model = cls(config)
        model.load_state_dict_checked(sd, name_or_path)
        if block_size is not None and block_size < config.block_size:
            model.crop_block_size(block_size)
        return model

    def param_groups(self, weight_decay):
        """The trainable parameters in two optimizer groups: matrices (>= 2-D: Linears, embeddings)
        decayed by weight_decay, biases and layer norms not decayed."""
        params = [p for p in self.parameters() if p.requires_grad]
        # LoRA's lora_A/lora_B are 2-D, so they are decayed too: what PEFT + AdamW does as well
        return [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices (>= 2-D: Linears, embeddings) and none on biases
        and layer norms; only parameters that require grad (so frozen/LoRA setups work).
        Fused AdamW on CUDA."""
        groups = self.param_groups(weight_decay)
        use_fused = 'fused' in inspect.signature(torch.optim.AdamW).parameters and device_type == 'cuda'
        extra = dict(fused=True) if use_fused else dict()
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    def estimate_mfu(self, fwdbwd_per_iter, dt, flops_promised=312e12, seq_len=None):
        """Model flops utilisation: achieved training flops per second over `flops_promised`
        (default: A100 bf16 peak, 312 TFLOPS; an RTX 4090 is about 165e12 dense bf16 with fp32
        accumulate, a 4090D, with 114 of its 128 SMs, about 147e12). fwdbwd_per_iter sequences of
        seq_len tokens (default block_size; SFT's rows are shorter). Flops per token per the PaLM
        paper, appendix B: 6N + 12 L H Q T (less the weight gradients of frozen weights, 2 flops per
        parameter, with LoRA)."""
        T = seq_len or self.config.block_size
        n_frozen = sum(p.numel() for n, p in self.named_parameters()
                       if not p.requires_grad and n != 'transformer.wpe.weight')  # LoRA's base
        flops_per_iter = train_flops_per_token(self.get_num_params(), self.config.n_layer, self.config.n_embd, T,
                                               n_frozen)
        return flops_per_iter * T * fwdbwd_per_iter / dt / flops_promised

    # ------------------------------------------------------------------------------------------
    # LoRA

    @contextlib.contextmanager
    def disable_adapters(self):
        """`with model.disable_adapters():` every LoRALinear computes only its frozen base Linear,
        so the same weights give DPO/PPO's reference model. The previous state comes back on exit,
        even if the body raises. A model without adapters is an error: here the "reference" would
        silently be the policy itself."""
        lora = [m for m in self.modules() if isinstance(m, LoRALinear)]
        if not lora:
            raise ValueError("this model has no LoRA adapters (lora_rank=0 or merged): "
                             "disable_adapters would return the policy itself, not a reference")
        before = [m.adapter_enabled for m in lora]
        for m in lora:
            m.adapter_enabled = False
        try:
            yield self
        finally:
            for m, enabled in zip(lora, before):
                m.adapter_enabled = enabled

    def with_new_adapters(self, **lora):
        """This model's function with fresh LoRA adapters on top (B = 0, so nothing changes yet):
        adapters the model already has (a LoRA SFT checkpoint) are merged into its base weights
        first, so that disabling the new adapters gives back this model, not its pre-adapter base.
        That is what LoRA DPO and PPO need: their reference is the adapters-off policy and must be
        init_from itself. lora: lora_rank, lora_alpha, lora_dropout, lora_targets. Merges self's
        adapters in place; returns a new GPT on the CPU."""
        base = self.merge_lora().state_dict()
        model = GPT(GPTConfig(**{**asdict(self.config), **lora}))
        model.load_state_dict_checked(base, 'the merged model')  # the new adapters keep their init
        return model

    def merge_lora(self):
        """Fold every adapter into its weight (W + B A * alpha / r), leaving plain nn.Linears, a
        config with lora_rank 0 and every parameter trainable: a plain GPT-2 for export/sampling.
        Returns self."""
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, LoRALinear):
                    setattr(module, name, child.merged())
        self.config.lora_rank = 0
        for p in self.parameters():
            p.requires_grad = True
        return self

    # ------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 attention_mask=None, eos_token_id=None, pad_token_id=None, use_cache=True,
                 generator=None, return_logprobs=False):
        """Continue a batch of prompts idx (B, T) — left-padded when attention_mask (B, T) has
        zeros — by up to max_new_tokens tokens. temperature=0 is greedy (argmax); otherwise
        sample from softmax(logits / temperature) after top_k/top_p filtering, with `generator`
        for reproducible draws. Once a row emits eos_token_id, every later token of that row is
        pad_token_id (default: eos_token_id); generation stops early when every row has finished.
        Returns (B, T + n), n <= max_new_tokens. use_cache=False recomputes the whole sequence
        every step (slow; the reference the KV cache is tested against); so does a prompt plus
        max_new_tokens longer than block_size, whose context is cropped to the last block_size
        tokens each step, as nanoGPT's sample.py does. return_logprobs=True also returns (B, n):
        log softmax(logits / temperature) of each new token under the full distribution (before
        top-k/top-p filtering), the quantity PPO recomputes in training; 0 after a row's EOS."""
        B, T = idx.size()
        if max_new_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 0) \
                or (top_p is not None and not 0 <= top_p <= 1):
            raise ValueError(f"generate needs max_new_tokens >= 0, temperature >= 0, top_k >= 0 and top_p in "
                             f"[0, 1]; got {max_new_tokens}, {temperature}, {top_k}, {top_p}")
        if T + max_new_tokens > self.config.block_size:
            use_cache = False  # then crop the context to the last block_size tokens each step (nanoGPT)
        if pad_token_id is None:
            pad_token_id = eos_token_id
        mask = attention_mask.long() if attention_mask is not None else torch.ones_like(idx)
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
        kv_cache = None
        if use_cache:
            dtype = self.transformer.wte.weight.dtype
            if torch.is_autocast_enabled(idx.device.type):
                dtype = torch.get_autocast_dtype(idx.device.type)
            kv_cache = KVCache(self.config, B, T + max_new_tokens, idx.device, dtype)
        next_input = idx
        logprobs = []
        for _ in range(max_new_tokens):
            if kv_cache is not None:  # prefill the whole prompt once, then one token a step
                h = self.trunk(next_input, mask, kv_cache=kv_cache)
            else:
                h = self.trunk(idx[:, -self.config.block_size:], mask[:, -self.config.block_size:])
            # (V, C) @ (C, B): with few rows a CPU BLAS streams the weight instead of repacking it
            # every step (2x faster decoding on CPU, measured with bench.py); same numbers. Outside
            # autocast: bf16 would round GPT-2's logits (tens) by up to 0.25, and return_logprobs
            # must match the training pass's (common.response_forward), which does the same
            with torch.autocast(idx.device.type, enabled=False):
                w = self.lm_head.weight
                logits = (w @ h[:, -1, :].to(w.dtype).T).T.float()  # (B, V)
            scaled = logits / temperature if temperature > 0 else logits
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                filtered = top_k_top_p_filter(scaled, top_k, top_p)
                idx_next = sample_from_probs(filtered.softmax(dim=-1), generator)
            if return_logprobs:
                lp = scaled.log_softmax(dim=-1).gather(1, idx_next).squeeze(1)
                logprobs.append(lp.masked_fill(finished, 0.0))
            if eos_token_id is not None:
                idx_next = idx_next.masked_fill(finished[:, None], pad_token_id)
                finished |= idx_next.squeeze(1) == eos_token_id
            idx = torch.cat((idx, idx_next), dim=1)
            mask = torch.cat((mask, torch.ones_like(idx_next)), dim=1)
            next_input = idx_next
            if eos_token_id is not None and bool(finished.all()):
                break
        if return_logprobs:
            return idx, torch.stack(logprobs, dim=1) if logprobs else torch.zeros(B, 0, device=idx.device)
        return idx
