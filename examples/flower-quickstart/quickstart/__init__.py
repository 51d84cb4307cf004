"""Flower's PyTorch quickstart pattern on a small generated dataset (nothing is downloaded)."""
