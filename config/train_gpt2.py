# GPT-2 (124M) from scratch on OpenWebText (nanoGPT's recipe): reaches ~2.85 val loss.
# 8x A100: torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py (~4 days).
# One GPU works too (gradient_accumulation_steps 40 stays the total across ranks), just 8x slower.
# Data first: python data/openwebtext/prepare.py (~54 GB of disk during preparation).

wandb_log = False           # set True to follow the run on wandb
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

# 12 batch size * 1024 block size * 40 grad accum = ~491,520 tokens per step
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# 600,000 steps = ~300B tokens
max_iters = 600000
lr_decay_iters = 600000

eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1
