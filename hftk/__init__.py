"""hftk: one recipe format and one CLI to train, evaluate, demo and publish Hugging Face models.

Importing hftk is light (no torch, no transformers) and changes nothing in the environment: the runtime
settings (threads, OpenMP) are made when hftk runs a command, and the LSTM/GRU model type is registered with
transformers when a text model is built or loaded (``import hftk.models.rnn`` registers it by hand).
"""

from hftk.config import Recipe, load_recipe
from hftk.errors import HftkError

__version__ = "0.1.0"

__all__ = ["HftkError", "Recipe", "load_recipe", "__version__"]
