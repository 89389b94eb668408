# DPO of the SFT gpt2-large on Anthropic hh-rlhf preference pairs, on a 24 GB card.
#   python data/hh_rlhf/prepare.py && python train.py config/sft_gpt2large.py   # the SFT model first
#   python dpo_train.py config/dpo_gpt2large.py
# Memory plan (PREDICTED from parameter counts, not measured): the policy's fp32 weights 3.1 GB +
# grads 3.1 GB + AdamW 6.2 GB + bf16 activations of one pair (2 rows of up to 1024 tokens) ~4 GB +
# logits (2 x 1024 x 50257: bf16, their fp32 copy and its gradient) ~1.5 GB ~= 18 GB. No reference
# model is in memory while training: precompute_ref_logps computes the reference's log-probs once,
# before the optimizer exists (so an fp32 copy fits: 3.1 GB, forward passes only) and caches them in
# data/hh_rlhf/.cache/ for later runs. With precompute_ref_logps=False, use ref_dtype='bfloat16':
# the copy stays (+1.6 GB, + ~0.6 GB for its logits) ~= 20 GB. batch_size=2 would need ~4 GB more
# activations: too close to 24 GB, hence 1 pair x 32 micro-batches = 32 pairs a step (the paper: 64).
# The precomputation is one reference forward pass per pair, what on-line reference passes cost over
# one epoch: the same for a 1-epoch run (max_iters below), cheaper for longer runs and for every later
# run on the same data and reference (a beta or loss_type sweep), dearer for runs under an epoch.

out_dir = 'out-dpo-gpt2large'
init_from = 'out-sft-gpt2large'  # the SFT checkpoint: the policy's start and (ref_from='') the reference
pref_data = 'data/hh_rlhf/pref_train.jsonl'
pref_val_data = 'data/hh_rlhf/pref_val.jsonl'
truncation = 'left'             # long dialogues lose their oldest turns, never a response

beta = 0.1                      # the paper's
loss_type = 'sigmoid'
precompute_ref_logps = True
ref_dtype = 'float32'           # the policy's numerics (loss exactly log 2 at the start); a bf16 copy's
                                # log-probs differ by ~0.02-0.03 nats a sequence (measured on small CPU models)

block_size = 1024
batch_size = 1                  # pairs per micro-batch: 2 sequences in one forward pass
gradient_accumulation_steps = 32

learning_rate = 1e-6            # the paper's, warmup then constant
min_lr = 1e-6
warmup_iters = 150
max_iters = 5000                # ~1 epoch of hh-rlhf's ~160k training pairs at 32 pairs a step
lr_decay_iters = 5000
weight_decay = 0.0
grad_clip = 10.0

eval_interval = 250
eval_iters = 200                # 200 val pairs, the same ones at every eval
log_interval = 10

dtype = 'bfloat16'
compile = False                 # variable-length batches would recompile often
wandb_project = 'gpt2-rlhf'
wandb_run_name = 'dpo-gpt2-large'
