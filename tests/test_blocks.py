"""The blocks of onebyone.nn against plain ``torch.nn.functional`` references."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from onebyone.nn import (
    Bottleneck,
    ChannelFusion,
    Conv1x1,
    ConvNormAct,
    DepthwiseSeparable,
    Fire,
    Inception,
    InvertedResidual,
    MlpConv,
    ShuffleUnit,
    SqueezeExcite,
    channel_shuffle,
)

from helpers import assert_close, randomize_norms


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def bn_ref(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def w4(conv: Conv1x1) -> torch.Tensor:
    return conv.weight.reshape(*conv.weight.shape, 1, 1)  # (K, C/g) -> (K, C/g, 1, 1)


# ---------------------------------------------------------------- ConvNormAct


@pytest.mark.parametrize(
    ("kernel_size", "stride", "groups", "activation"),
    [
        (1, 1, 1, "relu"),
        (1, 2, 2, "relu6"),
        (3, 2, 1, "relu"),
        (3, 1, 4, None),
        ((1, 3), 1, 1, "silu"),
    ],
)
def test_conv_norm_act_matches_conv_bn_act(kernel_size, stride, groups, activation) -> None:
    m = ConvNormAct(8, 12, kernel_size, stride=stride, groups=groups, activation=activation).eval()
    randomize_norms(m)
    conv, bn = m[0], m[1]
    pointwise = kernel_size == 1
    assert isinstance(conv, Conv1x1 if pointwise else nn.Conv2d)
    x = torch.randn(2, 8, 9, 11)
    weight = w4(conv) if pointwise else conv.weight
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    pad = ((ks[0] - 1) // 2, (ks[1] - 1) // 2)
    ref = bn_ref(F.conv2d(x, weight, stride=stride, padding=pad, groups=groups), bn)
    acts: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
        None: lambda t: t,
        "relu": F.relu,
        "relu6": F.relu6,
        "silu": F.silu,
    }
    with torch.no_grad():
        assert_close(m(x), acts[activation](ref))


def test_conv_norm_act_layout_and_fused_activation_without_norm() -> None:
    m = ConvNormAct(8, 6, 1)
    assert list(m.state_dict()) == [
        "0.weight",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert m[0].bias is None
    plain = ConvNormAct(8, 6, 1, norm=None, activation="relu")
    assert len(plain) == 1 and plain[0].activation == "relu" and plain[0].bias is not None
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        assert_close(plain(x), F.relu(F.conv2d(x, w4(plain[0]), plain[0].bias)))
    kxk = ConvNormAct(8, 6, 3, norm=None, activation="relu")
    assert isinstance(kxk[0], nn.Conv2d) and isinstance(kxk[1], nn.ReLU) and len(kxk) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kernel_size": 0}, ValueError, "`kernel_size`.*Received kernel_size=0"),
        ({"kernel_size": 3, "padding": -1}, ValueError, "`padding`.*Received padding=-1"),
        ({"kernel_size": 1, "norm": "layer"}, ValueError, "`norm`.*'batch'.*Received norm='layer'"),
        ({"kernel_size": 1, "activation": "swish"}, ValueError, "`activation`"),
        ({"kernel_size": 1, "groups": 3}, ValueError, "`groups`.*divisor of in_channels=8"),
        ({"kernel_size": 1, "bias": "yes"}, TypeError, "`bias`"),
    ],
)
def test_conv_norm_act_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        ConvNormAct(8, 6, **kwargs)


# ---------------------------------------------------------------- ChannelFusion


def test_channel_fusion_equals_concat_then_conv1x1() -> None:
    fuse = ChannelFusion([32, 64], 64, activation="relu")
    a, b = torch.randn(2, 32, 7, 9), torch.randn(2, 64, 7, 9)
    single = Conv1x1(96, 64, activation="relu")
    single.load_state_dict(fuse.fuse.state_dict())
    with torch.no_grad():
        y = fuse(a, b)
        assert_close(y, single(torch.cat([a, b], 1)))
        w = fuse.fuse.weight  # (64, 96): columns 0..31 weigh a, 32..95 weigh b
        ref = F.relu(
            F.conv2d(a, w[:, :32, None, None])
            + F.conv2d(b, w[:, 32:, None, None])
            + fuse.fuse.bias.view(1, -1, 1, 1)
        )
        assert_close(y, ref)
        assert_close(fuse(a[0], b[0]), y[0])  # unbatched inputs
    assert n_params(fuse) == 96 * 64 + 64  # the seed's fusion example: 6,208


def test_channel_fusion_keeps_channels_last_and_trains() -> None:
    fuse = ChannelFusion([3, 5, 2], 4)
    xs = [
        torch.randn(2, c, 6, 6).to(memory_format=torch.channels_last).requires_grad_()
        for c in (3, 5, 2)
    ]
    y = fuse(*xs)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.square().sum().backward()
    assert all(x.grad is not None and x.grad.shape == x.shape for x in xs)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ([(1, 32, 4, 4)], r"Expected 2 feature maps with \[32, 64\] channels. Received 1 tensors"),
        (
            [(1, 32, 4, 4), (1, 48, 4, 4)],
            r"\[32, 64\] channels.*Received tensors of shapes \[\(1, 32, 4, 4\), \(1, 48, 4, 4\)\]",
        ),
        ([(1, 32, 4, 4), (1, 64, 4, 5)], r"equal batch, height and width"),
        ([(1, 32, 4, 4), (2, 64, 4, 4)], r"equal batch, height and width"),
        ([(32, 4), (64, 4)], r"3-D \(C, H, W\) or 4-D"),
    ],
)
def test_channel_fusion_rejects_mismatched_inputs(shapes, match) -> None:
    fuse = ChannelFusion([32, 64], 8)
    with pytest.raises(ValueError, match=match):
        fuse(*[torch.randn(s) for s in shapes])


@pytest.mark.parametrize(
    ("in_channels", "error", "match"),
    [
        ([], ValueError, "at least one"),
        ([4, 0], ValueError, "positive ints"),
        ("ab", TypeError, "sequence"),
    ],
)
def test_channel_fusion_bad_constructor(in_channels, error, match) -> None:
    with pytest.raises(error, match=f"`in_channels`.*{match}"):
        ChannelFusion(in_channels, 8)


# ---------------------------------------------------------------- Bottleneck


def test_bottleneck_without_norm_is_the_seed_example_plus_identity() -> None:
    block = Bottleneck(64, 32, 64, norm=None)
    # the seed's Keras bottleneck: Conv2D(32, 1x1), Conv2D(32, 3x3), Conv2D(64, 1x1), all biased
    assert n_params(block) == (64 + 1) * 32 + (9 * 32 + 1) * 32 + (32 + 1) * 64 == 13_440
    assert block.downsample is None
    x = torch.randn(1, 64, 28, 28)
    c1, c2, c3 = block.conv1, block.conv2, block.conv3
    h = F.relu(F.conv2d(x, w4(c1), c1.bias))
    h = F.relu(F.conv2d(h, c2.weight, c2.bias, padding=1))
    ref = F.relu(F.conv2d(h, w4(c3), c3.bias) + x)
    with torch.no_grad():
        assert_close(block(x), ref)


@pytest.mark.parametrize("variant", ["v1.5", "v1"])
@pytest.mark.parametrize(("cin", "cout", "stride"), [(64, 256, 1), (256, 256, 1), (256, 512, 2)])
def test_bottleneck_with_norm_matches_reference(variant, cin, cout, stride) -> None:
    block = Bottleneck(cin, cout // 4, cout, stride=stride, variant=variant).eval()
    randomize_norms(block)
    s1, s2 = (stride, 1) if variant == "v1" else (1, stride)
    assert block.conv1.stride == (s1, s1) and block.conv2.stride == (s2, s2)
    assert (block.downsample is None) == (cin == cout and stride == 1)
    x = torch.randn(2, cin, 9, 9)
    h = F.relu(bn_ref(F.conv2d(x, w4(block.conv1), stride=s1), block.bn1))
    h = F.relu(bn_ref(F.conv2d(h, block.conv2.weight, stride=s2, padding=1), block.bn2))
    h = bn_ref(F.conv2d(h, w4(block.conv3)), block.bn3)
    if block.downsample is None:
        short = x
    else:
        short = bn_ref(F.conv2d(x, w4(block.downsample[0]), stride=stride), block.downsample[1])
    with torch.no_grad():
        y = block(x)
    assert y.shape == (2, cout, 5 if stride == 2 else 9, 5 if stride == 2 else 9)
    assert_close(y, F.relu(h + short))


def test_bottleneck_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`variant`.*'v1.5', 'v1'.*Received variant='v2'"):
        Bottleneck(64, 16, 64, variant="v2")
    with pytest.raises(ValueError, match=r"`groups`.*divisor of mid_channels=16"):
        Bottleneck(64, 16, 64, groups=3)
    with pytest.raises(ValueError, match="`norm`"):
        Bottleneck(64, 16, 64, norm="instance")


# ---------------------------------------------------------------- Inception


@pytest.mark.parametrize("branch3_kernel", [5, 3])
def test_inception_matches_reference(branch3_kernel) -> None:
    def plain(cin: int, cout: int, k: int) -> nn.Module:
        return ConvNormAct(cin, cout, k, norm=None)

    block = Inception(16, 4, 6, 8, 2, 3, 5, branch3_kernel=branch3_kernel, conv_block=plain)
    assert block.out_channels == 4 + 8 + 3 + 5
    assert isinstance(block.branch2[0][0], Conv1x1) and isinstance(block.branch3[0][0], Conv1x1)
    assert block.branch3[1][0].kernel_size == (branch3_kernel, branch3_kernel)
    x = torch.randn(2, 16, 7, 7)

    def conv(unit: nn.Module, t: torch.Tensor) -> torch.Tensor:
        c = unit[0]
        if isinstance(c, Conv1x1):
            return F.relu(F.conv2d(t, w4(c), c.bias))
        return F.relu(F.conv2d(t, c.weight, c.bias, padding=c.padding))

    ref = torch.cat(
        [
            conv(block.branch1, x),
            conv(block.branch2[1], conv(block.branch2[0], x)),
            conv(block.branch3[1], conv(block.branch3[0], x)),
            conv(block.branch4[1], F.max_pool2d(x, 3, 1, 1)),
        ],
        1,
    )
    with torch.no_grad():
        assert_close(block(x), ref)


def test_inception_weights_follow_the_paper_table() -> None:
    # inception (3a) of GoogLeNet, Table 1: 64 | 96 -> 128 | 16 -> 32 | pool -> 32, no biases
    block = Inception(192, 64, 96, 128, 16, 32, 32)
    weights = sum(m.weight.numel() for m in block.modules() if isinstance(m, (Conv1x1, nn.Conv2d)))
    expected = 192 * 64 + 192 * 96 + 96 * 128 * 9 + 192 * 16 + 16 * 32 * 25 + 192 * 32
    assert (
        weights == expected == 163_328
    )  # the paper's "159K" counts K as 1024: 163328 / 1024 = 159.5
    assert block(torch.randn(1, 192, 28, 28)).shape == (1, 256, 28, 28)


def test_inception_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`branch3_kernel`.*odd"):
        Inception(16, 4, 4, 4, 4, 4, 4, branch3_kernel=4)
    with pytest.raises(ValueError, match=r"`ch3x3`.*Received ch3x3=0"):
        Inception(16, 4, 4, 0, 4, 4, 4)
    with pytest.raises(TypeError, match="`conv_block`"):
        Inception(16, 4, 4, 4, 4, 4, 4, conv_block="conv")  # type: ignore[arg-type]


# ---------------------------------------------------------------- MlpConv


def test_mlpconv_is_conv_then_per_pixel_mlp() -> None:
    block = MlpConv(3, (12, 10, 6), 5)
    assert isinstance(block[0], nn.Conv2d) and all(isinstance(m, Conv1x1) for m in block[2:])
    x = torch.randn(2, 3, 8, 8)
    h = F.relu(F.conv2d(x, block[0].weight, block[0].bias, padding=2))
    for layer in block[2:]:
        # a 1x1 convolution is a fully connected layer applied at every pixel
        h = F.relu(F.linear(h.permute(0, 2, 3, 1), layer.weight, layer.bias).permute(0, 3, 1, 2))
    with torch.no_grad():
        assert_close(block(x), h)
    assert n_params(block) == (75 + 1) * 12 + (12 + 1) * 10 + (10 + 1) * 6
    with pytest.raises(ValueError, match=r"`channels`.*at least one"):
        MlpConv(3, (), 3)


# ---------------------------------------------------------------- DepthwiseSeparable


def test_depthwise_separable_matches_reference_and_costs() -> None:
    block = DepthwiseSeparable(8, 16, stride=2).eval()
    randomize_norms(block)
    # depthwise 3x3 (9C) + norm (2C) + pointwise (CK) + norm (2K)
    assert n_params(block) == 9 * 8 + 2 * 8 + 8 * 16 + 2 * 16
    assert isinstance(block.pointwise[0], Conv1x1)
    x = torch.randn(2, 8, 11, 11)
    dw, pw = block.depthwise, block.pointwise
    h = F.relu(bn_ref(F.conv2d(x, dw[0].weight, stride=2, padding=1, groups=8), dw[1]))
    ref = F.relu(bn_ref(F.conv2d(h, w4(pw[0])), pw[1]))
    with torch.no_grad():
        y = block(x)
    assert y.shape == (2, 16, 6, 6)
    assert_close(y, ref)


# ---------------------------------------------------------------- InvertedResidual


def _as_identity(block: InvertedResidual) -> None:
    """Weights making every layer the identity map (batch norms exactly 1 in eval)."""
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, Conv1x1):
                m.weight.copy_(torch.eye(*m.weight.shape))
            elif isinstance(m, nn.Conv2d):  # depthwise 3x3: a centred delta per channel
                m.weight.zero_()
                m.weight[:, :, 1, 1] = 1.0


def test_inverted_residual_with_identity_weights() -> None:
    x = torch.rand(2, 4, 6, 6) * 5  # in [0, 5): ReLU6 leaves it unchanged
    same = InvertedResidual(4, 4, expand_ratio=1).eval()
    _as_identity(same)
    assert same.use_res_connect and len(same.conv) == 3  # no expansion when t == 1
    with torch.no_grad():
        assert_close(same(x), 2 * x)  # identity branch + identity shortcut
    strided = InvertedResidual(4, 4, stride=2, expand_ratio=1).eval()
    _as_identity(strided)
    assert not strided.use_res_connect
    with torch.no_grad():
        assert_close(strided(x), x[:, :, ::2, ::2])
    wide = InvertedResidual(4, 6, expand_ratio=3).eval()
    _as_identity(wide)  # expand 4 -> 12 keeps x in the first 4 maps, project 12 -> 6 keeps them
    with torch.no_grad():
        y = wide(x)
    assert not wide.use_res_connect and wide.hidden_channels == 12
    assert_close(y[:, :4], x)
    assert_close(y[:, 4:], torch.zeros(2, 2, 6, 6))


def test_inverted_residual_project_is_linear_and_keys_match_torchvision() -> None:
    block = InvertedResidual(16, 24, stride=2, expand_ratio=6)
    assert [type(m).__name__ for m in block.conv] == [
        "ConvNormAct",
        "ConvNormAct",
        "Conv1x1",
        "BatchNorm2d",
    ]
    assert block.conv[2].activation is None and block.conv[2].bias is None
    assert tuple(block.conv[1][0].weight.shape) == (96, 1, 3, 3)
    assert "conv.2.weight" in block.state_dict() and "conv.3.running_var" in block.state_dict()
    with pytest.raises(ValueError, match="`expand_ratio`"):
        InvertedResidual(16, 24, expand_ratio=0)


# ---------------------------------------------------------------- SqueezeExcite and Fire


@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_squeeze_excite_matches_reference(gate) -> None:
    block = SqueezeExcite(12, 3, gate=gate)
    x = torch.randn(2, 12, 5, 7)
    s = x.mean(dim=(2, 3))  # (N, C)
    s = F.relu(F.linear(s, block.fc1.weight, block.fc1.bias))
    s = F.linear(s, block.fc2.weight, block.fc2.bias)
    s = torch.sigmoid(s) if gate == "sigmoid" else F.hardsigmoid(s)
    with torch.no_grad():
        assert_close(block(x), x * s[:, :, None, None])
    with pytest.raises(ValueError, match=r"`gate`.*Received gate='tanh'"):
        SqueezeExcite(12, 3, gate="tanh")


def test_fire_matches_reference() -> None:
    block = Fire(10, 4, 6, 8)
    x = torch.randn(2, 10, 7, 7)
    s = F.relu(F.conv2d(x, w4(block.squeeze), block.squeeze.bias))
    e1 = F.relu(F.conv2d(s, w4(block.expand1x1), block.expand1x1.bias))
    e3 = F.relu(F.conv2d(s, block.expand3x3.weight, block.expand3x3.bias, padding=1))
    with torch.no_grad():
        assert_close(block(x), torch.cat([e1, e3], 1))
    assert n_params(block) == 10 * 4 + 4 + 4 * 6 + 6 + 4 * 8 * 9 + 8


# ---------------------------------------------------------------- channel shuffle, ShuffleUnit


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("c", "g"), [(6, 2), (12, 3), (12, 4), (5, 1)])
def test_channel_shuffle_is_the_interleaving_permutation(c, g, channels_last) -> None:
    x = torch.randn(2, c, 3, 4)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    perm = [i * (c // g) + j for j in range(c // g) for i in range(g)]
    y = channel_shuffle(x, g)
    assert torch.equal(y, x[:, perm])
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(channel_shuffle(y, c // g), x)  # shuffling by C/g undoes it


class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_shuffle_copies_once(channels_last) -> None:
    x = torch.randn(2, 12, 5, 5)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with _OpLog() as log:
        channel_shuffle(x, 3)
    views = {
        "view",
        "_unsafe_view",
        "transpose",
        "permute",
        "as_strided",
        "expand",
        "detach",
        "alias",
    }
    allocations = {"empty_like", "empty_strided", "empty"}
    data_moves = [op for op in log.ops if op not in views | allocations]
    assert data_moves == ["copy_"], log.ops


def test_shuffle_unit_matches_reference() -> None:
    unit = ShuffleUnit(24, 24, groups=3, mid_channels=6).eval()
    randomize_norms(unit)
    x = torch.randn(2, 24, 6, 6)
    cp, dw, ex = unit.compress, unit.depthwise, unit.expand
    h = F.relu(bn_ref(F.conv2d(x, w4(cp[0]), groups=3), cp[1]))
    h = h[:, [0, 2, 4, 1, 3, 5]]  # 3 groups of 2 channels, interleaved
    h = bn_ref(F.conv2d(h, dw[0].weight, padding=1, groups=6), dw[1])
    h = bn_ref(F.conv2d(h, w4(ex[0]), groups=3), ex[1])
    with torch.no_grad():
        assert_close(unit(x), F.relu(x + h))


def test_shuffle_unit_strided_concatenates_pooled_shortcut() -> None:
    unit = ShuffleUnit(24, 240, groups=3, stride=2, group_first=False).eval()
    assert unit.compress[0].groups == 1 and unit.expand[0].groups == 3
    assert unit.expand[0].out_channels == 240 - 24 and unit.mid_channels == 60
    x = torch.randn(2, 24, 7, 7)
    with torch.no_grad():
        y = unit(x)
    assert y.shape == (2, 240, 4, 4)
    assert_close(y[:, :24], F.avg_pool2d(x, 3, 2, 1))
    assert (y[:, 24:] >= 0).all()


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((24, 48), {}, "`out_channels`.*in_channels=24 when stride=1"),
        ((24, 24), {"stride": 2}, "`out_channels`.*more than in_channels=24"),
        ((24, 240), {"groups": 5, "stride": 2}, "`groups`"),
        ((24, 24), {"group_first": 1}, "`group_first`"),
    ],
)
def test_shuffle_unit_bad_arguments(args, kwargs, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        ShuffleUnit(*args, **kwargs)
    with pytest.raises(ValueError, match=r"`groups`.*divisor of x's 10 channels"):
        channel_shuffle(torch.randn(1, 10, 2, 2), 3)


# ---------------------------------------------------------------- every block


BLOCKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    # name: (factory, input shape, inputs)
    "ConvNormAct": (lambda: ConvNormAct(8, 16, 3, stride=2), (2, 8, 9, 9), 1),
    "ChannelFusion": (lambda: ChannelFusion([8, 8], 16), (2, 8, 9, 9), 2),
    "Bottleneck": (lambda: Bottleneck(8, 4, 16, stride=2), (2, 8, 9, 9), 1),
    "Inception": (lambda: Inception(8, 4, 4, 8, 2, 4, 4), (2, 8, 9, 9), 1),
    "MlpConv": (lambda: MlpConv(8, (16, 12, 10), 3), (2, 8, 9, 9), 1),
    "DepthwiseSeparable": (lambda: DepthwiseSeparable(8, 16, stride=2), (2, 8, 9, 9), 1),
    "InvertedResidual": (lambda: InvertedResidual(8, 8), (2, 8, 9, 9), 1),
    "SqueezeExcite": (lambda: SqueezeExcite(8, 2), (2, 8, 9, 9), 1),
    "Fire": (lambda: Fire(8, 4, 8, 8), (2, 8, 9, 9), 1),
    "ShuffleUnit": (lambda: ShuffleUnit(8, 24, groups=2, stride=2), (2, 8, 9, 9), 1),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_every_block_trains_in_channels_last_and_leaves_input_alone(name) -> None:
    factory, shape, inputs = BLOCKS[name]
    block = factory()
    xs = [
        torch.randn(shape).to(memory_format=torch.channels_last).requires_grad_()
        for _ in range(inputs)
    ]
    before = [x.detach().clone() for x in xs]
    y = block(*xs)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    assert all(torch.equal(x.detach(), b) for x, b in zip(xs, before, strict=True))
    block.eval()
    with torch.no_grad():
        y_eval = block(*[x.detach().contiguous() for x in xs])
    assert y_eval.shape == y.shape


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (Bottleneck(64, 16, 256), "64, 16, 256"),
        (
            Bottleneck(64, 16, 256, stride=2, variant="v1"),
            "64, 16, 256, stride=(2, 2), variant='v1'",
        ),
        (InvertedResidual(8, 8), "8, 8"),
        (InvertedResidual(8, 8, expand_ratio=3, stride=2), "8, 8, stride=(2, 2), expand_ratio=3"),
        (ShuffleUnit(16, 16, groups=8, mid_channels=8), "16, 16, groups=8, mid_channels=8"),
        (
            ShuffleUnit(16, 32, stride=2, groups=2, group_first=False),
            "16, 32, groups=2, stride=2, group_first=False",
        ),
        (Inception(8, 1, 1, 1, 1, 1, 1, branch3_kernel=3), "8, 1, 1, 1, 1, 1, 1, branch3_kernel=3"),
        (SqueezeExcite(8, 2, gate="hardsigmoid"), "8, 2, gate='hardsigmoid'"),
        (ChannelFusion([2, 3], 4, activation="relu"), "[2, 3], 4, activation='relu'"),
        (ConvNormAct(2, 3, 1), "2, 3, kernel_size=(1, 1)"),
        (
            ConvNormAct(2, 3, 3, norm=None, activation=None),
            "2, 3, kernel_size=(3, 3), norm=None, activation=None",
        ),
        (MlpConv(3, (4, 5), 5, padding=0), "3, (4, 5), kernel_size=(5, 5), padding=(0, 0)"),
        (DepthwiseSeparable(4, 8, stride=2), "4, 8, stride=(2, 2)"),
        (Fire(8, 2, 4, 4), "8, 2, 4, 4"),
    ],
)
def test_extra_repr_shows_only_non_default_arguments(block, expected) -> None:
    assert block.extra_repr() == expected
    assert expected in repr(block)


def test_demo_builds_the_seed_examples_from_blocks() -> None:
    from rich.console import Console

    from onebyone.commands import demo

    console = Console(record=True, width=220)
    state = torch.get_rng_state()
    demo._seed_blocks(console, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    rows = [line for line in console.export_text().splitlines() if "->" in line]
    expected = [  # (block, output shape, parameters twice: ours and the Keras layers')
        ("Conv1x1(64, 32", "(1, 32, 28, 28)", "2,080"),
        ("ChannelFusion([32, 64], 64", "(1, 64, 28, 28)", "6,208"),
        ("Bottleneck(64, 32, 64, norm=None)", "(1, 64, 28, 28)", "13,440"),
    ]
    assert len(rows) == 3
    for row, (block, shape, params) in zip(rows, expected, strict=True):
        assert block in row and shape in row and row.count(params) == 2
