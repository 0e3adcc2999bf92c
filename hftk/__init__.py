"""hftk: one recipe format and one CLI to train, evaluate, demo and publish Hugging Face models."""

from hftk.config import Recipe, load_recipe
from hftk.errors import HftkError
from hftk.models import rnn as _rnn  # noqa: F401  registers hftk_rnn (LSTM/GRU) with AutoConfig/AutoModelForCausalLM

__version__ = "0.1.0"

__all__ = ["HftkError", "Recipe", "load_recipe", "__version__"]
