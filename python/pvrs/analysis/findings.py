"""What `pvrs analyze` works on and what it found: the types the report, its sections and
its tables share, in a module below all three so none of them imports another's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pvrs.analysis import compute as an
from pvrs.analysis import geometry_plots as gp

if TYPE_CHECKING:
    from pvrs.analysis.geometry import GeometryViews


@dataclass(frozen=True)
class VectorSet:
    """Persona vectors of one mask strategy and prompt variant, `samples` `(P, L, H)`."""

    mask_strategy: str
    variant: str
    persona_ids: list[str]
    names: list[str]
    layers: list[int]
    samples: np.ndarray
    model: str = ""

    @property
    def label(self) -> str:
        return f"{self.mask_strategy}/{self.variant}"



@dataclass(frozen=True)
class Findings:
    """What the analysis found, as the report's figures and summary use it."""

    main: VectorSet
    focus: int
    sim: an.SimilarityResult
    pca: an.PCAResult
    curves: an.LayerCurves
    axis: an.AxisResult | None
    variant_agreements: list[an.AgreementResult]
    strategy_agreements: list[an.AgreementResult]
    probe_curves: list[Any]
    geometry: GeometryViews | None = None
    attributes: dict[str, dict[str, Any]] | None = None

    def colourings(self) -> list[gp.Colouring]:
        """The colour-by menu of every persona scatter: the assistant axis, the k-means
        clusters, then each attribute of the persona file (whichever there are)."""
        out = [] if self.axis is None else [gp.axis_colouring(self.axis)]
        if self.geometry is not None and self.geometry.kmeans is not None:
            out.append(gp.cluster_colouring(self.geometry.kmeans))
        return out + gp.attribute_colourings(self.main.persona_ids, self.attributes)
