"""vimtune: Vision Mamba backbones and their parameter-efficient fine-tuning.

Importing it registers the Vim configs with timm (``timm.create_model("vim_small_patch16_224")``),
without importing torch until timm itself is imported (see :mod:`vimtune.timm_registration`).
"""

from vimtune.timm_registration import register_with_timm

__version__ = "0.1.0"

register_with_timm()
