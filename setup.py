"""Build script: the Python package (src/elmo_fast + kernels/ as elmo_fast.kernels) and the
optional persistent-LSTM CUDA extension (see csrc/ and the CUDA section below)."""
from setuptools import setup

setup(
    package_dir={"elmo_fast": "src/elmo_fast", "elmo_fast.kernels": "kernels"},
    packages=["elmo_fast", "elmo_fast.reference", "elmo_fast.ops", "elmo_fast.kernels"],
)
