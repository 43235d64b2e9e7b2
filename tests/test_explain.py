"""The explanation topics, each checked against an independent computation, and their figures."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onebyone.cli import main
from onebyone.explain import (
    SEED_KERNEL,
    SEED_MAPS,
    SEED_PRINTED_OUTPUT,
    TOPICS,
    bottleneck_comparison,
    depth_example,
    fc_equivalence,
    fusion_example,
    get_topic,
    save_topic_figure,
    worked_example,
)
from onebyone.explain.costs import reduction_case
from onebyone.explain.digits import (
    DigitsNiN,
    _shift,
    digit_feature_maps,
    evaluate,
    load_digits_split,
    train_digits,
)
from onebyone.explain.figures import save_figure
from pngfile import assert_sensible_png


@cache
def computed(name: str):
    """Each topic's result, computed once for the whole module."""
    return TOPICS[name].compute()


# ---------------------------------------------------------------- worked example


def test_worked_example_against_explicit_loops():
    ex = computed("worked-example")
    expected = np.zeros((6, 6))
    for r in range(6):
        for c in range(6):
            for ch in range(3):
                expected[r, c] += SEED_MAPS[ch, r, c] * SEED_KERNEL[0, ch]
    np.testing.assert_allclose(ex.output, expected, rtol=1e-12)
    wrong = [
        (r, c)
        for r in range(6)
        for c in range(6)
        if abs(round(expected[r, c], 1) - SEED_PRINTED_OUTPUT[r, c]) > 1e-9
    ]
    assert ex.mismatches == wrong == [(5, 2)]
    assert ex.spelled_sum(0, 0) == "1*0.1 + 3*0.2 + 1*0.4 = 1.10"  # the seed's own first sum


# ---------------------------------------------------------------- fusion


def _seed_maps(a: float, b: float) -> dict[int, np.ndarray]:
    """The seed's naive-view matrices written out by hand, ``(2, 5, 3)`` per digit."""
    strokes = np.array([[a, a, a], [0, 0, 0], [a, a, a], [0, 0, 0], [a, a, a]])
    two = np.array([[0, 0, 0], [0, 0, b], [0, 0, 0], [b, 0, 0], [0, 0, 0]])
    three = np.array([[0, 0, 0], [0, 0, b], [0, 0, 0], [0, 0, b], [0, 0, 0]])
    return {2: np.stack([strokes, two]), 3: np.stack([strokes, three])}


@pytest.mark.parametrize(
    ("a", "b", "weight"), [(1.0, 2.0, (1.0, 1.0)), (1.0, 1.0, (1.0, 1.0)), (0.5, -3.0, (2.0, 0.25))]
)
def test_fusion_against_numpy_arithmetic(a, b, weight):
    ex = fusion_example(a=a, b=b, weight=weight)
    maps = _seed_maps(a, b)
    for d in (2, 3):
        np.testing.assert_array_equal(ex.maps[d], maps[d])
        np.testing.assert_allclose(ex.combined[d], weight[0] * maps[d][0] + weight[1] * maps[d][1])
    differ = [tuple(int(i) for i in p) for p in np.argwhere(ex.combined[2] != ex.combined[3])]
    assert ex.differing["combined"] == differ == [(3, 0), (3, 2)]
    assert ex.differing["map 1"] == []  # the horizontal strokes are the same for both digits
    np.testing.assert_allclose(ex.difference, ex.combined[2] - ex.combined[3])


def test_fusion_finds_the_seeds_inconsistency():
    ex = fusion_example()
    assert ex.printed_matches  # the printed Output 1 / Output 2 matrices are right
    # The seed: "b at (3,2) -> digit 2". Computed, only the 3 has a stroke at (3,2).
    assert ex.digit_with_stroke_at(3, 2) == [3]
    assert ex.digit_with_stroke_at(3, 0) == [2]
    assert ex.classify(ex.combined[2]) == 2 and ex.classify(ex.combined[3]) == 3
    noisy = ex.combined[3] + 0.3 * np.random.default_rng(0).standard_normal((5, 3))
    assert ex.classify(noisy) == 3


