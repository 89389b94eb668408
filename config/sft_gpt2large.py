# Supervised finetuning of gpt2-large on Anthropic hh-rlhf (the chosen responses) on a 24 GB card.
#   python data/hh_rlhf/prepare.py && python train.py config/sft_gpt2large.py
# Each micro-batch is filled with whole dialogues up to 1024 tokens (token-budget batching), 32
# micro-batches per step. Memory plan (predicted, not measured): fp32 weights 3.1 GB + grads 3.1 GB
# + AdamW 6.2 GB + bf16 activations of 1024 tokens (~2 GB) + logits (~0.6 GB) ~= 15 GB.

out_dir = 'out-sft-gpt2large'
init_from = 'gpt2-large'        # downloaded by transformers; set HF_ENDPOINT for a mirror
sft_data = 'data/hh_rlhf/sft_train.jsonl'
sft_val_data = 'data/hh_rlhf/sft_val.jsonl'
truncation = 'left'             # long dialogues lose their oldest turns, never the response

block_size = 1024
tokens_per_batch = 1024         # micro-batch = as many dialogues as fit in 1024 tokens
gradient_accumulation_steps = 32

learning_rate = 1e-5
min_lr = 1e-6
warmup_iters = 50
max_iters = 1000                # ~1 epoch of hh-rlhf (160k dialogues) at ~4 dialogues per 1024 tokens
lr_decay_iters = 1000
weight_decay = 0.0
dropout = 0.0

eval_interval = 100
eval_iters = 40
log_interval = 1
always_save_checkpoint = False  # keep the best val loss in ckpt.pt

dtype = 'bfloat16'
compile = True
wandb_project = 'gpt2-rlhf'
wandb_run_name = 'sft-gpt2-large'
