"""sonokit: a Kaggle submission kit for image classification under a compute budget."""

__version__ = "0.1.0"
