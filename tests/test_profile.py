"""profile(): every executed layer counted exactly, functional calls included."""

from __future__ import annotations

import copy
import csv
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import onebyone as obo
from onebyone.profiling import CATEGORIES, CSV_COLUMNS, MachinePeak

from helpers import Tokens

PEAK = MachinePeak(gflops=100.0, gbps=10.0, engine="test")


class Functional(nn.Module):
    """Layers called as functions inside forward, on the model's own parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3))
        self.b1 = nn.Parameter(torch.zeros(8))
        self.w3 = nn.Parameter(torch.randn(8, 8, 3, 3))
        self.fc = nn.Parameter(torch.randn(5, 8))
        self.proj = nn.Parameter(torch.randn(5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = obo.conv1x1(x, self.w1, self.b1, stride=2, activation="relu")  # (2, 8, 3, 3)
        y = F.conv2d(y, self.w3, padding=1)  # (2, 8, 3, 3)
        z = F.adaptive_avg_pool2d(y, 1).flatten(1)  # (2, 8)
        z = F.linear(z, self.fc)  # (2, 5)
        return z @ self.proj  # (2, 4)


def test_functional_calls_are_counted():
    p = obo.profile(Functional(), (2, 3, 6, 6), peak=PEAK)
    got = [(l.op, l.category, l.cost.macs, l.cost.bias_adds, l.cost.other_ops, l.cost.params)
           for l in p.layers]  # fmt: skip
    assert got == [
        ("conv1x1", "pointwise", 2 * 8 * 3 * 3 * 3, 2 * 8 * 9, 2 * 8 * 9, 8 * 3 + 8),
        ("conv2d", "conv", 2 * 8 * 9 * 8 * 9, 0, 0, 8 * 8 * 9),
        ("adaptive_avg_pool2d", "pooling", 0, 0, 2 * 8 * 9, 0),
        ("linear", "linear", 2 * 5 * 8, 0, 0, 5 * 8),
        ("matmul", "linear", 2 * 4 * 5, 0, 0, 5 * 4),
    ]
    assert {(l.name, l.type) for l in p.layers} == {("", "Functional")}
    assert [l.output_shape for l in p.layers] == [(2, 8, 3, 3), (2, 8, 3, 3), (2, 8, 1, 1),
                                                  (2, 5), (2, 4)]  # fmt: skip
    assert p.layers[0].parameters == ("w1", "b1")
    assert p.total.params == sum(t.numel() for t in Functional().parameters())
    assert p.uncounted == {}


def test_attention_counts_qk_and_av_with_the_softmax_apart():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    mask = torch.randn(5, 7)

    class Attend(nn.Module):
        def forward(self, q, k, v, mask):
            plain = F.scaled_dot_product_attention(q, k, v)  # (2, 3, 5, 4)
            masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return plain + masked + causal

    p = obo.profile(Attend(), (q, k, v, mask), peak=PEAK)
    attention = [l for l in p.layers if l.op == "scaled_dot_product_attention"]
    assert [l.category for l in attention] == ["attention"] * 3
    scores = 2 * 3 * 5 * 7  # batch x heads x queries x keys
    # QK^T: scores x 8; weights times V: scores x 4
    assert [l.cost.macs for l in attention] == [scores * 8 + scores * 4] * 3
    # per score: the scale, then the mask where there is one, then the softmax
    assert [l.cost.other_ops for l in attention] == [(1 + 5) * scores, (1 + 1 + 5) * scores,
                                                     (1 + 1 + 5) * scores]  # fmt: skip
    assert attention[0].cost.bytes_read == 4 * (q.numel() + k.numel() + v.numel())
    assert attention[1].cost.bytes_read == 4 * (q.numel() + k.numel() + v.numel() + 5 * 7)
    assert attention[0].cost.bytes_written == 4 * 2 * 3 * 5 * 4
    assert attention[0].output_shape == (2, 3, 5, 4)
    assert p.by_category()["attention"].macs == 3 * scores * 12
    assert p.uncounted == {}

    # PyTorch's own counter sees the two products where the math backend runs them
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v)
    assert attention[0].cost.flops == counter.get_total_flops()


def test_softmax_is_counted_and_asserts_are_free():
    class Head(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch._assert(x.shape[1] == 6, "six classes")
            return x.softmax(-1) + F.log_softmax(x, dim=-1)

    p = obo.profile(Head(), (4, 6), peak=PEAK)
    assert [(l.op, l.category, l.cost.other_ops) for l in p.layers] == [
        ("softmax", "elementwise", 5 * 24),  # max, subtract, exp, sum, divide
        ("log_softmax", "elementwise", 5 * 24),
        ("add", "elementwise", 24),
    ]
    assert p.uncounted == {}  # _assert does no arithmetic: not listed


def test_parameters_read_through_data_moves_are_counted():
    model = Tokens()
    p = obo.profile(model, (2, 4, 8), peak=PEAK)
    sizes = {name: t.numel() for name, t in model.named_parameters()}
    # every parameter except `unread` (looked at for its shape only) is read
    assert p.unused_params == {"unread": 8}
    assert p.total.params == sum(sizes.values()) - 8
    assert set(p.parameters_read) == set(sizes) - {"unread"}
    # each is charged to the counted call that consumes it, through views, indexing and cat
    assert [(l.op, l.parameters) for l in p.layers] == [
        ("linear", ("embed.weight", "embed.bias")),
        ("add", ("cls_token", "pos_embed")),
        ("scaled_dot_product_attention", ("bias_table",)),
    ]
    assert p.layers[1].cost.params == 8 + 5 * 8
    # `register` only goes into the output: in the total, in no layer
    assert "register" not in {name for l in p.layers for name in l.parameters}
    assert p.uncounted == {}


def touched_inputs(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """Input elements a convolution reads, found by autograd: those whose gradient is not 0."""
    x = x.clone().requires_grad_(True)
    with torch.no_grad():
        weight = torch.ones_like(conv.weight)
    F.conv2d(
        x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups
    ).sum().backward()
    return int((x.grad != 0).sum())


def test_convolutions_match_an_independent_count():
    # every number from the layer's own output shape and parameters, and autograd: nothing
    # from onebyone.cost, which profile() shares
    convs = [
        dict(in_channels=6, out_channels=12, kernel_size=1),
        dict(in_channels=12, out_channels=12, kernel_size=1, stride=2, groups=3, bias=False),
        dict(in_channels=12, out_channels=12, kernel_size=3, padding=1, groups=12),
        dict(in_channels=12, out_channels=18, kernel_size=(3, 1), stride=(2, 1), groups=3),
        dict(in_channels=18, out_channels=10, kernel_size=5, padding=2, dilation=2, bias=False),
    ]
    model = nn.Sequential(*(nn.Conv2d(**c) for c in convs))
    x = torch.randn(2, 6, 23, 17)
    p = obo.profile(model, x, peak=PEAK)
    assert [l.category for l in p.layers] == ["pointwise", "pointwise", "depthwise", "grouped",
                                              "conv"]  # fmt: skip
    assert [l.name for l in p.layers] == ["0", "1", "2", "3", "4"]
    # output sizes: 23x17 -> 12x9 (1x1, stride 2) -> 12x9 -> 5x9 ((3, 1), stride (2, 1)) -> 1x5
    # (5x5 dilated 2 spans 9: (5 + 4 - 9) + 1 = 1 and (9 + 4 - 9) + 1 = 5)
    assert [l.output_shape[2:] for l in p.layers] == [(23, 17), (12, 9), (12, 9), (5, 9), (1, 5)]
    # MACs: outputs x (in_channels / groups) x kernel taps
    assert [l.cost.macs for l in p.layers] == [
        2 * 12 * 23 * 17 * 6,
        2 * 12 * 12 * 9 * 4,
        2 * 12 * 12 * 9 * 1 * 9,
        2 * 18 * 5 * 9 * 4 * 3,
        2 * 10 * 1 * 5 * 18 * 25,
    ]
    assert [l.cost.params for l in p.layers] == [12 * 6 + 12, 12 * 4, 12 * 9 + 12,
                                                 18 * 4 * 3 + 18, 10 * 18 * 25]  # fmt: skip
    assert [l.cost.bias_adds for l in p.layers] == [2 * 12 * 23 * 17, 0, 2 * 12 * 12 * 9,
                                                    2 * 18 * 5 * 9, 0]  # fmt: skip
    h = x
    for layer, conv in zip(p.layers, model, strict=True):
        weights = sum(t.numel() for t in conv.parameters())
        assert layer.cost.bytes_read == 4 * (touched_inputs(conv, h) + weights), layer.name
        h = conv(h).detach()
        assert layer.cost.bytes_written == 4 * h.numel()
    # the 1x1 stride-2 layer reads only the sampled pixels: 12 of 23 rows, 9 of 17 columns
    assert p.layers[1].cost.bytes_read == 4 * (2 * 12 * 12 * 9 + 12 * 4)
    assert p.total.params == sum(t.numel() for t in model.parameters())


def test_totals_agree_with_pytorch_flop_counter():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(16, 32, 1),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    x = torch.randn(2, 3, 33, 29)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    p = obo.profile(model, x, peak=PEAK)
    assert p.total.flops == counter.get_total_flops()
    assert p.total.params == sum(t.numel() for t in model.parameters())
    by_category = p.by_category()
    assert list(by_category) == list(CATEGORIES)
    assert sum(c.macs for c in by_category.values()) == p.total.macs
    assert sum(c.bytes_read for c in by_category.values()) == p.total.bytes_read
    assert [l.category for l in p.layers if l.op == "conv_transpose2d"] == ["grouped"]

    tokens = nn.Linear(32, 10)  # applied to every row of a (2, 7, 32) input
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tokens(torch.zeros(2, 7, 32))
    (row,) = obo.profile(tokens, (2, 7, 32), peak=PEAK).layers
    assert row.cost.flops == counter.get_total_flops() == 2 * 2 * 7 * 10 * 32
    assert row.cost.bias_adds == 2 * 7 * 10


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.block(x))
        return self.act(self.block(x)) + x


def test_a_module_used_twice_is_counted_twice():
    p = obo.profile(Twice(), (1, 4, 5, 5), peak=PEAK)
    assert [(l.name, l.type, l.op) for l in p.layers] == [
        ("block", "Conv2d", "conv2d"),
        ("act", "ReLU", "relu"),
        ("block", "Conv2d", "conv2d"),
        ("act", "ReLU", "relu"),
        ("", "Twice", "add"),
    ]
    assert p.layers[0].cost == p.layers[2].cost
    assert p.layers[0].cost.macs == 4 * 5 * 5 * 4
    assert p.total.macs == 2 * 4 * 5 * 5 * 4
    assert p.total.params == 4 * 4 + 4 == 20  # the shared weights exist once
    assert p.by_category()["pointwise"].params == 20


def test_conv1x1_epilogue_is_counted_apart():
    layer = obo.nn.Conv1x1(16, 8, activation="relu")
    x, r = torch.randn(2, 16, 7, 9), torch.randn(2, 8, 7, 9)

    class WithResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pw = layer

        def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return self.pw(x, residual=r)

    (row,) = obo.profile(WithResidual(), (x, r), peak=PEAK).layers
    outputs = 2 * 8 * 7 * 9
    assert (row.name, row.type, row.op, row.category) == ("pw", "Conv1x1", "conv1x1", "pointwise")
    assert row.cost.macs == outputs * 16 and row.cost.params == 8 * 16 + 8
    assert row.cost.bias_adds == outputs
    assert row.cost.other_ops == 2 * outputs  # the residual add and the relu
    assert row.cost.bytes_read == 4 * (x.numel() + 8 * 16 + 8 + r.numel())
    assert row.cost.bytes_written == 4 * outputs

    bare = obo.nn.Conv1x1(16, 8, bias=False, groups=4, stride=2)
    (row,) = obo.profile(bare, x, peak=PEAK).layers
    sampled = 2 * 16 * 4 * 5  # rows 0, 2, 4, 6 and columns 0, 2, 4, 6, 8
    assert row.cost == obo.Cost(params=8 * 4, macs=2 * 8 * 4 * 5 * 4, bytes_read=4 * (sampled + 32),
                                bytes_written=4 * 2 * 8 * 4 * 5)  # fmt: skip


def test_norms_count_affine_terms_not_running_statistics():
    model = nn.Sequential(
        nn.BatchNorm2d(6),
        nn.BatchNorm2d(6, affine=False),
        nn.GroupNorm(2, 6),
        nn.LayerNorm([6, 4, 5]),
    )
    p = obo.profile(model, (3, 6, 4, 5), peak=PEAK)
    n = 3 * 6 * 4 * 5
    assert [l.category for l in p.layers] == ["norm"] * 4
    assert [l.cost.params for l in p.layers] == [12, 0, 12, 2 * 120]
    # stored statistics: scale and shift (2 per element); computed ones: 5 per element
    assert [l.cost.other_ops for l in p.layers] == [2 * n, 2 * n, 5 * n, 5 * n]
    # batch norm reads x, running mean and variance (and the affine terms when it has them)
    assert p.layers[0].cost.bytes_read == 4 * (n + 4 * 6)
    assert p.layers[1].cost.bytes_read == 4 * (n + 2 * 6)
    assert p.total.params == sum(t.numel() for t in model.parameters())


def test_pooling_counts_every_window_read():
    model = nn.Sequential(
        nn.MaxPool2d(3, 2, 1),  # 7 -> 4; per axis the windows read 2 + 3 + 3 + 2 positions
        nn.AvgPool2d(2, ceil_mode=True),  # 4 -> 2; 2 + 2
        nn.AdaptiveAvgPool2d((1, 2)),  # 2x2 -> 1x2: 2 rows, columns [0, 1), [1, 2)
    )
    p = obo.profile(model, (1, 3, 7, 7), peak=PEAK)
    assert [l.cost.other_ops for l in p.layers] == [3 * 10 * 10, 3 * 4 * 4, 3 * 2 * 2]
    assert [l.output_shape for l in p.layers] == [(1, 3, 4, 4), (1, 3, 2, 2), (1, 3, 1, 2)]

    class Mean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3))

    (row,) = obo.profile(Mean(), (2, 5, 3, 3), peak=PEAK).layers
    assert (row.category, row.cost.other_ops, row.cost.bytes_written) == ("pooling", 90, 40)


class WithAux(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 1)
        self.aux = nn.Linear(4, 2)  # runs only in training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.training:
            return self.aux(y.mean((2, 3)))
        return torch.einsum("nchw->nc", y)


def test_unused_parameters_and_uncounted_calls_are_reported_apart():
    model = WithAux()
    p = obo.profile(model, (1, 3, 4, 4), peak=PEAK)
    assert p.unused_params == {"aux.weight": 8, "aux.bias": 2}
    assert p.total.params == 16
    assert p.total.params + sum(p.unused_params.values()) == sum(
        t.numel() for t in model.parameters()
    )
    assert p.uncounted == {"einsum": 1}


def test_the_model_and_the_input_are_left_as_they_were():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    x_before = x.clone()
    p64 = obo.profile(model, x, dtype=torch.float64, peak=PEAK)
    p32 = obo.profile(model, x, peak=PEAK)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(t.dtype == torch.float32 for t in model.parameters())
    assert torch.equal(x, x_before)
    assert (p64.dtype, p32.dtype) == ("float64", "float32")
    assert [l.cost.macs for l in p64.layers] == [l.cost.macs for l in p32.layers]
    assert p64.total.bytes_moved == 2 * p32.total.bytes_moved


def test_meta_models_give_the_same_counts_without_computing():
    with torch.device("meta"):
        meta = Twice()
    real = obo.profile(Twice(), (2, 4, 9, 9), peak=PEAK)
    fast = obo.profile(meta, (2, 4, 9, 9), peak=PEAK)
    assert fast.layers == real.layers


def test_input_forms():
    model = nn.Conv2d(3, 4, 1)
    by_shape = obo.profile(model, (1, 3, 5, 5), peak=PEAK)
    by_tensor = obo.profile(model, torch.zeros(1, 3, 5, 5), peak=PEAK)
    by_list = obo.profile(model, [1, 3, 5, 5], peak=PEAK)
    assert by_shape.layers == by_tensor.layers == by_list.layers
    assert by_shape.inputs == ((1, 3, 5, 5),)


def test_roofline_times_and_bounds():
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
    p = obo.profile(model, (1, 64, 32, 32), peak=PEAK)
    conv, relu = p.layers
    compute = conv.cost.flops / 100e9
    memory = conv.cost.bytes_moved / 10e9
    assert compute > memory and conv.bound == "compute"
    assert conv.time_s == pytest.approx(compute)
    assert relu.bound == "memory" and relu.time_s == pytest.approx(relu.cost.bytes_moved / 10e9)
    assert p.time_s == pytest.approx(conv.time_s + relu.time_s)
    assert PEAK.ridge == 10.0


def test_json_round_trip_and_convention():
    p = obo.profile(Functional(), (2, 3, 6, 6), peak=PEAK)
    text = p.to_json()
    assert obo.Profile.from_json(text) == p
    d = p.to_dict()
    assert d["convention"] == obo.CONVENTION == p.convention
    assert d["total"]["macs"] == p.total.macs and d["total"]["flops"] == 2 * p.total.macs
    assert d["by_category"]["pointwise"]["macs"] == p.by_category()["pointwise"].macs
    assert d["peak"] == {"gflops": 100.0, "gbps": 10.0, "engine": "test", "device": "cpu",
                         "origin": "given", "date": ""}  # fmt: skip


def test_csv_has_one_row_per_layer():
    p = obo.profile(Twice(), (1, 4, 5, 5), peak=PEAK)
    rows = list(csv.DictReader(io.StringIO(p.to_csv())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(p.layers)
    for row, layer in zip(rows, p.layers, strict=True):
        assert (row["name"], row["op"], row["category"], row["bound"]) == (
            layer.name, layer.op, layer.category, layer.bound,
        )  # fmt: skip
        assert row["output_shape"] == "x".join(map(str, layer.output_shape))
        for key in ("params", "macs", "flops", "bias_adds", "other_ops", "bytes_read",
                    "bytes_written"):  # fmt: skip
            assert int(row[key]) == getattr(layer.cost, key)
        assert float(row["time_s"]) == layer.time_s
        assert float(row["arithmetic_intensity"]) == layer.cost.arithmetic_intensity


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_model_gets_the_gpu_roofline_and_the_same_counts():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    on_cpu = obo.profile(model, (2, 3, 16, 16), peak=PEAK)
    on_gpu = obo.profile(copy.deepcopy(model).cuda(), (2, 3, 16, 16), peak="measure")
    assert on_gpu.peak.device.startswith("cuda") and on_gpu.peak.gflops > 0
    assert on_gpu.peak.origin == "measured"
    assert [l.cost for l in on_gpu.layers] == [l.cost for l in on_cpu.layers]


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (lambda: obo.profile("resnet", (1, 3, 8, 8)), TypeError,
         r"argument `model`. Expected a torch.nn.Module. Received model='str'"),
        (lambda: obo.profile(nn.ReLU(), (1, 0, 8)), ValueError,
         r"`input_shape_or_example`. Expected a shape .* Received input_shape_or_example=\(1, 0"),
        (lambda: obo.profile(nn.ReLU(), "1x3x8x8"), TypeError, r"`input_shape_or_example`"),
        (lambda: obo.profile(nn.ReLU(), (1, 3), dtype=torch.int32), TypeError,
         r"argument `dtype`. Expected None or a floating torch.dtype. Received dtype=torch.int32"),
        (lambda: obo.profile(nn.ReLU(), (1, 3), peak="fast"), ValueError,
         r"argument `peak`. Expected one of 'measure'. Received peak='fast'"),
        (lambda: obo.profile(nn.ReLU(), (1, 3), peak=480.0), TypeError,
         r"argument `peak`. Expected None, 'measure' or a MachinePeak. Received peak='float'"),
    ],
)  # fmt: skip
def test_bad_input_is_named(call, kind, message):
    with pytest.raises(kind, match=message):
        call()


# Public figures (torchvision variants) from the design notes: parameters and GMACs at 224x224.
PUBLISHED = [
    ("resnet50", 25_557_032, 4.089),
    ("mobilenet_v2", 3_504_872, 0.301),
    ("googlenet", 6_624_904, 1.498),
    ("squeezenet1_0", 1_248_424, 0.819),
    ("squeezenet1_1", 1_235_496, None),
]


@pytest.mark.parametrize(("name", "params", "gmacs"), PUBLISHED)
def test_built_in_models_match_the_published_figures(name, params, gmacs):
    model = obo.create_model(name)
    p = obo.profile(model, (1, 3, 224, 224), peak=PEAK)
    assert p.total.params == params == sum(t.numel() for t in model.parameters())
    assert p.unused_params == {}
    assert p.uncounted == {}
    if gmacs is not None:
        assert round(p.total.macs / 1e9, 3) == gmacs


def test_googlenet_auxiliary_heads_are_reported_apart():
    # the auxiliary classifiers run only in training; profile() runs the model in eval mode
    model = obo.create_model("googlenet", aux_logits=True)
    p = obo.profile(model, (1, 3, 64, 64), peak=PEAK)
    assert model.training  # restored afterwards
    assert p.total.params == 6_624_904
    assert {name.split(".")[0] for name in p.unused_params} == {"aux1", "aux2"}
    assert p.total.params + sum(p.unused_params.values()) == sum(
        t.numel() for t in model.parameters()
    )


def timm_on_meta(name: str) -> nn.Module:
    """A timm architecture on the meta device: shapes only, so the full 224x224 pass is fast."""
    from onebyone.models.external import load_external

    try:
        with torch.device("meta"):
            return load_external(f"timm:{name}").eval()
    except ImportError:
        pytest.skip("timm is not installed (pip install 'onebyone[models]')")


# each reads parameters or calls ops the plain convolutional models do not
TIMM = [
    "resnet18",
    "mobilenetv3_small_100",  # torch._assert in every block
    "efficientnet_b0",
    "vit_small_patch16_224",  # scaled_dot_product_attention; cls_token through expand and cat
    "swin_tiny_patch4_window7_224",  # relative_position_bias_table through indexing, softmax
    "levit_128s",  # attention_biases through indexing
]


@pytest.mark.parametrize("name", TIMM)
def test_timm_models_agree_with_pytorch_flop_counter_and_read_every_parameter(name):
    model = timm_on_meta(name)
    x = torch.empty(1, 3, 224, 224, device="meta")
    # PyTorch's counter sees attention's two products where the math backend runs them
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    p = obo.profile(model, x, peak=PEAK)
    assert p.total.flops == counter.get_total_flops()
    assert p.total.params == sum(t.numel() for t in model.parameters())
    assert p.unused_params == {}
    assert p.uncounted == {}


def test_vit_small_attention_is_counted():
    p = obo.profile(timm_on_meta("vit_small_patch16_224"), (1, 3, 224, 224), peak=PEAK)
    attention = [l for l in p.layers if l.category == "attention"]
    # 12 blocks, 6 heads, 197 tokens (196 patches and the class token), 64 dims per head:
    # QK^T and the weights times V, 197 x 197 x 64 each
    assert len(attention) == 12
    assert p.by_category()["attention"].macs == 12 * 6 * 197 * 197 * (64 + 64) == 357_663_744
    # timm's model card: 22.1 M parameters, 4.6 GMACs
    assert (round(p.total.params / 1e6, 1), round(p.total.macs / 1e9, 1)) == (22.1, 4.6)
