"""HierTCN: hierarchical temporal convolutional networks for dynamic recommendation.

This package contains the science side of the project: reading and sessionizing interaction
logs, the HierTCN model and its baselines, losses, the training loop and offline evaluation. The
serving side (`stream/`) runs on ONNX Runtime alone, so it imports only the torch-free log
readers of `hiertcn.data` (for replay and produce) and nothing that imports torch.
"""

__version__ = "0.1.0"
