"""Explanation methods, grouped as the survey groups them: gradients, modified rules, activations, perturbation."""
from . import cam, evidence, fgvis, gradient, lrp, modified, perturbation, sise, smooth, undesirable  # noqa: F401  (they register)
from .base import DEFAULT, GROUPS, METHODS, TARGET_KINDS, Method, get

__all__ = ["DEFAULT", "GROUPS", "METHODS", "Method", "get"]
