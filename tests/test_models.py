"""The architectures of onebyone.models: published sizes, torchvision compatibility, smoke runs.

The torchvision-compatible state-dict layouts and the reference forward passes
below are written from the published architecture definitions (torchvision's
model sources and the papers' tables), independently of the implementation.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onebyone as obo
from onebyone.models import GoogLeNetOutputs, ResNet
from onebyone.nn import Conv1x1

from helpers import assert_close

Shapes = dict[str, tuple[int, ...]]
StateDict = dict[str, torch.Tensor]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def count_macs(model: nn.Module, size: int) -> tuple[int, int]:
    """(MACs of every conv and linear layer, MACs of the linear layers) for one
    ``size x size`` image, run on the meta device (shapes only, no arithmetic)."""
    total, linear = 0, 0

    def hook(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total, linear
        if isinstance(m, nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, Conv1x1):
            total += out.numel() * m.in_channels // m.groups
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features
            linear += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model = model.eval().to("meta")
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return total, linear


# ---------------------------------------------------------------- registry


ALL_MODELS = [
    "googlenet",
    "mobilenet_v1",
    "mobilenet_v2",
    "nin",
    "resnet101",
    "resnet152",
    "resnet50",
    "shufflenet_v1",
    "squeezenet1_0",
    "squeezenet1_1",
]


def test_list_models_names_every_architecture() -> None:
    assert obo.list_models() == ALL_MODELS
    assert obo.models.list_models() == ALL_MODELS


def test_unknown_model_names_suggest_close_matches() -> None:
    with pytest.raises(
        ValueError, match=r"`name`.*Received name='resnet5'\. Did you mean 'resnet50'"
    ):
        obo.create_model("resnet5")
    with pytest.raises(ValueError, match=r"Did you mean 'mobilenet_v2' or 'mobilenet_v1'"):
        obo.create_model("mobilenet-v2")
    with pytest.raises(ValueError, match=r"Received name='vgg16'\.$"):
        obo.create_model("vgg16")
    with pytest.raises(TypeError, match="`name`"):
        obo.create_model(50)  # type: ignore[arg-type]


def test_unknown_options_name_the_accepted_ones() -> None:
    with pytest.raises(
        TypeError,
        match=r"Invalid option `width` for model 'mobilenet_v2'\. Expected one of "
        r"num_classes, width_mult, dropout\. Received width=0\.5\.",
    ):
        obo.create_model("mobilenet_v2", width=0.5)
    with pytest.raises(TypeError, match=r"option `groups` for model 'resnet50'.*variant"):
        obo.create_model("resnet50", groups=3)


@pytest.mark.parametrize(
    ("name", "options", "error", "match"),
    [
        ("resnet50", {"variant": "v2"}, ValueError, "`variant`.*Received variant='v2'"),
        ("resnet50", {"num_classes": 0}, ValueError, "`num_classes`"),
        ("shufflenet_v1", {"groups": 5}, ValueError, "`groups`.*1, 2, 3, 4, 8.*Received groups=5"),
        ("mobilenet_v2", {"width_mult": 0}, ValueError, "`width_mult`.*positive"),
        ("mobilenet_v1", {"width_mult": "1"}, TypeError, "`width_mult`"),
        ("googlenet", {"aux_logits": 1}, TypeError, "`aux_logits`.*True or False"),
        ("squeezenet1_0", {"dropout": 1.0}, ValueError, r"`dropout`.*\[0, 1\)"),
        ("nin", {"num_classes": 2.5}, TypeError, "`num_classes`"),
    ],
)
def test_bad_option_values(name, options, error, match) -> None:
    with pytest.raises(error, match=match):
        obo.create_model(name, **options)


def test_num_classes_defaults_to_the_published_dataset() -> None:
    assert obo.models.model_options("nin")["num_classes"] == 10
    assert all(obo.models.model_options(n)["num_classes"] == 1000 for n in ALL_MODELS if n != "nin")
    assert obo.create_model("squeezenet1_1", num_classes=7).classifier[1].out_channels == 7


# ---------------------------------------------------------------- published sizes


PUBLISHED_PARAMETERS = {
    # torchvision's model documentation (weights' num_params)
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "mobilenet_v2": 3_504_872,
    "googlenet": 6_624_904,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    # Keras applications MobileNet(alpha=1.0): trainable parameters
    "mobilenet_v1": 4_231_976,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_parameter_counts_equal_the_published_ones(name) -> None:
    assert n_params(obo.create_model(name)) == PUBLISHED_PARAMETERS[name]


def test_nin_parameters_follow_the_layer_table() -> None:
    # (in, out, kernel) of every layer of the CIFAR-10 model, each with a bias
    layers = [
        (3, 192, 5),
        (192, 160, 1),
        (160, 96, 1),
        (96, 192, 5),
        (192, 192, 1),
        (192, 192, 1),
        (192, 192, 3),
        (192, 192, 1),
        (192, 10, 1),
    ]
    expected = sum(c * k * s * s + k for c, k, s in layers)
    assert n_params(obo.create_model("nin")) == expected == 966_986


@pytest.mark.parametrize(
    ("width_mult", "millions_of_parameters", "millions_of_macs"),
    [(1.0, 4.2, 569), (0.75, 2.6, 325), (0.5, 1.3, 149), (0.25, 0.5, 41)],
)
def test_mobilenet_v1_width_multipliers_match_the_paper(
    width_mult, millions_of_parameters, millions_of_macs
) -> None:
    # Howard et al., Table 6: parameters and mult-adds at 224x224
    model = obo.create_model("mobilenet_v1", width_mult=width_mult)
    assert round(n_params(model) / 1e6, 1) == millions_of_parameters
    assert round(count_macs(model, 224)[0] / 1e6) == millions_of_macs


@pytest.mark.parametrize(
    ("name", "gmacs", "digits"),
    [
        # multiply-adds at 224x224 as published for torchvision's models, to the published digits
        ("resnet50", 4.089, 3),
        ("mobilenet_v2", 0.301, 3),
        ("googlenet", 1.498, 3),
        ("squeezenet1_0", 0.819, 3),
        ("squeezenet1_1", 0.35, 2),
    ],
)
def test_macs_equal_torchvision_documentation(name, gmacs, digits) -> None:
    assert round(count_macs(obo.create_model(name), 224)[0] / 1e9, digits) == gmacs


@pytest.mark.parametrize(("groups", "mflops"), [(1, 143), (2, 140), (3, 137), (4, 133), (8, 137)])
def test_shufflenet_complexity_matches_the_paper(groups, mflops) -> None:
    # Zhang et al., Table 1 ("complexity", mult-adds of the convolutions at 224x224)
    total, linear = count_macs(obo.create_model("shufflenet_v1", groups=groups), 224)
    assert abs((total - linear) / 1e6 - mflops) < 0.6


def test_shufflenet_parameters_match_published_reimplementations() -> None:
    # mmpretrain ShuffleNet v1 1x (g=3): 1.87 M; Megvii ShuffleNet-Series: 1.9 M (g=3), 2.4 M (g=8)
    g3 = n_params(obo.create_model("shufflenet_v1", groups=3))
    g8 = n_params(obo.create_model("shufflenet_v1", groups=8))
    assert round(g3 / 1e6, 2) == 1.87 and round(g3 / 1e6, 1) == 1.9
    assert round(g8 / 1e6, 1) == 2.4


GOOGLENET_TABLE = [
    # in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj (Szegedy et al., Table 1)
    (192, 64, 96, 128, 16, 32, 32),
    (256, 128, 128, 192, 32, 96, 64),
    (480, 192, 96, 208, 16, 48, 64),
    (512, 160, 112, 224, 24, 64, 64),
    (512, 128, 128, 256, 24, 64, 64),
    (512, 112, 144, 288, 32, 64, 64),
    (528, 256, 160, 320, 32, 128, 128),
    (832, 256, 160, 320, 32, 128, 128),
    (832, 384, 192, 384, 48, 128, 128),
]


def test_googlenet_options_change_exactly_the_expected_parameters() -> None:
    base = n_params(obo.create_model("googlenet"))
    faithful = n_params(obo.create_model("googlenet", faithful=True))
    assert faithful - base == sum(
        (25 - 9) * red * out for _, _, _, _, red, out, _ in GOOGLENET_TABLE
    )

    def aux(c: int) -> int:  # 1x1 conv to 128 + batch norm, fc 2048 -> 1024, fc 1024 -> 1000
        return c * 128 + 2 * 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000

    with_aux = n_params(obo.create_model("googlenet", aux_logits=True))
    assert with_aux - base == aux(512) + aux(528)


# ---------------------------------------------------------------- output shapes


FEATURE_SHAPES = {
    # (model, input size, last feature module, its published output shape)
    "resnet50": (224, "layer4", (2048, 7, 7)),
    "resnet101": (160, "layer4", (2048, 5, 5)),
    "googlenet": (224, "inception5b", (1024, 7, 7)),
    "mobilenet_v1": (224, "features", (1024, 7, 7)),
    "mobilenet_v2": (224, "features", (1280, 7, 7)),
    "squeezenet1_0": (224, "features", (512, 13, 13)),
    "squeezenet1_1": (224, "features", (512, 13, 13)),
    "shufflenet_v1": (224, "stage4", (960, 7, 7)),
    "nin": (32, "features", (17, 8, 8)),  # one map per class
}


@pytest.mark.parametrize("name", sorted(FEATURE_SHAPES))
@pytest.mark.parametrize("batch", [1, 3])
def test_feature_and_output_shapes(name, batch) -> None:
    size, module, shape = FEATURE_SHAPES[name]
    model = obo.create_model(name, num_classes=17).eval().to("meta")
    seen: list[tuple[int, ...]] = []
    getattr(model, module).register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        out = model(torch.empty(batch, 3, size, size, device="meta"))
    assert seen == [(batch, *shape)]
    assert tuple(out.shape) == (batch, 17)


@pytest.mark.parametrize(
    ("name", "size", "spatial"),
    [
        ("resnet50", 100, 4),  # stem 50, pool 25, then strided 3x3s: 13, 7, 4
        ("googlenet", 100, 3),  # stem 50, ceil-mode pools 3/2: 25, 12, 6, then 2/2: 3
        ("squeezenet1_0", 100, 5),  # unpadded 7x7/2 stem 47, ceil-mode pools: 23, 11, 5
        ("mobilenet_v2", 100, 4),  # 50, 25, 13, 7, 4
        ("shufflenet_v1", 100, 4),  # stem 50, pool 25, strided units: 13, 7, 4
    ],
)
def test_odd_input_sizes_follow_the_published_rounding(name, size, spatial) -> None:
    model = obo.create_model(name).eval().to("meta")
    module = {"resnet50": "layer4", "googlenet": "inception5b", "shufflenet_v1": "stage4"}.get(
        name, "features"
    )
    seen: list[tuple[int, ...]] = []
    getattr(model, module).register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    assert seen[0][-2:] == (spatial, spatial)


# ---------------------------------------------------------------- smoke runs


SMOKE = [
    ("nin", {}, 32),
    ("googlenet", {}, 32),
    ("googlenet", {"aux_logits": True, "faithful": True, "transform_input": True}, 32),
    ("resnet50", {}, 32),
    ("resnet50", {"variant": "v1", "zero_init_residual": True}, 32),
    ("resnet101", {}, 32),  # (resnet152 repeats the same blocks: its sizes are checked above)
    ("mobilenet_v1", {"width_mult": 0.5}, 32),
    ("mobilenet_v1", {}, 32),
    ("mobilenet_v2", {"width_mult": 0.35}, 32),
    ("mobilenet_v2", {}, 32),
    ("squeezenet1_0", {}, 32),
    ("squeezenet1_1", {}, 32),
    *[("shufflenet_v1", {"groups": g}, 32) for g in (1, 2, 3, 4, 8)],
]


@pytest.mark.parametrize(("name", "options", "size"), SMOKE, ids=lambda v: str(v))
def test_forward_backward_train_and_eval_channels_last(name, options, size) -> None:
    model = obo.create_model(name, num_classes=5, **options)
    x = torch.randn(2, 3, size, size).to(memory_format=torch.channels_last)
    before = x.clone()
    model.train()
    out = model(x.requires_grad_())
    if isinstance(out, GoogLeNetOutputs):
        assert all(t.shape == (2, 5) for t in out)
        loss = out.logits.sum() + 0.3 * (out.aux_logits1.sum() + out.aux_logits2.sum())
    else:
        assert out.shape == (2, 5)
        loss = out.sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert x.grad is not None and torch.isfinite(x.grad).all()
    model.eval()
    with torch.no_grad():
        y = model(x.detach())
    assert isinstance(y, torch.Tensor) and y.shape == (2, 5) and torch.isfinite(y).all()
    assert torch.equal(x.detach(), before)  # the input is never modified


def test_googlenet_aux_outputs_only_in_training() -> None:
    model = obo.create_model("googlenet", aux_logits=True, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    out = model(x)
    assert isinstance(out, GoogLeNetOutputs) and out.logits.shape == (2, 3)
    assert isinstance(model.eval()(x), torch.Tensor)
    assert isinstance(obo.create_model("googlenet").train()(x), torch.Tensor)


# ---------------------------------------------------------------- torchvision state dicts


def _conv(keys: Shapes, name: str, out: int, cin: int, k: int, *, bias: bool = False) -> None:
    keys[f"{name}.weight"] = (out, cin, k, k)
    if bias:
        keys[f"{name}.bias"] = (out,)


def _bn(keys: Shapes, name: str, c: int) -> None:
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{name}.{leaf}"] = (c,)
    keys[f"{name}.num_batches_tracked"] = ()


def tv_resnet(layers: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000) -> Shapes:
    keys: Shapes = {}
    _conv(keys, "conv1", 64, 3, 7)
    _bn(keys, "bn1", 64)
    cin = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            _conv(keys, f"{p}.conv1", planes, cin, 1)
            _bn(keys, f"{p}.bn1", planes)
            _conv(keys, f"{p}.conv2", planes, planes, 3)
            _bn(keys, f"{p}.bn2", planes)
            _conv(keys, f"{p}.conv3", planes * 4, planes, 1)
            _bn(keys, f"{p}.bn3", planes * 4)
            if j == 0:
                _conv(keys, f"{p}.downsample.0", planes * 4, cin, 1)
                _bn(keys, f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    keys["fc.weight"], keys["fc.bias"] = (classes, 2048), (classes,)
    return keys


MOBILENET_V2_TABLE = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def tv_mobilenet_v2(classes: int = 1000) -> Shapes:
    keys: Shapes = {}
    _conv(keys, "features.0.0", 32, 3, 3)
    _bn(keys, "features.0.1", 32)
    cin, idx = 32, 1
    for t, c, n, _ in MOBILENET_V2_TABLE:
        for _ in range(n):
            p, hidden, i = f"features.{idx}.conv", cin * t, 0
            if t != 1:
                _conv(keys, f"{p}.0.0", hidden, cin, 1)
                _bn(keys, f"{p}.0.1", hidden)
                i = 1
            keys[f"{p}.{i}.0.weight"] = (hidden, 1, 3, 3)  # depthwise
            _bn(keys, f"{p}.{i}.1", hidden)
            _conv(keys, f"{p}.{i + 1}", c, hidden, 1)
            _bn(keys, f"{p}.{i + 2}", c)
            cin, idx = c, idx + 1
    _conv(keys, f"features.{idx}.0", 1280, cin, 1)
    _bn(keys, f"features.{idx}.1", 1280)
    keys["classifier.1.weight"], keys["classifier.1.bias"] = (classes, 1280), (classes,)
    return keys


GOOGLENET_NAMES = ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]


def tv_googlenet(classes: int = 1000, aux: bool = False) -> Shapes:
    keys: Shapes = {}

    def basic(name: str, out: int, cin: int, k: int) -> None:
        _conv(keys, f"{name}.conv", out, cin, k)
        _bn(keys, f"{name}.bn", out)

    basic("conv1", 64, 3, 7)
    basic("conv2", 64, 64, 1)
    basic("conv3", 192, 64, 3)
    for name, (cin, c1, c3r, c3, c5r, c5, pp) in zip(GOOGLENET_NAMES, GOOGLENET_TABLE, strict=True):
        p = f"inception{name}"
        basic(f"{p}.branch1", c1, cin, 1)
        basic(f"{p}.branch2.0", c3r, cin, 1)
        basic(f"{p}.branch2.1", c3, c3r, 3)
        basic(f"{p}.branch3.0", c5r, cin, 1)
        basic(f"{p}.branch3.1", c5, c5r, 3)  # torchvision's 3x3 in the "5x5" branch
        basic(f"{p}.branch4.1", pp, cin, 1)
    if aux:
        for name, cin in (("aux1", 512), ("aux2", 528)):
            basic(f"{name}.conv", 128, cin, 1)
            keys[f"{name}.fc1.weight"], keys[f"{name}.fc1.bias"] = (1024, 2048), (1024,)
            keys[f"{name}.fc2.weight"], keys[f"{name}.fc2.bias"] = (classes, 1024), (classes,)
    keys["fc.weight"], keys["fc.bias"] = (classes, 1024), (classes,)
    return keys


SQUEEZENET_FEATURES = {
    # (stem out, stem kernel, {feature index: Fire(in, squeeze, e1, e3)})
    "1_0": (
        96,
        7,
        {
            3: (96, 16, 64, 64),
            4: (128, 16, 64, 64),
            5: (128, 32, 128, 128),
            7: (256, 32, 128, 128),
            8: (256, 48, 192, 192),
            9: (384, 48, 192, 192),
            10: (384, 64, 256, 256),
            12: (512, 64, 256, 256),
        },
    ),
    "1_1": (
        64,
        3,
        {
            3: (64, 16, 64, 64),
            4: (128, 16, 64, 64),
            6: (128, 32, 128, 128),
            7: (256, 32, 128, 128),
            9: (256, 48, 192, 192),
            10: (384, 48, 192, 192),
            11: (384, 64, 256, 256),
            12: (512, 64, 256, 256),
        },
    ),
}


def tv_squeezenet(version: str, classes: int = 1000) -> Shapes:
    keys: Shapes = {}
    stem, k, fires = SQUEEZENET_FEATURES[version]
    _conv(keys, "features.0", stem, 3, k, bias=True)
    for i, (cin, s, e1, e3) in fires.items():
        _conv(keys, f"features.{i}.squeeze", s, cin, 1, bias=True)
        _conv(keys, f"features.{i}.expand1x1", e1, s, 1, bias=True)
        _conv(keys, f"features.{i}.expand3x3", e3, s, 3, bias=True)
    _conv(keys, "classifier.1", classes, 512, 1, bias=True)
    return keys


TORCHVISION_LAYOUTS: dict[str, Callable[[], Shapes]] = {
    "resnet50": tv_resnet,
    "resnet101": lambda: tv_resnet((3, 4, 23, 3)),
    "mobilenet_v2": tv_mobilenet_v2,
    "googlenet": tv_googlenet,
    "googlenet+aux": lambda: tv_googlenet(aux=True),
    "squeezenet1_0": lambda: tv_squeezenet("1_0"),
    "squeezenet1_1": lambda: tv_squeezenet("1_1"),
}


def _build(layout: str) -> nn.Module:
    if layout == "googlenet+aux":
        return obo.create_model("googlenet", aux_logits=True)
    return obo.create_model(layout)


@pytest.mark.parametrize("layout", sorted(TORCHVISION_LAYOUTS))
def test_state_dict_keys_and_shapes_match_torchvision(layout) -> None:
    expected = TORCHVISION_LAYOUTS[layout]()
    state = _build(layout).state_dict()
    assert sorted(state) == sorted(expected)
    for key, shape in expected.items():
        got = tuple(state[key].shape)
        # a 1x1 convolution keeps its weight as the (K, C/g) matrix
        one_by_one = len(shape) == 4 and shape[2:] == (1, 1) and got == shape[:2]
        assert got == shape or one_by_one, f"{key}: {got} != {shape}"


def random_checkpoint(layout: Shapes, dtype: torch.dtype = torch.float64) -> StateDict:
    """A state dict shaped like torchvision's (4-D 1x1 weights) with random values."""
    sd: StateDict = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, dtype=dtype) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            sd[key] = torch.randn(shape, dtype=dtype) * 0.1
        elif len(shape) == 1:  # batch-norm weight
            sd[key] = torch.rand(shape, dtype=dtype) + 0.5
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            sd[key] = torch.randn(shape, dtype=dtype) * (1.0 / fan_in) ** 0.5
    return sd


