"""What a transform did: the changes it made and the places it left alone, with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PassReport"]


@dataclass
class PassReport:
    """The outcome of one transform pass over a model.

    Attributes:
        name: the pass (``"fold_batchnorm"``, ``"merge_pointwise"``, ...).
        applied: one line per change, e.g. ``"layer1.0.conv1 <- layer1.0.bn1"``.
        skipped: ``(where, why)`` for every candidate left unchanged.
        traced: whether the pass saw the model's ``torch.fx`` graph; when it did
            not, only module-level patterns (adjacent layers in an
            ``nn.Sequential``) were considered and ``skipped`` says why.

    Example:
        >>> from onebyone.transforms import PassReport
        >>> r = PassReport("fold_batchnorm", applied=["conv <- bn"])
        >>> r.count
        1
    """

    name: str
    applied: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    traced: bool = True

    @property
    def count(self) -> int:
        """Number of changes made."""
        return len(self.applied)

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.count} applied, {len(self.skipped)} skipped"]
        lines += [f"  + {a}" for a in self.applied]
        lines += [f"  - {where}: {why}" for where, why in self.skipped]
        return "\n".join(lines)
