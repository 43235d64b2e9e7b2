"""Explanations: the seed documents' worked examples, computed by the library.

Each topic is a function returning its computed result (``onebyone explain``
prints it), and ``onebyone.explain.figures`` draws it; ``write_explorer`` writes
them into a page where a learner changes the inputs (``onebyone explore``). ``digits`` trains a
small Network-in-Network on real handwritten digits for the demo.
"""

from onebyone.explain.costs import (
    BottleneckComparison,
    LayerCount,
    ReductionCase,
    bottleneck_comparison,
    count_layers,
    reduction_examples,
)
from onebyone.explain.depth import DepthExample, depth_example
from onebyone.explain.equivalence import FCEquivalence, fc_equivalence
from onebyone.explain.explorer import explorer_data, write_explorer
from onebyone.explain.fusion import FusionExample, fusion_example
from onebyone.explain.topics import TOPICS, Topic, get_topic, save_topic_figure
from onebyone.explain.worked import (
    SEED_KERNEL,
    SEED_MAPS,
    SEED_PRINTED_OUTPUT,
    WorkedExample,
    worked_example,
)

__all__ = [
    "SEED_KERNEL",
    "SEED_MAPS",
    "SEED_PRINTED_OUTPUT",
    "TOPICS",
    "BottleneckComparison",
    "DepthExample",
    "FCEquivalence",
    "FusionExample",
    "LayerCount",
    "ReductionCase",
    "Topic",
    "WorkedExample",
    "bottleneck_comparison",
    "count_layers",
    "depth_example",
    "explorer_data",
    "fc_equivalence",
    "fusion_example",
    "get_topic",
    "reduction_examples",
    "save_topic_figure",
    "worked_example",
    "write_explorer",
]
