"""fx GraphModule passes: weight-gradient split, golden text form, graphviz dump."""

from tfcompile.passes.split_weight_grad import Region, SplitBackward, split_weight_grad

__all__ = ["Region", "SplitBackward", "split_weight_grad"]
