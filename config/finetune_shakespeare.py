# Finetune gpt2-large (774M) on tiny Shakespeare (GPT-2 BPE) at full context on one 24 GB card
# (RTX 4090D): batch_size 1 x gradient_accumulation_steps 32 = 32 sequences of 1024 tokens per step.
#   python data/shakespeare/prepare.py && python train.py config/finetune_shakespeare.py
# Memory plan (predicted, not measured): fp32 weights 3.1 GB + grads 3.1 GB + AdamW states 6.2 GB
# + bf16 activations of one 1024-token sequence (~2 GB with flash attention) ~= 15 GB.

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
log_interval = 1
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-gpt2-large'

dataset = 'shakespeare'
init_from = 'gpt2-large'    # downloaded by transformers; set HF_ENDPOINT for a mirror

always_save_checkpoint = False  # only save when val improves

batch_size = 1
gradient_accumulation_steps = 32
block_size = 1024
dropout = 0.1               # finetuning on ~300k tokens: a little regularisation
max_iters = 20

learning_rate = 3e-5        # finetune at a constant small learning rate
decay_lr = False
dtype = 'bfloat16'          # autocast; the 4090D supports bf16
compile = True
