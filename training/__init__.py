"""Kiln training: model zoo, data, and the classifier / translator training CLIs."""

import os as _os

from training.agent_watch import end_with_agent as _end_with_agent

_end_with_agent(_os.environ)  # under torchrun: a rank ends with its agent (training/agent_watch.py)
