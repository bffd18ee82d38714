"""Fine-tuning methods for Vision Mamba, all behind one protocol (:class:`Method`).

    method = vimtune.methods.build("svp", rank=64, group_size=8)    # or "lora", "vpt-deep", "svp+lora"
    model = method.attach(backbone, num_classes=10)                 # in place: head, modules, freezing
    method.trainable_parameters(model); method.trainable_state(model)
    save_adapter(model, method, "run/adapter", backbone=dict(name="vim_small_patch16_224", kwargs={}))
    model, method = load_adapter("run/adapter", backbone_weights="vim_s_midclstok_80p5acc.pth")
"""

from vimtune.methods.adapter import Adapter, AdapterOptions, ParallelAdapter
from vimtune.methods.artifacts import load_adapter, read_adapter_config, save_adapter
from vimtune.methods.base import Method, NoOptions
from vimtune.methods.bias import BiasTuning
from vimtune.methods.compose import Composite, CompositeOptions
from vimtune.methods.full import FullFineTune
from vimtune.methods.head import two_layer_head
from vimtune.methods.linear import LinearProbe
from vimtune.methods.lora import LoRA, LoRALinear, LoRAOptions, LowRankUpdate, merge_lora
from vimtune.methods.registry import METHODS, available_methods, build, from_config
from vimtune.methods.simam import add_simam, simam
from vimtune.methods.svp import SVP, LayerPrompter, SelectivePrompts, SVPOptions
from vimtune.methods.svp_release import from_svp_release, import_svp_release, rename_release_keys
from vimtune.methods.vpt import DeepPrompts, EmbedPrompts, VPTDeep, VPTOptions, VPTShallow

__all__ = [
    "METHODS",
    "Adapter",
    "AdapterOptions",
    "BiasTuning",
    "Composite",
    "CompositeOptions",
    "DeepPrompts",
    "EmbedPrompts",
    "FullFineTune",
    "LayerPrompter",
    "LinearProbe",
    "LoRA",
    "LoRALinear",
    "LoRAOptions",
    "LowRankUpdate",
    "Method",
    "NoOptions",
    "ParallelAdapter",
    "SVP",
    "SVPOptions",
    "SelectivePrompts",
    "VPTDeep",
    "VPTOptions",
    "VPTShallow",
    "add_simam",
    "available_methods",
    "build",
    "from_config",
    "from_svp_release",
    "import_svp_release",
    "load_adapter",
    "merge_lora",
    "read_adapter_config",
    "rename_release_keys",
    "save_adapter",
    "simam",
    "two_layer_head",
]
