"""Channel (structured) pruning: which output channels can be removed together (Torch-Pruning's dependency graph),
and the surgery that removes them, giving a dense, smaller network.

Why Torch-Pruning: a channel of a real network is coupled to other tensors (the BatchNorm after it, the next layer's
input channels, every layer feeding the same residual sum, the depthwise convolution that passes it through); its
dependency graph finds these groups by tracing the model and its per-layer pruners resize each module consistently,
for any architecture it can trace. That is the maintained library of the field for this job; hand-written graph code
would cover our three models and break on the next.
"""

from reflowbench.channels.groups import ChannelGroup, ChannelSlice, GroupSearch, find_channel_groups
from reflowbench.channels.surgery import SurgeryResult, remove_channels

__all__ = ["ChannelGroup", "ChannelSlice", "GroupSearch", "find_channel_groups", "remove_channels", "SurgeryResult"]
