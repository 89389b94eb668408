# A tiny PPO run on CPU in ~5 minutes: the tiny SFT model of config/sft_tiny.py against the tiny
# reward model of config/reward_tiny.py on hh-rlhf prompts, to check the RLHF pipeline end to end
# (models this small will not learn to chat; watch the score and the KL, not the samples).
#   python data/hh_rlhf/prepare.py --input ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz
#   python train.py config/sft_tiny.py && python reward_train.py config/reward_tiny.py
#   python ppo_train.py config/ppo_tiny.py

out_dir = 'out-ppo-tiny'
init_from = 'out-sft-tiny'
reward_model = 'out-reward-tiny/best.pt'
prompt_data = 'data/hh_rlhf/sft_train.jsonl'

block_size = 256                # the tiny models' context: prompts over 224 tokens are skipped
max_new_tokens = 32
temperature = 1.0
batch_size = 8                  # prompts per rollout
mini_batch_size = 4
ppo_epochs = 2

advantage_estimator = 'gae'
critic = 'shared'
kl_coef = 0.05
vf_coef = 0.1
learning_rate = 1e-4            # full finetuning of a 2-layer model
max_iters = 40

eval_interval = 20
sample_interval = 10
device = 'cpu'
