"""
Sample from a trained model, a batch at a time, with the KV-cache `generate` of model.py.

    python sample.py --out_dir=out-shakespeare-char                 # this project's checkpoint
    python sample.py --init_from=gpt2-large --start="What is the answer to life?" --num_samples=4
    python sample.py --init_from=path/to/hf_dir --start=FILE:prompt.txt --temperature=0
    python sample.py --out_dir=out-sft-gpt2large --chat=True --start="How do I bake bread?"  # SFT model
    python sample.py --out_dir=out-sft-gpt2large --chat=True --score=out-reward-gpt2large/best.pt  # + reward

init_from='resume' reads out_dir/<ckpt> (ckpt.pt, or best.pt), init_from=<checkpoint file or
directory> that checkpoint; for either the tokenizer is the char-level one of the checkpoint's
dataset when data/<dataset>/meta.pkl exists, else GPT-2's BPE (gpt2* and HF directories: GPT-2's).
"""

import os
import sys

import torch

from common import (CHAT_TAGS, GPT2Tokenizer, RewardModel, UserError, check_tokenizer_vocab, configure, get_tokenizer,
                    print_config, require_positive, seed_everything, setup_device)
from model import GPT

# -----------------------------------------------------------------------------
init_from = 'resume'        # 'resume' (out_dir/ckpt) | 'gpt2*' | HF directory | checkpoint file/dir
out_dir = 'out'             # where init_from='resume' looks
ckpt = 'ckpt.pt'            # which checkpoint in out_dir: ckpt.pt (last) or best.pt
start = "\n"                # prompt; "FILE:prompt.txt" reads it from a file; "<|endoftext|>" works for GPT-2
num_samples = 10            # how many samples to draw
batch_size = 10             # samples generated together in one batch
max_new_tokens = 500        # tokens generated per sample
temperature = 0.8           # 1.0 = the model's distribution, < 1 sharper, 0 = greedy
top_k = 200                 # keep only the top_k most likely tokens (0: all)
top_p = 1.0                 # nucleus sampling: keep the smallest set with this much probability
chat = False                # wrap start in the chat format ("\n\nHuman: {start}\n\nAssistant:"), stop at EOS
score = ''                  # a reward checkpoint (reward_train.py): print each sample's reward after it
                            # (raw r; PPO with normalize_reward=True uses (r - reward_mean) / reward_std)
seed = 1337
device = 'auto'             # 'auto' | 'cpu' | 'cuda' | 'mps'
dtype = 'auto'              # 'auto' | 'float32' | 'bfloat16' | 'float16'
compile = False             # nanoGPT's key, kept for its command lines: generation runs eager (see below)
# -----------------------------------------------------------------------------
config = configure(globals())
print_config(config, file=sys.stderr)  # stdout holds only the samples
require_positive(config, 'num_samples', 'batch_size')
for name, ok in (('max_new_tokens', max_new_tokens >= 0), ('temperature', temperature >= 0),
                 ('top_k', top_k is None or top_k >= 0), ('top_p', top_p is None or 0 <= top_p <= 1)):
    if not ok:  # e.g. temperature=-0.01 would otherwise sample at 1.0
        raise UserError(f"{name}={config[name]!r}: max_new_tokens, temperature and top_k must be >= 0 "
                        f"(temperature 0 = greedy, top_k 0 = off), top_p in [0, 1]")
# -----------------------------------------------------------------------------

device, device_type, dtype, ctx = setup_device(device, dtype)
seed_everything(seed)
generator = torch.Generator(device=device).manual_seed(seed)

dataset = None
is_checkpoint = os.path.isfile(init_from) or os.path.isfile(os.path.join(init_from, 'ckpt.pt'))
if init_from == 'resume' or is_checkpoint:  # this project's checkpoint: its dataset names its tokenizer
    path = os.path.join(out_dir, ckpt) if init_from == 'resume' else init_from
    model, checkpoint = GPT.from_checkpoint(path, device='cpu')
    dataset = checkpoint.get('config', {}).get('tokenizer') or checkpoint.get('config', {}).get('dataset')
else:
    model = GPT.from_pretrained(init_from)
model.eval().to(device)
if compile:  # torch.compile(model) would not reach generate (a method of the eager module), as in nanoGPT
    print("note: compile=True has no effect here: generate's KV-cache steps run eager")
tokenizer = get_tokenizer(dataset)
if isinstance(tokenizer, GPT2Tokenizer) and model.config.vocab_size < tokenizer.n_vocab:  # not GPT-2's BPE
    where = (f" and data/{dataset}/meta.pkl was not found: run sample.py from the directory holding data/"
             if dataset else " and no char-level dataset is named")
    raise UserError(f"the model's vocabulary ({model.config.vocab_size} tokens) is not GPT-2's BPE{where}")
if dataset:  # a checkpoint's char-level vocabulary must be its model's (a GPT-2 model sampled ids it cannot decode)
    check_tokenizer_vocab(tokenizer, model.config.vocab_size, f"{path}, whose config names dataset {dataset!r},")

if start.startswith('FILE:'):
    path = start[5:]
    if not os.path.isfile(path):
        raise UserError(f"prompt file {path} not found")
    with open(path, encoding='utf-8') as f:
        start = f.read()
eos_token_id = None
if chat:  # an SFT model answers and then emits EOS (<|endoftext|>); print only the answer
    if not isinstance(tokenizer, GPT2Tokenizer):
        raise UserError("chat=True needs GPT-2's BPE tokenizer (its chat tags and <|endoftext|>), not a char-level one")
    # the user's turn as SFT data has it: no surrounding whitespace (a prompt file's final newline would make
    # "...?\n\n\nAssistant:", a prompt the model never saw)
    start = f"{CHAT_TAGS['user']} {start.strip()}{CHAT_TAGS['assistant']}"
    eos_token_id = tokenizer.eot_token
start_ids = tokenizer.encode(start, allow_eos=True)  # a literal <|endoftext|> is the EOS token (nanoGPT)
if not start_ids:
    raise UserError("the prompt is empty: give --start=... (at least one token)")

scorer = RewardModel(score, device, dtype) if score else None

with torch.no_grad(), ctx:
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        x = torch.tensor([start_ids] * n, dtype=torch.long, device=device)  # (n, T)
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           eos_token_id=eos_token_id, generator=generator)
        for row in y.tolist():
            response = row[len(start_ids):]
            ended = eos_token_id in response
            if ended:  # the response alone, cut at its EOS
                response = response[:response.index(eos_token_id)]
            print(tokenizer.decode(response if chat else row))
            if scorer is not None:  # scored as prompt + response + EOS, as the reward model was trained
                text = tokenizer.decode(response)
                cut = "" if ended or not chat else " (no EOS within max_new_tokens: scored as if it ended here)"
                n_tokens, room = len(scorer.tokenizer.encode(text)), scorer.model.config.block_size - 2
                if n_tokens > room:  # RewardModel keeps the end, where the reward is read (as in ppo_train.py)
                    cut += f" (response of {n_tokens} tokens: scored on its last {room}, as many as fit the reward model)"
                print(f"reward: {scorer.score([start], [text])[0].item():.4f}{cut}")
            print('---------------')
        done += n
