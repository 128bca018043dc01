"""lamda-bench: how much memory and compute a fine-tuning adapter really costs."""

__version__ = "0.1.0"
