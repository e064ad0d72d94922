"""The zoo's test modules import transformers and peft, which import torchvision when it is
installed: ``timm_compat`` must run first (see its docstring)."""

import timm_compat  # noqa: F401