def test_fusion_bad_input():
    with pytest.raises(
        ValueError, match=r"argument `a`\. Expected a non-zero number\. Received a=0"
    ):
        fusion_example(a=0)
    with pytest.raises(TypeError, match=r"argument `b`\. Expected a number"):
        fusion_example(b="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"argument `weight`\. Expected two numbers"):
        fusion_example(weight=(1.0,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"make.* the combined maps of 2 and 3 equal"):
        ex = fusion_example(weight=(1.0, 0.0))
        ex.classify(ex.combined[2])


# ---------------------------------------------------------------- reduction, bottleneck


def _conv_params(*convs: nn.Conv2d) -> int:
    return sum(p.numel() for conv in convs for p in conv.parameters())


def test_reduction_against_closed_form_and_nn_conv2d():
    big, small = computed("reduction")
    assert big.input_shape == (1, 50, 600, 600) and big.output_shape == (1, 20, 600, 600)
    assert big.params == _conv_params(nn.Conv2d(50, 20, 1)) == 50 * 20 + 20
    assert big.macs == 50 * 20 * 600 * 600
    assert (big.input_bytes, big.output_bytes) == (4 * 50 * 600 * 600, 4 * 20 * 600 * 600)
    assert big.memory_ratio == pytest.approx(20 / 50)
    assert small.output_shape == (1, 32, 28, 28)
    assert small.params == _conv_params(nn.Conv2d(64, 32, 1)) and small.macs == 64 * 32 * 28 * 28


def test_reduction_case_odd_shape_and_errors():
    case = reduction_case("odd", 7, 3, (5, 9))
    assert case.output_shape == (1, 3, 5, 9) and case.macs == 7 * 3 * 5 * 9
    assert case.weight_shape == (3, 7) and case.weights == 21 and case.biases == 3
    with pytest.raises(ValueError, match=r"argument `in_channels`"):
        reduction_case("bad", 0, 3, 4)


@pytest.mark.parametrize(("c", "r", "size"), [(64, 32, 28), (24, 8, (5, 7))])
def test_bottleneck_against_nn_conv2d(c, r, size):
    cmp = (
        bottleneck_comparison(c, r, size)
        if (c, r, size) != (64, 32, 28)
        else computed("bottleneck")
    )
    h, w = (size, size) if isinstance(size, int) else size
    reduce, conv, expand, plain = (
        nn.Conv2d(c, r, 1),
        nn.Conv2d(r, r, 3, padding=1),
        nn.Conv2d(r, c, 1),
        nn.Conv2d(c, c, 3, padding=1),
    )
    x = torch.zeros(1, c, h, w)
    with torch.no_grad():
        assert tuple(expand(conv(reduce(x))).shape) == cmp.bottleneck_output == (1, c, h, w)
        assert tuple(plain(x).shape) == cmp.plain_output
    assert cmp.params == (_conv_params(reduce, conv, expand), _conv_params(plain))
    assert cmp.macs == (h * w * (c * r + 9 * r * r + r * c), h * w * 9 * c * c)
    assert [layer.kernel for layer in cmp.bottleneck] == [(1, 1), (3, 3), (1, 1)]


# ---------------------------------------------------------------- fc-equivalence, depth


def test_fc_equivalence_against_einsum_and_f_linear():
    eq = computed("fc-equivalence")
    by_einsum = np.einsum("kc,nchw->nkhw", eq.weight, eq.x) + eq.bias[None, :, None, None]
    np.testing.assert_allclose(eq.conv_output, by_einsum, rtol=1e-5, atol=1e-5)
    x = torch.from_numpy(eq.x)
    rows = F.linear(x.permute(0, 2, 3, 1), torch.from_numpy(eq.weight), torch.from_numpy(eq.bias))
    np.testing.assert_allclose(eq.linear_output, rows.permute(0, 3, 1, 2).numpy(), rtol=1e-6)
    n, r, c = eq.pixel
    pixel = [
        sum(eq.weight[k, i] * eq.x[n, i, r, c] for i in range(eq.x.shape[1])) + eq.bias[k]
        for k in range(eq.weight.shape[0])
    ]
    np.testing.assert_allclose(eq.pixel_output, pixel, rtol=1e-5, atol=1e-6)
    assert eq.max_abs_difference < 1e-5  # equal up to float32 summation order (or exactly)


def test_fc_equivalence_shapes_follow_arguments():
    eq = fc_equivalence(5, 2, (2, 3), batch=3, seed=1)
    assert eq.x.shape == (3, 5, 2, 3) and eq.conv_output.shape == (3, 2, 2, 3)
    assert eq.weight.shape == (2, 5) and eq.max_abs_difference < 1e-5
    with pytest.raises(TypeError, match=r"argument `batch`"):
        fc_equivalence(batch=1.5)  # type: ignore[arg-type]


def test_depth_against_explicit_loops():
    ex = computed("depth")
    k_count = ex.filters.shape[0]
    expected = np.zeros((k_count, 6, 6))
    for k in range(k_count):
        for ch in range(3):
            expected[k] += ex.filters[k, ch] * SEED_MAPS[ch]
    np.testing.assert_allclose(ex.outputs, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ex.one_at_a_time, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ex.outputs[0], worked_example().output)  # filter 1: the seed's
    assert [ex.params(k) for k in (1, 2, 3)] == [3, 6, 9]


def test_depth_bad_filters():
    with pytest.raises(ValueError, match=r"argument `filters`.*3 weights"):
        depth_example([("two weights", (1.0, 2.0))])
    with pytest.raises(ValueError, match=r"argument `filters`.*non-empty"):
        depth_example([])


# ---------------------------------------------------------------- figures and the CLI


@pytest.mark.parametrize("name", list(TOPICS))
def test_every_topic_saves_a_sensible_png(name, tmp_path):
    path = save_topic_figure(name, computed(name), tmp_path)
    assert path == tmp_path / f"{name}.png"
    assert_sensible_png(path)


def test_save_figure_wants_png(tmp_path):
    from matplotlib.figure import Figure

    with pytest.raises(ValueError, match=r"argument `path`\. Expected a file name ending in \.png"):
        save_figure(Figure(), tmp_path / "figure.jpg")


def test_unknown_topic():
    with pytest.raises(ValueError, match=r"argument `topic`\. Expected one of 'worked-example'"):
        get_topic("fusoin")


def test_cli_lists_topics(capsys):
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in TOPICS)


def test_cli_topic_and_figure(capsys, tmp_path):
    figures = tmp_path / "figures"
    assert main(["explain", "fusion", "--save-figures", str(figures)]) == 0
    out = capsys.readouterr().out
    assert "(3, 2) only for the 3" in out  # the seed's inverted rule, stated plainly
    assert_sensible_png(figures / "fusion.png")
    assert sorted(p.name for p in figures.iterdir()) == ["fusion.png"]


def test_cli_unknown_topic_is_one_line(capsys):
    assert main(["explain", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onebyone explain: error: Invalid value for argument `TOPIC`")
    assert err.count("\n") == 1


# ---------------------------------------------------------------- digits and training


def test_digits_split_is_stratified_and_seeded():
    data = load_digits_split(seed=0)
    assert data.x_train.shape == (1347, 1, 8, 8) and data.x_test.shape == (450, 1, 8, 8)
    assert float(data.x_train.min()) >= 0 and float(data.x_train.max()) <= 1
    total = np.bincount(np.concatenate([data.y_train.numpy(), data.y_test.numpy()]))
    assert total.sum() == 1797
    test_counts = np.bincount(data.y_test.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - total * 0.25) <= 1)  # every class in the same proportion
    again, other = load_digits_split(seed=0), load_digits_split(seed=1)
    assert torch.equal(again.y_test, data.y_test) and not torch.equal(other.y_test, data.y_test)
    with pytest.raises(ValueError, match=r"argument `test_size`"):
        load_digits_split(test_size=1.5)


def test_network_is_built_from_1x1_convs_without_a_linear_head():
    net = DigitsNiN()
    assert not any(isinstance(m, nn.Linear) for m in net.modules())
    assert list(net.pointwise_layers()) == [
        "mlpconv1.3",
        "mlpconv1.4",
        "reduce",
        "mlpconv2.3",
        "mlpconv2.4",
    ]
    assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    # parameters from the layer sizes: 3x3 convs (no bias), BN affine, 1x1 weights + biases
    expected = (
        9 * 32
        + 2 * 32
        + 2 * (32 * 32 + 32)
        + (32 * 16 + 16)
        + 9 * 16 * 64
        + 2 * 64
        + (64 * 64 + 64)
        + (64 * 10 + 10)
    )
    assert sum(p.numel() for p in net.parameters()) == expected
    plain = DigitsNiN(reduced=None)
    assert "reduce" not in plain.pointwise_layers()
    assert plain.mlpconv2[0].in_channels == 32


def test_shift_moves_images_by_at_most_one_pixel():
    x = torch.zeros(50, 1, 8, 8)
    x[:, 0, 4, 3] = 1.0
    moved = _shift(x, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and torch.all(moved.sum(dim=(1, 2, 3)) == 1)
    rows, cols = torch.nonzero(moved[:, 0])[:, 1], torch.nonzero(moved[:, 0])[:, 2]
    assert set((rows - 4).tolist()) == {-1, 0, 1} and set((cols - 3).tolist()) == {-1, 0, 1}


def test_training_is_deterministic_and_leaves_global_state_alone():
    data = load_digits_split(seed=0)
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    a = train_digits(epochs=1, seed=3, data=data, train_limit=128)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    b = train_digits(epochs=1, seed=3, data=data, train_limit=128)
    c = train_digits(epochs=1, seed=4, data=data, train_limit=128)
    timings = {"seconds": 0, "step_seconds": 0}
    assert [vars(e) | timings for e in a.history] == [vars(e) | timings for e in b.history]
    for (name, p), q in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert not torch.equal(a.model.mlpconv1[0].weight, c.model.mlpconv1[0].weight)
    assert not a.model.training


def test_training_learns_and_evaluate_is_exact():
    data = load_digits_split(seed=0)
    result = train_digits(epochs=3, seed=0, data=data)
    assert [e.epoch for e in result.history] == [1, 2, 3]
    assert result.test_accuracy > 0.5  # chance is 0.1; the full demo reaches ~99% in 20 epochs
    with torch.no_grad():
        logits = result.model(data.x_test)
    manual_acc = (logits.argmax(1) == data.y_test).double().mean().item()
    manual_loss = -torch.log_softmax(logits, 1)[torch.arange(len(data.y_test)), data.y_test].mean()
    loss, acc = evaluate(result.model, data.x_test, data.y_test)
    assert acc == pytest.approx(manual_acc) and acc == pytest.approx(result.test_accuracy)
    assert loss == pytest.approx(manual_loss.item(), rel=1e-5)
    maps = digit_feature_maps(result)
    layer = result.model.pointwise_layers()["mlpconv1.3"]
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    for d in (2, 3):
        by_hand = np.maximum(np.einsum("kc,chw->khw", w, maps.before[d]) + b[:, None, None], 0)
        np.testing.assert_allclose(maps.after[d], by_hand, rtol=1e-5, atol=1e-5)
    mean_gap = np.abs(maps.after[2].mean(axis=(1, 2)) - maps.after[3].mean(axis=(1, 2)))
    assert maps.channels_after[0] == int(mean_gap.argmax())


def test_training_bad_input():
    with pytest.raises(ValueError, match=r"argument `epochs`\. Expected a positive int"):
        train_digits(epochs=0)
    with pytest.raises(TypeError, match=r"argument `seed`\. Expected an int"):
        train_digits(seed="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"argument `batch_size`\. Expected at most the 10 "):
        train_digits(train_limit=10, batch_size=64)
    with pytest.raises(ValueError, match=r"argument `lr`"):
        train_digits(lr=-1.0)
