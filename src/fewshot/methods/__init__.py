"""Meta-learning methods: one module per family, one class per algorithm.

:data:`METHODS` maps a method name (as used in configs and on the command line) to its class.
"""

from fewshot.methods.base import Method, accuracy
from fewshot.methods.metric import ProtoNet

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (ProtoNet,)}

__all__ = ["METHODS", "Method", "ProtoNet", "accuracy"]


def build_method(config: dict, item_shape: tuple[int, ...]) -> Method:
    """The method of a resolved config, with its backbone built for items of ``item_shape``."""
    from fewshot.nn import build_backbone

    m = config["model"]
    encoder = build_backbone(m["backbone"], item_shape, m["width"], m["norm"], tuple(m["hidden"]))
    cls = METHODS[config["method"]]
    kwargs = {k: m[k] for k in cls.defaults}
    return cls(encoder, **kwargs)


__all__ += ["build_method"]
