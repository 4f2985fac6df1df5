"""Any torchvision classification model by name, with its weight enums."""

from __future__ import annotations

from typing import List, Optional

from torch import nn

from reflowbench.errors import ConfigError


def torchvision_names() -> List[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_torchvision(name: str, weights: Optional[str], num_classes: Optional[int]) -> nn.Module:
    """Build torchvision model ``name``; ``weights`` is an enum member name (``DEFAULT``, ``IMAGENET1K_V2``) or None.

    Pretrained weights are downloaded by torchvision on first use (needs the internet once).
    """
    import torchvision

    if name not in torchvision_names():
        raise ConfigError(f"unknown model {name!r}: see `reflowbench list` for the built-in and torchvision models")
    kwargs = {}
    if weights:
        enum = torchvision.models.get_model_weights(name)
        try:
            kwargs["weights"] = enum[weights]
        except KeyError:
            choices = ", ".join(["DEFAULT"] + [member.name for member in enum])
            raise ConfigError(f"torchvision model {name} has no weights {weights!r}; choose one of: {choices}") from None
    elif num_classes is not None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(name, **kwargs)
