# PPO on gpt2-large: the LoRA SFT policy against the project's reward model, hh-rlhf prompts, 24 GB card.
#   python data/hh_rlhf/prepare.py
#   python train.py config/sft_gpt2large_lora.py          # the policy's start: init_from below
#   python train.py config/sft_gpt2large.py && python reward_train.py config/reward_gpt2large.py   # the reward model
#     (one SFT run instead of two: python reward_train.py config/reward_gpt2large.py
#      --init_from=out-sft-gpt2large-lora, whose adapters are merged and every weight trains)
#   python ppo_train.py config/ppo_gpt2large.py
# Memory plan (predicted, not measured): LoRA rank 16 on the policy, so the reference is the same
# weights with adapters disabled (no copy) and the critic is a value head on the policy trunk:
# policy fp32 3.1 GB + adapters/value head with grads and AdamW ~0.3 GB + reward model (gpt2-large,
# bf16 autocast, fp32 weights) 3.1 GB + KV cache for 16 x 1024 tokens in bf16 (~2.4 GB) + training
# activations of 4 x 1024 tokens in bf16 (~7 GB) + logits of the mini-batch (~1 GB) ~= 17 GB.

out_dir = 'out-ppo-gpt2large'
init_from = 'out-sft-gpt2large-lora'
reward_model = 'out-reward-gpt2large/best.pt'
prompt_data = 'data/hh_rlhf/sft_train.jsonl'

lora_rank = 16
lora_alpha = 32.0
lora_targets = 'attn,mlp'

block_size = 1024               # prompt + response <= 1024: prompts over 896 tokens are skipped
max_new_tokens = 128
temperature = 0.7
batch_size = 16                 # prompts per rollout
mini_batch_size = 4
ppo_epochs = 4

advantage_estimator = 'gae'
critic = 'shared'
kl_coef = 0.05
adaptive_kl = True
target_kl = 6.0
kl_horizon = 320                # Ziegler et al.'s gain per rollout (512 episodes / 10000) for 16 sequences
vf_coef = 0.1
learning_rate = 1e-5            # LoRA adapters; full finetuning wants ~1e-6
max_iters = 500
missing_eos_penalty = 1.0

eval_interval = 25
sample_interval = 5
dtype = 'bfloat16'
wandb_run_name = 'ppo-gpt2-large'
