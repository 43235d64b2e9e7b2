"""The explanation topics: name, one-line summary, how to compute it, its figure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onebyone import _checks
from onebyone.explain import costs, depth, equivalence, fusion, worked

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["TOPICS", "Topic", "get_topic", "save_topic_figure"]


def _figure_fn(name: str) -> Callable[[Any], Figure]:
    def build(result: Any) -> Figure:
        from onebyone.explain import figures

        return getattr(figures, name)(result)

    return build


@dataclass(frozen=True)
class Topic:
    """One topic: ``compute()`` returns its result, ``figure(result)`` draws it."""

    name: str
    summary: str
    compute: Callable[[], Any]
    figure: Callable[[Any], Figure]


TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic(
            "worked-example",
            "seed 000's math view: three 6x6 maps, a 1x1 kernel of depth 1, the output map",
            worked.worked_example,
            _figure_fn("worked_example_figure"),
        ),
        Topic(
            "fusion",
            "seed 000's naive view: two feature maps of a 2 and a 3 fused by a 1x1 convolution",
            fusion.fusion_example,
            _figure_fn("fusion_figure"),
        ),
        Topic(
            "reduction",
            "50 maps of 600x600 -> 20 and 64 -> 32: shapes, parameters, MACs, memory",
            costs.reduction_examples,
            _figure_fn("reduction_figure"),
        ),
        Topic(
            "bottleneck",
            "1x1 reduce -> 3x3 -> 1x1 expand against a plain 3x3 of the same width",
            costs.bottleneck_comparison,
            _figure_fn("bottleneck_figure"),
        ),
        Topic(
            "fc-equivalence",
            "a 1x1 convolution equals a fully connected layer applied at every pixel",
            equivalence.fc_equivalence,
            _figure_fn("fc_equivalence_figure"),
        ),
        Topic(
            "depth",
            "several 1x1 filters in parallel give several output maps",
            depth.depth_example,
            _figure_fn("depth_figure"),
        ),
    )
}
"""Every topic by name, in the order ``onebyone explain`` lists them."""


def get_topic(name: str) -> Topic:
    """The topic called ``name``; unknown names raise ``ValueError`` listing the topics."""
    return TOPICS[_checks.choice("topic", name, tuple(TOPICS))]


def save_topic_figure(name: str, result: Any, directory: str | Path) -> Path:
    """Draw ``result`` of topic ``name`` and write it to ``directory/<name>.png``."""
    from onebyone.explain.figures import save_figure

    topic = get_topic(name)
    return save_figure(topic.figure(result), Path(directory) / f"{topic.name}.png")
