"""ftviz: watch what fine-tuning does to a vision model's view of its data."""

__version__ = "0.1.0"
