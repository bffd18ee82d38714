"""vimtune: Vision Mamba backbones and their parameter-efficient fine-tuning."""

__version__ = "0.1.0"
