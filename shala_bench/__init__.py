"""shala-bench: ShaLa and the multimodal-VAE baselines under one versioned protocol."""

__version__ = "0.1.0"
