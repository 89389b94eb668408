# GRPO on gpt2-large: 4 responses a prompt, group-normalised scores, no critic; KL to the reference
# in the loss (k3), as DeepSeekMath. 24 GB card.
#   python data/hh_rlhf/prepare.py
#   python train.py config/sft_gpt2large_lora.py          # the policy's start: init_from below
#   python train.py config/sft_gpt2large.py && python reward_train.py config/reward_gpt2large.py   # the reward model
#     (or the reward model from the LoRA SFT: --init_from=out-sft-gpt2large-lora, see config/ppo_gpt2large.py)
#   python ppo_train.py config/grpo_gpt2large.py
# Memory plan (predicted, not measured): as config/ppo_gpt2large.py without the value head; the
# rollout holds 8 prompts x 4 responses = 32 sequences: KV cache ~4.8 GB in bf16 at 1024 tokens.

out_dir = 'out-grpo-gpt2large'
init_from = 'out-sft-gpt2large-lora'
reward_model = 'out-reward-gpt2large/best.pt'
prompt_data = 'data/hh_rlhf/sft_train.jsonl'

lora_rank = 16
lora_alpha = 32.0
lora_targets = 'attn,mlp'

block_size = 1024
max_new_tokens = 128
temperature = 0.7
batch_size = 8                  # prompts per rollout
group_size = 4                  # responses per prompt: 32 sequences
mini_batch_size = 4
ppo_epochs = 1                  # GRPO's usual single pass over the rollout; still 32 / 4 = 8 optimiser steps a
                                # rollout, so only the first mini-batch's ratio is exactly 1 (the clip acts on the rest)

advantage_estimator = 'grpo'
kl_in_loss = True
kl_coef = 0.04
cliprange = 0.2
cliprange_high = 0.28           # DAPO's clip-higher
learning_rate = 1e-5
max_iters = 500
missing_eos_penalty = 1.0

eval_interval = 25
sample_interval = 5
dtype = 'bfloat16'
wandb_run_name = 'grpo-gpt2-large'
