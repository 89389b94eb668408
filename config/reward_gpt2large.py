# Reward model from the SFT gpt2-large on hh-rlhf preference pairs, on a 24 GB card.
#   python data/hh_rlhf/prepare.py
#   python train.py config/sft_gpt2large.py && python reward_train.py config/reward_gpt2large.py
# Memory plan (predicted, not measured): fp32 weights 3.1 GB + grads 3.1 GB + AdamW 6.2 GB + bf16
# activations of one pair (2 x 1024 tokens, ~3.5 GB) ~= 16 GB; no logits unless chosen_lm_coef > 0
# (then + ~0.6 GB).

out_dir = 'out-reward-gpt2large'
init_from = 'out-sft-gpt2large'  # the SFT checkpoint (or 'gpt2-large')
pref_data = 'data/hh_rlhf/pref_train.jsonl'
pref_val_data = 'data/hh_rlhf/pref_val.jsonl'

block_size = 1024
batch_size = 1                  # pairs per micro-batch: 2 sequences
gradient_accumulation_steps = 32

learning_rate = 9e-6            # as TRL/N+ reward models: small, one epoch
min_lr = 9e-7
warmup_iters = 20
max_iters = 1000                # ~32k pairs: a fifth of hh-rlhf's 160k
lr_decay_iters = 1000
weight_decay = 0.0
chosen_lm_coef = 0.0

eval_interval = 100
eval_iters = 200
log_interval = 1

dtype = 'bfloat16'
compile = True
wandb_run_name = 'reward-gpt2-large'
