"""Classic architectures built from 1x1 convolutions, with their published sizes.

``create_model(name, ...)`` builds one by name; ``list_models()`` names them.
"""

from onebyone.models.googlenet import GoogLeNet, GoogLeNetOutputs, googlenet
from onebyone.models.mobilenet_v1 import MobileNetV1, mobilenet_v1
from onebyone.models.mobilenet_v2 import MobileNetV2, mobilenet_v2
from onebyone.models.nin import NiN, nin
from onebyone.models.registry import create_model, list_models, model_options
from onebyone.models.resnet import ResNet, resnet50, resnet101, resnet152
from onebyone.models.shufflenet import ShuffleNetV1, shufflenet_v1
from onebyone.models.squeezenet import SqueezeNet, squeezenet1_0, squeezenet1_1

__all__ = [
    "GoogLeNet",
    "GoogLeNetOutputs",
    "MobileNetV1",
    "MobileNetV2",
    "NiN",
    "ResNet",
    "ShuffleNetV1",
    "SqueezeNet",
    "create_model",
    "googlenet",
    "list_models",
    "mobilenet_v1",
    "mobilenet_v2",
    "model_options",
    "nin",
    "resnet50",
    "resnet101",
    "resnet152",
    "shufflenet_v1",
    "squeezenet1_0",
    "squeezenet1_1",
]
