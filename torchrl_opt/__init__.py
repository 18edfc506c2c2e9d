"""torchrl-opt: Online Pre-Training (OPT) for offline-to-online RL on TorchRL."""

__version__ = "0.1.0"
