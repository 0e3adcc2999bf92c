"""hftk: one recipe format and one CLI to train, evaluate, demo and publish Hugging Face models."""

import os

# OpenMP threads that spin for long while waiting turn any other busy process into a 10x slowdown on a
# small machine. Measured here on 2 cores, test_resnet training at 2 threads, images/s (idle / one busy
# neighbour): libgomp's default 1240 / 51, OMP_WAIT_POLICY=PASSIVE 940 / 550, GOMP_SPINCOUNT=10000
# 1240 / 450. A short spin keeps full speed when idle and avoids the collapse. It must be set before torch
# loads OpenMP, so here; a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from hftk.config import Recipe, load_recipe
from hftk.errors import HftkError
from hftk.models import rnn as _rnn  # noqa: F401  registers hftk_rnn (LSTM/GRU) with AutoConfig/AutoModelForCausalLM

__version__ = "0.1.0"

__all__ = ["HftkError", "Recipe", "load_recipe", "__version__"]
