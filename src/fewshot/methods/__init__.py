"""Meta-learning methods: one module per family, one class per algorithm.

:data:`METHODS` maps a method name (as used in configs and on the command line) to its class.
"""

from fewshot.methods.base import Method, accuracy
from fewshot.methods.adversarial import ADML
from fewshot.methods.gradient import CAVIA, MAML, MetaSGD
from fewshot.methods.reptile import Reptile
from fewshot.methods.memory import BATMANN, MANNModel, NTMModel
from fewshot.methods.metanet import MetaNetwork
from fewshot.methods.metric import GaussianProtoNet, MatchingNet, ProtoNet
from fewshot.methods.relation import RelationNet
from fewshot.methods.semisupervised import SemiSupervisedProtoNet
from fewshot.methods.siamese import SiameseNet
from fewshot.methods.zeroshot import ZeroShotProtoNet, ZeroShotRelationNet

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (ProtoNet, MatchingNet, GaussianProtoNet, RelationNet,
                                                        SemiSupervisedProtoNet, SiameseNet, ZeroShotProtoNet,
                                                        ZeroShotRelationNet, MAML, MetaSGD, CAVIA, Reptile, ADML, NTMModel, MANNModel, BATMANN, MetaNetwork)}

__all__ = ["ADML", "BATMANN", "CAVIA", "MAML", "Reptile", "METHODS", "GaussianProtoNet", "MANNModel", "MetaNetwork", "MetaSGD", "NTMModel", "MatchingNet", "Method", "ProtoNet", "RelationNet", "SemiSupervisedProtoNet", "SiameseNet", "ZeroShotProtoNet", "ZeroShotRelationNet", "accuracy"]


def build_method(config: dict, item_shape: tuple[int, ...]) -> Method:
    """The method of a resolved config, with its backbone built for items of ``item_shape``."""
    return METHODS[config["method"]].from_config(config, item_shape)


__all__ += ["build_method"]
