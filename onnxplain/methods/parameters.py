"""What each method parameter means, in one line, for `onnxplain methods NAME` and its --json: the meaning shared
by every method with that parameter, or the method's own where the name means something else there."""
from __future__ import annotations

SHARED = {
    "baseline": 'what removed pixels become: "zero", "mean", "blur" (see perturb.baseline) or a number',
    "checkpoint": "a file where a long run saves its progress and from which it resumes",
    "score": '"probability", "logit" or a function of the outputs: the score the model calls are read as',
    "seed": "the random seed: the same seed gives the same map, whatever the batch",
    "samples": "random samples per image",
    "internal_batch_size": "rows per session run (default: the batch size)",
    "window": "the side of the square window, in pixels",
    "stride": "pixels between the starts of neighbouring windows",
    "ring": "width in pixels of the ring around a window that the conditional sampler conditions on",
    "laplace_n": "N of the Laplace correction (p·N + 1)/(N + K) of probabilities (training-set size)",
    "reference": "reference patch statistics file (perturb.write_reference); default: the bundled ones",
    "sampling": '"conditional" or "marginal" (PDA\'s samplers), or "occlusion"',
    "masks": "random masks per image",
    "cells": "cells per side of the mask grid",
    "p": "probability that a grid cell is kept",
    "segments": "superpixels per side (grid) or in all (slic)",
    "segmentation": '"grid" or "slic" (scikit-image) superpixels',
    "stabilizer": "ε added to denominators to keep them away from zero",
    "layers": "more layers to use (names, comma-separated or a tuple; \"blocks\": the last tensor per resolution)",
    "of": "the gradient method averaged over the noisy copies (saliency, gradxinput, ig, ...)",
    "sigma": "noise standard deviation as a fraction of the image's value range",
}

OWN = {
    "ig": {"steps": "points of the path integral",
           "rule": "quadrature: gausslegendre, riemann_left, riemann_right, riemann_middle or riemann_trapezoid",
           "baseline": 'the path\'s start x′: "zero", "mean", "blur", a number or an array in the model\'s layout'},
    "deeplift": {"baseline": 'the reference input: "zero", "mean", "blur" or a number'},
    "lime": {"alpha": "ridge regularisation α of the surrogate fit",
             "kernel_width": "σ of the exponential kernel on the cosine distance"},
    "kernelshap": {"samples": "coalitions per image (fewer when all of them fit)"},
    "lrp": {"composite": "rule set: epsilon_plus_flat, epsilon_gamma_box, epsilon_alpha2_beta1 or epsilon",
            "epsilon": "ε of the ε rule", "gamma": "γ of the γ rule (epsilon_gamma_box)",
            "alpha": "α of the αβ rule (α − β = 1)", "beta": "β of the αβ rule",
            "low": "lowest input value of the z^B first-layer rule (one, or one per channel)",
            "high": "highest input value of the z^B first-layer rule (one, or one per channel)"},
    "layercam": {"gamma": "γ of the tanh(γ·M / max M) scaling before fusing layers"},
    "scorecam": {"channels": "score only this many channels, those of largest spatial variance (default: all)"},
    "fem": {"k": "K: a channel counts where it exceeds its mean by K standard deviations"},
    "sise": {"mu": "keep channels whose mean gradient exceeds μ·max (0: positive ones)",
             "bins": "histogram bins of Otsu's threshold", "layers": "layers to fuse, low level first (default: "
                                                                     "the end of each block)"},
    "guidedgradcam": {"upsample": '"bilinear" (the paper) or "nearest" (Captum\'s default)'},
    "pda": {"classes": "classes whose evidence one run also returns (default: the target only)"},
    "undesirable": {"competitors": "rival classes whose evidence is compared with the target's"},
    "fgvis": {"game": '"deletion" or "preservation"', "iterations": "optimiser steps at most",
              "lr": "the optimiser's learning rate", "lambda_": "λ relative to the mean gradient at the image",
              "filter": "filter the gradient against adversarial evidence (the paper's defence)",
              "slack": "σ loosening the filter's bound to a⁰ + σ·max a⁰",
              "reference": 'what deleted pixels become: "zero", "mean", "blur", a number or an array'},
    "drise": {"score": '"detection" (D-RISE\'s similarity of the boxes to the explained one) or as the others'},
}


def meaning(method: str, name: str) -> str | None:
    """The one-line meaning of `name` for `method`, or None when nobody wrote it down."""
    return OWN.get(method, {}).get(name, SHARED.get(name))
