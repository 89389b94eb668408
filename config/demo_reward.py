# Demo stage 3 (python demo.py runs it): a reward model from the pretrained char model, on the
# preference pairs the demo sampled and labelled with its true (positivity) reward.
out_dir = 'out-demo/reward'
init_from = 'out-demo/pretrain'
tokenizer = 'shakespeare_char'          # char level; '\n' ends a response
pref_data = 'out-demo/pairs.jsonl'
pref_val_data = ''                      # hold out val_fraction of the pairs
val_fraction = 0.1
norm_samples = 256

block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 20
max_iters = 300
lr_decay_iters = 300
weight_decay = 0.0

eval_interval = 100
eval_iters = 20
log_interval = 20

device = 'cpu'
compile = False
