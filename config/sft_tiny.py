# A tiny SFT run on CPU in about a minute: a small random GPT trained from scratch on the
# hh-rlhf sample, to check the pipeline end to end (it will not learn to chat).
#   python data/hh_rlhf/prepare.py --input ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
#   python train.py config/sft_tiny.py && python sample.py --out_dir=out-sft-tiny --chat=True --start="Hi"

out_dir = 'out-sft-tiny'
init_from = 'scratch'
sft_data = 'data/hh_rlhf/sft_train.jsonl'
sft_val_data = 'data/hh_rlhf/sft_val.jsonl'

n_layer = 2
n_head = 2
n_embd = 64
block_size = 256
tokens_per_batch = 1024
gradient_accumulation_steps = 1

learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 10
max_iters = 100
lr_decay_iters = 100

eval_interval = 50
eval_iters = 10
log_interval = 10

device = 'cpu'
compile = False
