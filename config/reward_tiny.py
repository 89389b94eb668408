# A tiny reward model on CPU in a few minutes, from the tiny SFT model of config/sft_tiny.py:
#   python data/hh_rlhf/prepare.py --input ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
#   python train.py config/sft_tiny.py && python reward_train.py config/reward_tiny.py

out_dir = 'out-reward-tiny'
init_from = 'out-sft-tiny'
pref_data = 'data/hh_rlhf/pref_train.jsonl'
pref_val_data = 'data/hh_rlhf/pref_val.jsonl'

block_size = 256
batch_size = 16
gradient_accumulation_steps = 1
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 10
max_iters = 300
lr_decay_iters = 300
weight_decay = 0.0

eval_interval = 100
eval_iters = 100                # the whole val split (230 pairs)
log_interval = 10
norm_samples = 256

device = 'cpu'
compile = False
