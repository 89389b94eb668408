# Demo stage 5b (python demo.py runs it): GRPO against the same learned reward model: 4 responses
# a prompt, no critic, k3 KL in the loss.
out_dir = 'out-demo/grpo'
init_from = 'out-demo/pretrain'
tokenizer = 'shakespeare_char'
prompt_data = 'out-demo/prompts_train.jsonl'
reward_model = 'out-demo/reward/best.pt'
normalize_reward = True
missing_eos_penalty = 1.0

block_size = 128
max_new_tokens = 64
temperature = 1.0

advantage_estimator = 'grpo'
group_size = 4
kl_in_loss = True
kl_coef = 0.1
batch_size = 8
mini_batch_size = 16
ppo_epochs = 2
learning_rate = 1e-4
max_iters = 80

eval_interval = 80
sample_interval = 10
device = 'cpu'
