"""Entry point: ``python train.py [group=option ...] [key=value ...]`` (see README.md)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def train(cfg: DictConfig):
    from feedback_lm.run import main  # imported here so config errors are reported without loading torch

    return main(cfg)


if __name__ == "__main__":
    train()
