"""Everything hftk registers with transformers, in one place, done by one call (``hftk.register()``).

- the ``hftk_rnn`` model type (LSTM/GRU language models) with ``AutoConfig`` / ``AutoModelForCausalLM``, so run
  folders load with the Auto classes and ``pipeline("text-generation")``, and ``save_pretrained`` copies the model's
  code next to its weights;
- the ``chat`` pipeline task, also under its former name ``seq2seq-chat`` (transformers 5 removed
  ``text2text-generation``).

Importing a model module registers nothing. hftk calls ``register()`` where it builds or loads a model (every CLI
command, ``hftk.training``, ``hftk.runs``); code that uses run folders without hftk's CLI calls ``hftk.register()``.
"""

from __future__ import annotations


def register() -> None:
    """Register hftk's model type and pipeline task with transformers (idempotent)."""
    from hftk.models import rnn, seq2seq

    rnn.register()
    seq2seq.register_pipeline()
