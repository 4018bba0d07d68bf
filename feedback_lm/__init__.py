"""feedback_lm: train language models from feedback (SFT, reward models, PPO, HIR, self-correction)."""

from feedback_lm.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
