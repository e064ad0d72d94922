"""fx GraphModule passes: weight-gradient split, FLOPs, golden text form, graphviz drawing.

Passes know graphs only: what a graph input or output is comes from ``node.meta`` (see
``roles.py``), never from the program object around the graphs.
"""

from tfcompile.passes.split_weight_grad import Region, SplitBackward, split_weight_grad

__all__ = ["Region", "SplitBackward", "split_weight_grad"]
