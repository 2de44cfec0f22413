"""gendistill's version (a leaf: the package root, the marker files and ``gendistill --version`` read it here)."""

__version__ = "0.1.0"
