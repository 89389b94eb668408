# Demo stage 5 (python demo.py runs it): PPO of the pretrained char model against the LEARNED
# reward model (not the true reward), with a KL penalty to the pretrained model.
out_dir = 'out-demo/ppo'
init_from = 'out-demo/pretrain'
tokenizer = 'shakespeare_char'
prompt_data = 'out-demo/prompts_train.jsonl'
reward_model = 'out-demo/reward/best.pt'
normalize_reward = True
missing_eos_penalty = 1.0

block_size = 128
max_new_tokens = 64
temperature = 1.0

advantage_estimator = 'gae'
critic = 'shared'
kl_coef = 0.2
batch_size = 32
mini_batch_size = 16
ppo_epochs = 2
vf_coef = 0.1
learning_rate = 1e-4
max_iters = 60

eval_interval = 60
sample_interval = 10
device = 'cpu'
