# SFT of gpt2-large on hh-rlhf with LoRA adapters (rank 16 on attention and MLP): only ~1% of the
# weights train, so gradients and AdamW states are tiny.
#   python data/hh_rlhf/prepare.py && python train.py config/sft_gpt2large_lora.py
# Memory plan (predicted, not measured): fp32 frozen weights 3.1 GB + adapters with grads and AdamW
# (~0.2 GB) + bf16 activations of 1024 tokens (~2 GB) + logits (~0.6 GB) ~= 6 GB.
# Export/sampling: the checkpoint holds base + adapters; model.merge_lora() folds them.

out_dir = 'out-sft-gpt2large-lora'
init_from = 'gpt2-large'
sft_data = 'data/hh_rlhf/sft_train.jsonl'
sft_val_data = 'data/hh_rlhf/sft_val.jsonl'

lora_rank = 16
lora_alpha = 32.0
lora_dropout = 0.05
lora_targets = 'attn,mlp'

block_size = 1024
tokens_per_batch = 1024
gradient_accumulation_steps = 32

learning_rate = 2e-4            # adapters want a much larger learning rate than full finetuning
min_lr = 2e-5
warmup_iters = 50
max_iters = 1000
lr_decay_iters = 1000
weight_decay = 0.0

eval_interval = 100
eval_iters = 40
log_interval = 1
always_save_checkpoint = False

dtype = 'bfloat16'
compile = True
wandb_project = 'gpt2-rlhf'
wandb_run_name = 'sft-gpt2-large-lora'
