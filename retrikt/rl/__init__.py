"""RL refinement of the soft-prompted generator: PPO (``ppo``) with a quality + diversity reward (``reward``)."""
from retrikt.rl.ppo import PPOConfig, gae, plot_log, ppo_losses, ppo_train, whiten
from retrikt.rl.reward import RewardConfig, compute_rewards, diversity_scores

__all__ = ["PPOConfig", "RewardConfig", "compute_rewards", "diversity_scores", "gae", "plot_log", "ppo_losses",
           "ppo_train", "whiten"]
