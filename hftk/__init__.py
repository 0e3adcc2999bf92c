"""hftk: one recipe format and one CLI to train, evaluate, demo and publish Hugging Face models.

Importing hftk is light (no torch, no transformers) and changes nothing in the environment: the runtime
settings (threads, OpenMP) are made when hftk runs a command, and ``register()`` makes transformers know hftk's
LSTM/GRU model type and its ``chat`` pipeline (hftk's commands call it; call it to use run folders with
``pipeline`` or the Auto classes in your own code).
"""

from hftk.config import Recipe, load_recipe
from hftk.errors import HftkError


def register() -> None:
    """Register hftk's model type (``hftk_rnn``) and pipeline task (``chat``) with transformers."""
    from hftk.models.registration import register as register_all

    register_all()


__version__ = "0.1.0"

__all__ = ["HftkError", "Recipe", "load_recipe", "register", "__version__"]
