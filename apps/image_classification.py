"""Gradio app for an image-classification run, runnable as a Space app.

Usage: python apps/image_classification.py runs/resnet-mnist [--host 127.0.0.1] [--port 7860]
"""

import argparse

from hftk.demos import launch

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run_dir", nargs="?", default=".", help="run folder (default: this folder, as on a Space)")
parser.add_argument("--host", default=None)
parser.add_argument("--port", type=int, default=None)
args = parser.parse_args()
launch(args.run_dir, host=args.host, port=args.port)
