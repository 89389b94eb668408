# Demo stage 1 (python demo.py runs it): a small char-level GPT on tiny Shakespeare, ~2.5 minutes on
# 2 CPU cores. block_size 128 holds a prompt (the two lines before, and the first word of a line)
# and a response (the rest of that line, ended by '\n').
out_dir = 'out-demo/pretrain'
eval_interval = 600
eval_iters = 20
log_interval = 50
always_save_checkpoint = True

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 16
block_size = 128

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 2e-3
max_iters = 1200
lr_decay_iters = 1200
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 50

device = 'cpu'
compile = False
