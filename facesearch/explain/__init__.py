"""Explain an identification (or a CIFAR-10 prediction): which layers and which regions drive it.

``explain_identification`` finds the face in a photo, searches the gallery, and explains the top match
(or ``against`` a named identity) against the runner-up identity; ``explain_classification`` explains
a classifier's predicted class against its runner-up class. Both write PNGs and one self-contained HTML
report to ``out_dir`` and return an ``Explanation`` with the per-layer figures.

What is explained (targets, see ``facesearch.visualize.targets``):

- heat maps: the evidence FOR the answer — cosine of the query to the matched identity's closest
  enrolled face (faces), or the predicted class's logit (CIFAR-10);
- layer ablation: the DECISION — the margin over the runner-up (cosine to the match's closest face
  minus to the runner-up's; or logit minus runner-up logit). A fall larger than the margin flips
  the answer. Identities are compared by their closest face because that is how the gallery ranks them.

The package: ``core`` (what an explanation is, and the parts both kinds share), ``identification`` and
``classification`` (what each explains), ``drawing`` (the figures) and ``files`` (the report and the numbers).
"""

from facesearch.explain.classification import explain_classification
from facesearch.explain.core import ExplainError, ExplainSettings, Explanation, LayerFigures
from facesearch.explain.identification import explain_identification

__all__ = ["ExplainError", "ExplainSettings", "Explanation", "LayerFigures", "explain_classification",
           "explain_identification"]
