"""hftk: one recipe format and one CLI to train, evaluate, demo and publish Hugging Face models."""

import os

# OpenMP threads that spin while waiting turn any other busy process into a 10x slowdown on small
# machines (measured here on 2 cores: test_resnet training fell from 574 to 51 images/s with one other
# process running). Passive waiting must be set before torch loads its OpenMP runtime; users may override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hftk.config import Recipe, load_recipe
from hftk.errors import HftkError
from hftk.models import rnn as _rnn  # noqa: F401  registers hftk_rnn (LSTM/GRU) with AutoConfig/AutoModelForCausalLM

__version__ = "0.1.0"

__all__ = ["HftkError", "Recipe", "load_recipe", "__version__"]