def _bnf(x: torch.Tensor, sd: StateDict, p: str, eps: float = 1e-5) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        False,
        0.0,
        eps,
    )


def ref_resnet(
    sd: StateDict, x: torch.Tensor, layers: tuple[int, ...] = (3, 4, 6, 3)
) -> torch.Tensor:
    x = F.relu(_bnf(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for i, blocks in enumerate(layers):
        for j in range(blocks):
            p, s = f"layer{i + 1}.{j}", (2 if i > 0 and j == 0 else 1)
            h = F.relu(_bnf(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
            h = F.relu(
                _bnf(F.conv2d(h, sd[f"{p}.conv2.weight"], stride=s, padding=1), sd, f"{p}.bn2")
            )
            h = _bnf(F.conv2d(h, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if j == 0:
                x = _bnf(
                    F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=s), sd, f"{p}.downsample.1"
                )
            x = F.relu(h + x)
    return F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd["fc.weight"], sd["fc.bias"])


def ref_mobilenet_v2(sd: StateDict, x: torch.Tensor) -> torch.Tensor:
    x = F.relu6(
        _bnf(F.conv2d(x, sd["features.0.0.weight"], stride=2, padding=1), sd, "features.0.1")
    )
    cin, idx = 32, 1
    for t, c, n, s in MOBILENET_V2_TABLE:
        for r in range(n):
            p, i, h = f"features.{idx}.conv", 0, x
            if t != 1:
                h = F.relu6(_bnf(F.conv2d(h, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1"))
                i = 1
            stride = s if r == 0 else 1
            h = F.conv2d(h, sd[f"{p}.{i}.0.weight"], stride=stride, padding=1, groups=h.shape[1])
            h = F.relu6(_bnf(h, sd, f"{p}.{i}.1"))
            h = _bnf(F.conv2d(h, sd[f"{p}.{i + 1}.weight"]), sd, f"{p}.{i + 2}")
            x = x + h if stride == 1 and cin == c else h
            cin, idx = c, idx + 1
    x = F.relu6(_bnf(F.conv2d(x, sd[f"features.{idx}.0.weight"]), sd, f"features.{idx}.1"))
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return F.linear(x, sd["classifier.1.weight"], sd["classifier.1.bias"])


def ref_googlenet(sd: StateDict, x: torch.Tensor) -> torch.Tensor:
    def basic(t: torch.Tensor, p: str, stride: int = 1) -> torch.Tensor:
        w = sd[f"{p}.conv.weight"]
        t = F.conv2d(t, w, stride=stride, padding=(w.shape[-1] - 1) // 2)
        return F.relu(_bnf(t, sd, f"{p}.bn", eps=0.001))

    x = F.max_pool2d(basic(x, "conv1", 2), 3, 2, ceil_mode=True)
    x = F.max_pool2d(basic(basic(x, "conv2"), "conv3"), 3, 2, ceil_mode=True)
    for name in GOOGLENET_NAMES:
        p = f"inception{name}"
        x = torch.cat(
            [
                basic(x, f"{p}.branch1"),
                basic(basic(x, f"{p}.branch2.0"), f"{p}.branch2.1"),
                basic(basic(x, f"{p}.branch3.0"), f"{p}.branch3.1"),
                basic(F.max_pool2d(x, 3, 1, 1, ceil_mode=True), f"{p}.branch4.1"),
            ],
            1,
        )
        if name == "3b":
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        elif name == "4e":
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    return F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd["fc.weight"], sd["fc.bias"])


def ref_squeezenet(sd: StateDict, x: torch.Tensor, version: str) -> torch.Tensor:
    _, _, fires = SQUEEZENET_FEATURES[version]
    x = F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], stride=2))
    for i in range(2, 13):
        if i not in fires:  # every other index after the stem is a ceil-mode max pool
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
            continue
        p = f"features.{i}"
        s = F.relu(F.conv2d(x, sd[f"{p}.squeeze.weight"], sd[f"{p}.squeeze.bias"]))
        e1 = F.relu(F.conv2d(s, sd[f"{p}.expand1x1.weight"], sd[f"{p}.expand1x1.bias"]))
        e3 = F.relu(F.conv2d(s, sd[f"{p}.expand3x3.weight"], sd[f"{p}.expand3x3.bias"], padding=1))
        x = torch.cat([e1, e3], 1)
    x = F.relu(F.conv2d(x, sd["classifier.1.weight"], sd["classifier.1.bias"]))
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


REFERENCES: dict[str, tuple[Callable[[StateDict, torch.Tensor], torch.Tensor], int]] = {
    "resnet50": (ref_resnet, 64),
    "mobilenet_v2": (ref_mobilenet_v2, 64),
    "googlenet": (ref_googlenet, 64),
    "squeezenet1_0": (lambda sd, x: ref_squeezenet(sd, x, "1_0"), 63),
    "squeezenet1_1": (lambda sd, x: ref_squeezenet(sd, x, "1_1"), 63),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_torchvision_checkpoint_loads_strictly_and_gives_the_same_outputs(name) -> None:
    reference, size = REFERENCES[name]
    checkpoint = random_checkpoint(TORCHVISION_LAYOUTS[name]())
    model = obo.create_model(name).double()
    model.load_state_dict(checkpoint, strict=True)
    model.eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        assert_close(model(x), reference(checkpoint, x), torch.float64)
        assert_close(
            model(x.to(memory_format=torch.channels_last)), reference(checkpoint, x), torch.float64
        )


def test_load_state_dict_rejects_a_mismatched_checkpoint() -> None:
    checkpoint = random_checkpoint(tv_resnet(), torch.float32)
    del checkpoint["layer1.0.conv3.weight"]
    with pytest.raises(RuntimeError, match=r"Missing key.*layer1.0.conv3.weight"):
        obo.create_model("resnet50").load_state_dict(checkpoint, strict=True)


# ---------------------------------------------------------------- norms and initialisation


@pytest.mark.parametrize(
    ("name", "eps"),
    [("resnet50", 1e-5), ("mobilenet_v2", 1e-5), ("googlenet", 1e-3), ("shufflenet_v1", 1e-5)],
)
def test_batch_norm_settings(name, eps) -> None:
    norms = [m for m in obo.create_model(name).modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == eps and m.momentum == 0.1 for m in norms)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)


def test_initialisation_follows_torchvision() -> None:
    resnet = obo.create_model("resnet50")
    w = resnet.layer3[0].conv1.weight  # Conv1x1 (256, 512): Kaiming normal, fan-out = 256
    assert isinstance(resnet.layer3[0].conv1, Conv1x1)
    assert abs(w.std().item() / (2 / 256) ** 0.5 - 1) < 0.02
    zero = ResNet((1, 1, 1, 1), zero_init_residual=True)
    assert all(not b.bn3.weight.any() for b in zero.modules() if hasattr(b, "bn3"))

    squeeze = obo.create_model("squeezenet1_0")
    final = squeeze.classifier[1].weight  # normal(0, 0.01), all other convs Kaiming uniform
    assert abs(final.std().item() / 0.01 - 1) < 0.02
    assert not squeeze.features[3].squeeze.bias.any()

    google = obo.create_model("googlenet")
    weights = torch.cat(
        [
            m.weight.flatten()
            for m in google.modules()
            if isinstance(m, (nn.Conv2d, Conv1x1, nn.Linear))
        ]
    )
    assert weights.abs().max() <= 0.02 and abs(weights.std().item() - 0.0088) < 0.0005

    mobile = obo.create_model("mobilenet_v2")
    fc = mobile.classifier[1]
    assert abs(fc.weight.std().item() / 0.01 - 1) < 0.02 and not fc.bias.any()


def test_every_pointwise_convolution_is_a_conv1x1() -> None:
    for name in ALL_MODELS:
        model = obo.create_model(name)
        plain_1x1 = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
        ]
        assert not plain_1x1, (name, plain_1x1)
        assert any(isinstance(m, Conv1x1) for m in model.modules())


# ---------------------------------------------------------------- compilation and TorchScript


COMPILE_CASES: dict[str, Callable[[], nn.Module]] = {
    # one small configuration per family, dropout off so compiled and eager runs agree
    "nin": lambda: obo.create_model("nin", dropout=0.0),
    "googlenet": lambda: obo.create_model("googlenet", num_classes=4, dropout=0.0),
    "resnet": lambda: ResNet((1, 1, 1, 1), num_classes=4),
    "mobilenet_v1": lambda: obo.create_model(
        "mobilenet_v1", width_mult=0.25, num_classes=4, dropout=0.0
    ),
    "mobilenet_v2": lambda: obo.create_model(
        "mobilenet_v2", width_mult=0.35, num_classes=4, dropout=0.0
    ),
    "squeezenet": lambda: obo.create_model("squeezenet1_1", num_classes=4, dropout=0.0),
    "shufflenet": lambda: obo.create_model("shufflenet_v1", groups=2, num_classes=4),
}


def _check_compiled(model: nn.Module, backend: str, x: torch.Tensor, *, fullgraph: bool) -> None:
    """Compiled training step (outputs, gradients) and inference equal eager ones."""
    torch._dynamo.reset()
    model.train()
    compiled = torch.compile(model, backend=backend, fullgraph=fullgraph)
    y = compiled(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for m in model.modules():  # undo the running-statistics update of the compiled step
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    y_eager = model(x)
    y_eager.square().sum().backward()
    assert_close(y, y_eager, x.dtype)
    # batch norm over 2 images amplifies rounding: compare relative to each gradient's
    # scale, and a gradient that is zero in exact arithmetic (a bias before a norm) to the
    # model's largest, the size of the terms whose rounding it holds (1e6 float64 epsilons)
    largest = max(float(p.grad.abs().max()) for p in model.parameters())
    for g, p in zip(grads, model.parameters(), strict=True):
        scale = float(p.grad.abs().max())
        assert float((g - p.grad).abs().max()) <= 1e-7 * scale + 1e-10 * largest + 1e-12
    model.eval()
    inference = torch.compile(model, backend=backend)  # CPU inference: oneDNN path
    with torch.no_grad():
        x32 = x.float()
        assert_close(inference.float()(x32), model.float()(x32), torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(COMPILE_CASES))
def test_torch_compile_every_family(family) -> None:
    # training captures as one graph (fullgraph=True); AOTAutograd's eager backend
    # checks capture and autograd without the minutes Inductor's C++ codegen takes here
    model = COMPILE_CASES[family]().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).to(memory_format=torch.channels_last)
    _check_compiled(model, "aot_eager", x, fullgraph=True)


@pytest.mark.slow
def test_torch_compile_inductor() -> None:
    # the default backend end to end on one family: grouped and strided Conv1x1,
    # channel shuffle, residual adds, concatenation, batch norm
    model = COMPILE_CASES["shufflenet"]().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).to(memory_format=torch.channels_last)
    _check_compiled(model, "inductor", x, fullgraph=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_models_are_not_torchscript_scriptable() -> None:
    # docs/op.md's reason: onebyone.conv1x1 is Python (keyword-only arguments with
    # defaults, argument validation, __torch_function__, backend dispatch)
    model = obo.create_model("squeezenet1_1").eval()
    with pytest.raises(torch.jit.frontend.NotSupportedError, match="keyword-only arguments"):
        torch.jit.script(model)
    # and a trace fails its own check: the kernel is chosen in Python on every call
    # (by layout, shape and grad mode), so the check's re-run records another graph
    x = torch.randn(1, 3, 32, 32).to(memory_format=torch.channels_last)
    with pytest.raises(Exception, match="Graphs differed across invocations"):
        torch.jit.trace(model, x)


def test_torch_export_captures_a_model() -> None:
    model = obo.create_model("squeezenet1_1", num_classes=6).eval()
    x = torch.randn(1, 3, 48, 48)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert_close(program.module()(x), model(x))
