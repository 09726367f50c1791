"""Inter-annotator agreement for the dashboard: Fleiss' kappa and Krippendorff's alpha.

The statistics live in :mod:`semsim.data.agreement` (stage ``data``), shared with the faithfulness analysis.
"""

from semsim.data.agreement import agreement, fleiss_kappa, krippendorff_alpha_nominal

__all__ = ["agreement", "fleiss_kappa", "krippendorff_alpha_nominal"]
