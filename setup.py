"""Build script: the pure-Python package, plus the fused-loss C++/CUDA extension once csrc/ has it."""
from setuptools import setup

setup()
