"""Bad input: a clear ValueError/TypeError naming the argument, for every entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onebyone as obo
import onebyone.numpy as onp
from onebyone.nn import Conv1x1

X = torch.randn(2, 6, 4, 4)
W = torch.randn(4, 6)


def torch_op(**overrides):
    args = {"x": X, "weight": W, "bias": None}
    args.update(overrides)
    x, w, b = args.pop("x"), args.pop("weight"), args.pop("bias")
    return obo.conv1x1(x, w, b, **args)


def numpy_op(**overrides):
    args = {"x": X.numpy(), "weight": W.numpy(), "bias": None}
    args.update(overrides)
    x, w, b = args.pop("x"), args.pop("weight"), args.pop("bias")
    return onp.conv1x1(x, w, b, **args)


SHARED = [
    # (overrides, error type, message pattern) valid for both ops (tensors converted below)
    ({"x": np.ones((6, 4))}, ValueError, r"argument `x`.*3-D or 4-D.*shape \(6, 4\)"),
    ({"weight": np.ones((4, 6, 3, 3))}, ValueError, r"argument `weight`.*\(K, C/groups, 1, 1\)"),
    ({"weight": np.ones(4)}, ValueError, r"argument `weight`.*2-D .*shape \(4,\)"),
    ({"weight": np.ones((4, 5))}, ValueError, r"argument `weight`.*6 input channels.*\(4, 5\)"),
    ({"bias": np.ones(3)}, ValueError, r"argument `bias`.*shape \(4,\).*\(3,\)"),
    ({"bias": np.ones((4, 1))}, ValueError, r"argument `bias`.*1-D"),
    ({"groups": 0}, ValueError, r"argument `groups`.*positive int.*groups=0"),
    ({"groups": 4}, ValueError, r"argument `groups`.*divisor of the input's 6 channels"),
    ({"groups": 2.0}, TypeError, r"argument `groups`.*positive int.*groups=2.0"),
    ({"stride": 0}, ValueError, r"argument `stride`.*stride=0"),
    ({"stride": (1, 2, 3)}, ValueError, r"argument `stride`.*pair.*\(1, 2, 3\)"),
    ({"stride": 1.5}, TypeError, r"argument `stride`.*stride=1.5"),
    ({"stride": (1, "2")}, TypeError, r"argument `stride`"),
    ({"stride": (0, 1)}, ValueError, r"argument `stride`.*>= 1"),
]


def as_tensor(v):
    return torch.from_numpy(np.asarray(v, dtype=np.float32)) if isinstance(v, np.ndarray) else v


@pytest.mark.parametrize(("overrides", "kind", "pattern"), SHARED)
def test_torch_op_errors(overrides, kind, pattern):
    with pytest.raises(kind, match=pattern):
        torch_op(**{k: as_tensor(v) for k, v in overrides.items()})


@pytest.mark.parametrize(("overrides", "kind", "pattern"), SHARED)
def test_numpy_op_errors(overrides, kind, pattern):
    with pytest.raises(kind, match=pattern):
        numpy_op(**overrides)


def test_groups_must_divide_output_channels():
    with pytest.raises(ValueError, match=r"argument `groups`.*divisor of the weight's 3 output"):
        obo.conv1x1(X, torch.randn(3, 3), groups=2)


@pytest.mark.parametrize(
    ("kwargs", "kind", "pattern"),
    [
        ({"activation": "swish"}, ValueError, r"argument `activation`.*relu.*activation='swish'"),
        ({"activation": 3}, TypeError, r"argument `activation`"),
        ({"backend": "cudnn"}, ValueError, r"argument `backend`.*'gemm'.*backend='cudnn'"),
        ({"residual": torch.randn(2, 4, 4, 3)}, ValueError,
         r"argument `residual`.*\(2, 4, 4, 4\).*\(2, 4, 4, 3\)"),
        ({"residual": torch.randn(2, 4, 4, 4).double()}, TypeError,
         r"argument `residual`.*dtype torch.float32.*torch.float64"),
        ({"weight": W.double()}, TypeError, r"argument `weight`.*dtype torch.float32"),
        ({"bias": torch.ones(4, dtype=torch.float16)}, TypeError, r"argument `bias`.*float16"),
        ({"bias": torch.ones(4, device="meta")}, ValueError, r"argument `bias`.*device.*meta"),
        ({"x": X.long()}, TypeError, r"argument `x`.*floating-point.*torch.int64"),
        ({"x": X.numpy()}, TypeError, r"argument `x`.*torch.Tensor.*ndarray"),
        ({"weight": [[1.0]]}, TypeError, r"argument `weight`.*torch.Tensor.*list"),
        ({"bias": 1.0}, TypeError, r"argument `bias`.*torch.Tensor or None"),
    ],
)  # fmt: skip
def test_torch_only_errors(kwargs, kind, pattern):
    with pytest.raises(kind, match=pattern):
        torch_op(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "kind", "pattern"),
    [
        ({"data_format": "NWHC"}, ValueError, r"argument `data_format`.*'NCHW' or 'NHWC'"),
        ({"x": np.array([["a"]], dtype=object)}, TypeError, r"argument `x`.*numeric.*object"),
        ({"weight": np.array(["a", "b"])}, TypeError, r"argument `weight`.*numeric"),
        ({"x": [[[1.0, 2.0], [3.0]]] * 6}, ValueError,
         r"argument `x`\. Expected an array or a rectangular nested list of numbers \(every "
         r"row the same length\)\. Received x=\[\[\[1\.0, 2\.0\], \[3\.0\]\]"),
        ({"weight": [[1.0] * 6, [1.0] * 5]}, ValueError,
         r"argument `weight`\. Expected an array or a rectangular nested list"),
    ],
)  # fmt: skip
def test_numpy_only_errors(kwargs, kind, pattern):
    with pytest.raises(kind, match=pattern):
        numpy_op(**kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "kind", "pattern"),
    [
        ((0, 4), {}, ValueError, r"argument `in_channels`.*in_channels=0"),
        ((4, -1), {}, ValueError, r"argument `out_channels`.*out_channels=-1"),
        ((4.0, 4), {}, TypeError, r"argument `in_channels`"),
        ((6, 4), {"groups": 4}, ValueError, r"argument `groups`.*divisor of in_channels=6"),
        ((6, 3), {"groups": 2}, ValueError, r"argument `groups`.*divisor of out_channels=3"),
        ((6, 4), {"stride": 0}, ValueError, r"argument `stride`"),
        ((6, 4), {"activation": "mish"}, ValueError, r"argument `activation`.*mish"),
        ((6, 4), {"bias": "yes"}, TypeError, r"argument `bias`.*True or False"),
        ((6, 4), {"dtype": torch.int64}, TypeError,
         r"argument `dtype`\. Expected None or a floating-point dtype \(torch\.float16, "
         r"torch\.bfloat16, torch\.float32, torch\.float64\)\. Received dtype=torch\.int64\."),
        ((6, 4), {"dtype": "float32"}, TypeError, r"argument `dtype`.*Received dtype='float32'"),
    ],
)  # fmt: skip
def test_conv1x1_module_errors(args, kwargs, kind, pattern):
    with pytest.raises(kind, match=pattern):
        Conv1x1(*args, **kwargs)


@pytest.mark.parametrize(
    ("w", "src", "dst", "kind", "pattern"),
    [
        (np.ones((4, 3)), "tf", "torch", ValueError, r"argument `src`.*'keras'.*src='tf'"),
        (np.ones((4, 3)), "linear", "onnx", ValueError, r"argument `dst`.*dst='onnx'"),
        (np.ones((4, 3, 1, 1)), "linear", "torch", ValueError, r"argument `w`.*2-D.*'linear'"),
        (np.ones((4, 3)), "torch", "linear", ValueError, r"argument `w`.*\(K, C/g, 1, 1\)"),
        (np.ones((4, 3, 1, 1)), "keras", "linear", ValueError, r"argument `w`.*\(1, 1, C/g, K\)"),
        ([[1.0]], "linear", "torch", TypeError, r"argument `w`.*NumPy array or a torch tensor"),
    ],
)
def test_convert_weight_errors(w, src, dst, kind, pattern):
    with pytest.raises(kind, match=pattern):
        obo.convert_weight(w, src, dst)


def test_errors_leave_inputs_untouched():
    x, w = X.clone(), W.clone()
    with pytest.raises(ValueError):
        obo.conv1x1(x, w, torch.ones(3))
    assert torch.equal(x, X) and torch.equal(w, W)


@pytest.mark.parametrize("op", [torch_op, numpy_op], ids=["torch", "numpy"])
def test_remembered_shapes_do_not_let_bad_arguments_through(op):
    """Validated shapes are remembered per call signature; an argument that merely
    compares equal to an accepted one (True == 1, 1.0 == 1) is still refused."""
    op(groups=1, stride=1)  # accepted and remembered
    op(stride=(1, 1))
    with pytest.raises(TypeError, match=r"argument `groups`.*positive int.*groups=True"):
        op(groups=True)
    with pytest.raises(TypeError, match=r"argument `groups`.*positive int.*groups=1.0"):
        op(groups=1.0)
    with pytest.raises(TypeError, match=r"argument `stride`.*stride=True"):
        op(stride=True)
    with pytest.raises(TypeError, match=r"argument `stride`.*stride=\(1, True\)"):
        op(stride=(1, True))
    with pytest.raises(ValueError, match=r"argument `weight`.*6 input channels"):
        op(weight=np.ones((4, 5), dtype=np.float32) if op is numpy_op else torch.ones(4, 5))


def test_a_full_cache_is_emptied_before_it_takes_a_new_entry():
    from onebyone._checks import remember

    cache = {"a": 1, "b": 2}
    assert remember(cache, "c", 3, limit=3) == 3 and cache == {"a": 1, "b": 2, "c": 3}
    remember(cache, "d", 4, limit=3)
    assert cache == {"d": 4}


@pytest.mark.parametrize(
    ("x", "w", "argument", "layout"),
    [
        (torch.randn(1, 4, 3, 3).to_sparse(), torch.randn(2, 4), "x", "sparse_coo"),
        (torch.randn(1, 4, 3, 3).to_mkldnn(), torch.randn(2, 4), "x", "_mkldnn"),
        (torch.randn(1, 4, 3, 3), torch.randn(2, 4).to_sparse(), "weight", "sparse_coo"),
    ],
    ids=["sparse-x", "mkldnn-x", "sparse-weight"],
)
def test_non_dense_tensors_are_refused_by_name(
    x: torch.Tensor, w: torch.Tensor, argument: str, layout: str
) -> None:
    with pytest.raises(TypeError, match=rf"argument `{argument}`\. Expected a dense .*{layout}"):
        obo.conv1x1(x, w)


def test_fold_batchnorm_refuses_a_meta_example() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    with pytest.raises(ValueError, match=r"argument `example_input`.*meta"):
        obo.fold_batchnorm(model, torch.randn(2, 4, device="meta"))
