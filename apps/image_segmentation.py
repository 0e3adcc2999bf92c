"""Gradio app for an image-segmentation run, runnable as a Space app.

Usage: python apps/image_segmentation.py runs/segformer-shapes [--host 127.0.0.1] [--port 7860]
"""

import sys

from hftk.demos import app_main

sys.exit(app_main(__doc__.splitlines()[0]))
