# A tiny DPO run on CPU in a few minutes: the tiny SFT model against itself on the hh-rlhf sample,
# to check the pipeline end to end (the model is too small to learn much from hh-rlhf). The reference
# runs on line: precomputing it would cost a forward pass over all ~2,300 pairs, far more than the
# 120 pairs these 30 iterations see (--precompute_ref_logps=True to try the cache anyway).
#   python data/hh_rlhf/prepare.py --input ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
#   python train.py config/sft_tiny.py && python dpo_train.py config/dpo_tiny.py

out_dir = 'out-dpo-tiny'
init_from = 'out-sft-tiny'
pref_data = 'data/hh_rlhf/pref_train.jsonl'
pref_val_data = 'data/hh_rlhf/pref_val.jsonl'
beta = 0.1  # dpo_train.py's default, set here so bench.py --plan knows this is a DPO config

block_size = 256
batch_size = 2
gradient_accumulation_steps = 2

learning_rate = 1e-4
min_lr = 1e-5
warmup_iters = 5
max_iters = 30
lr_decay_iters = 30
grad_clip = 1.0

eval_interval = 15
eval_iters = 5
log_interval = 5

device = 'cpu'
compile = False
