"""Gradio app for a chat run (encoder-decoder or decoder-only), runnable as a Space app.

Usage: python apps/chat.py runs/minilm-chatterbot [--host 127.0.0.1] [--port 7860]
"""

import sys

from hftk.demos import app_main

sys.exit(app_main(__doc__.splitlines()[0]))
