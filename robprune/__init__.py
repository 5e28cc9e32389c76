"""robprune: config-driven experiment runner for robustness-aware compression of neural networks."""
__version__ = "0.1.0"
