# The baby GPT shrunk for a laptop CPU (no GPU): ~3 minutes on 2 cores, val loss <= 1.89.
# The same recipe as nanoGPT's README "I only have a macbook" run.
#   python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py

out_dir = 'out-shakespeare-char'
eval_interval = 250
eval_iters = 20             # fewer eval batches: evaluation is a big part of a CPU run
log_interval = 10
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False
