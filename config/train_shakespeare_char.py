# A baby GPT on tiny Shakespeare, characters (nanoGPT's config): ~1 minute on a GPU, val loss ~1.47.
# On a laptop without a GPU (a few minutes, val loss <= 1.89; see the README):
#   python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
#     --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
#     --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
# Data first: python data/shakespeare_char/prepare.py

out_dir = 'out-shakespeare-char'
eval_interval = 250         # small data: we'll overfit, so evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # only save when val improves

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256            # context of up to 256 previous characters

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3        # baby networks can afford a higher learning rate
max_iters = 5000
lr_decay_iters = 5000       # usually = max_iters
min_lr = 1e-4               # learning_rate / 10
beta2 = 0.99                # a bit larger because there are few tokens per iteration
warmup_iters = 100
