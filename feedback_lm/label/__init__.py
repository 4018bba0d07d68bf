"""Human feedback labeling (issue 7): campaigns, a label store, a web app and its admin commands.

- :mod:`feedback_lm.label.config`: a campaign's settings and the check of a submitted label.
- :mod:`feedback_lm.label.store`: items, labelers, leases and labels in SQLite or PostgreSQL; the
  export to the comparison JSONL that ``algo=reward_model`` reads; ``enqueue`` / ``export_labeled``
  for online labeling while PPO trains.
- :mod:`feedback_lm.label.app`: the FastAPI app, its labeling page and the researcher's page
  (``pip install '.[label]'``).
- :mod:`feedback_lm.label.stats`: agreement with gold and between people, chance-corrected.
- ``python -m feedback_lm.label create|add-labeler|rotate|revoke|remove-labeler|admin-token|serve|stats|export``:
  the admin commands.

See ``docs/labeling.md`` for a walkthrough.
"""

from feedback_lm.label.config import CampaignConfig, LabelError
from feedback_lm.label.store import Store, open_campaign

__all__ = ["CampaignConfig", "LabelError", "Store", "open_campaign"]
