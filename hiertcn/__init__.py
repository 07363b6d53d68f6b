"""HierTCN: hierarchical temporal convolutional networks for dynamic recommendation.

This package holds the science side of the project: reading and sessionizing interaction logs,
the HierTCN model and its baselines, losses, the training loop and offline evaluation. The
serving side (`stream/`) never imports it, because it runs on ONNX Runtime alone.
"""

__version__ = "0.1.0"
