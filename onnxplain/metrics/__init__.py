"""Metrics beside methods, grouped as Quantus groups them; `REGISTRY` lists every metric an audit can run."""
from .base import GROUPS, REGISTRY, Case, Metric, as_maps, register
from .complexity import complexity, sparseness
from .evaluation import evaluate
from .faithfulness import (BETTER, METRICS, auc, confidence, curves, deletion, faithfulness_correlation, insertion,
                           road, road_curves, undesirable_removal)
from .imputation import linear_imputation
from .localisation import energy_pointing_game, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from .randomisation import CHECKS, mprt, mprt_curves, random_logit
from .robustness import max_sensitivity
from .similarity import spearman, ssim

__all__ = ["GROUPS", "REGISTRY", "BETTER", "METRICS", "Case", "Metric", "register", "as_maps", "evaluate", "auc",
           "confidence", "curves", "deletion", "faithfulness_correlation", "insertion", "road", "road_curves",
           "undesirable_removal", "linear_imputation", "complexity", "sparseness", "max_sensitivity",
           "energy_pointing_game", "pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "CHECKS",
           "mprt", "mprt_curves", "random_logit", "spearman", "ssim"]
