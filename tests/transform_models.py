"""Small models with the patterns the transforms look for, and batch norms with random
statistics (so folding them is never the identity)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import onebyone as obo
from onebyone.nn import Conv1x1

from helpers import NORM_TYPES, randomize_norms

BN_TYPES = NORM_TYPES

# every built-in model but the deeper ResNets, which repeat ResNet-50's blocks
SMALLER_MODELS = [m for m in obo.list_models() if m not in ("resnet101", "resnet152")]


def snapshot(model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """The model's structure and a copy of its state, to check it was not modified."""
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: tuple[str, dict[str, torch.Tensor]]) -> None:
    structure, state = before
    assert repr(model) == structure
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


class ResidualBlock(nn.Module):
    """1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1 -> BN, + shortcut, ReLU (after the add)."""

    def __init__(self, c: int = 16, m: int = 8, projection: bool = False) -> None:
        super().__init__()
        self.conv1 = Conv1x1(c, m, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        self.conv2 = nn.Conv2d(m, m, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m)
        self.conv3 = nn.Conv2d(m, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class AddAfterActivation(nn.Module):
    """``x + silu(bn(conv(x)))``: the residual is added after the activation."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.bn(self.conv(x)))


class SharedOutput(nn.Module):
    """The convolution's output feeds the batch norm and also the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) * 2 + y


class CalledTwice(nn.Module):
    """One convolution module called on two inputs, each call followed by its own norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_b = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_a(self.conv(x)) + self.bn_b(self.conv(x * 2))


class Untraceable(nn.Module):
    """Data-dependent control flow (does not trace) around an ``nn.Sequential`` body."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 1),
            nn.Conv2d(8, 4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if y.sum() > 0:  # a Python branch on a value: torch.fx cannot trace it
            return y
        return -y


class LinearHead(nn.Module):
    """Pooling, then Linear -> BatchNorm1d -> ReLU -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, 8)
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def conv_bn_relu(
    c: int = 6,
    k: int = 12,
    kernel: int | tuple[int, int] = 3,
    *,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nn.Sequential:
    """``Conv2d -> BatchNorm2d -> ReLU`` with random statistics."""
    model = nn.Sequential(
        nn.Conv2d(c, k, kernel, stride=stride, padding=padding, dilation=dilation,
                  groups=groups, bias=bias),
        nn.BatchNorm2d(k),
        nn.ReLU(),
    )  # fmt: skip
    return randomize_norms(model)


def copy_of(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


@dataclass(frozen=True)
class GraphTally:
    """What a model's ``torch.fx`` graph computes, by kind (fused epilogues count as their
    convolution)."""

    convolutions: int
    batch_norms: int
    activations: int
    adds: int


def tally(model: nn.Module) -> GraphTally:
    """Count the convolutions, norms, standalone activations and adds in ``model``'s graph."""
    from onebyone.transforms import FusedConv1x1, FusedConv2d
    from onebyone.transforms._fx import activation_of, compute_nodes, is_add, trace

    graph, why = trace(model)
    assert graph is not None, why
    modules = dict(model.named_modules())
    convs = norms = acts = adds = 0
    for n in compute_nodes(graph):
        m = modules.get(str(n.target)) if n.op == "call_module" else None
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1x1, FusedConv1x1, FusedConv2d)):
            convs += 1
        elif isinstance(m, BN_TYPES):
            norms += 1
        elif activation_of(n, modules) is not None:
            acts += 1
        elif is_add(n):
            adds += 1
    return GraphTally(convs, norms, acts, adds)
