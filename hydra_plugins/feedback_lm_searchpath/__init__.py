"""Hydra search-path plugin: keeps feedback_lm's own ``conf/`` on the search path when a user points
Hydra at their config directory (``python train.py -cd ~/my_algos/conf algo=my_algo``), so a user's
directory only needs the groups it adds (``algo/my_algo.yaml``), not a copy of ``train.yaml``."""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class FeedbackLMSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if CONF_DIR.is_dir():
            search_path.append(provider="feedback_lm", path=f"file://{CONF_DIR}")
