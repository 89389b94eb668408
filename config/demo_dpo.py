# Demo stage 4 (python demo.py runs it at each of its dpo_betas): DPO of the pretrained char model
# on the same labelled pairs as the reward model, against a frozen copy of itself.
out_dir = 'out-demo/dpo'
init_from = 'out-demo/pretrain'
tokenizer = 'shakespeare_char'
pref_data = 'out-demo/pairs.jsonl'
pref_val_data = ''
val_fraction = 0.1

beta = 0.1
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 10
max_iters = 100
lr_decay_iters = 100
grad_clip = 1.0

eval_interval = 50
eval_iters = 10
log_interval = 10

device = 'cpu'
compile = False
