"""Speed baselines: other world-model architectures, re-implemented only to time them on this machine."""
