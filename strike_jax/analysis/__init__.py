"""Analysis tools: the gradient-skew diagnostic (`strike_jax.analysis.skew`, SPEC §8), empirical
(f, kappa)-robustness (`robustness`), per-row influence (`influence`) and STRIKE's nu by gradient
(`nu_gradient`)."""

from strike_jax.analysis.influence import Influence, influence
from strike_jax.analysis.nu_gradient import WorstNuResult, closed_form_alpha, nu_deviation, strike_closed_form, worst_nu
from strike_jax.analysis.robustness import KappaResult, empirical_kappa, lower_kappa, matrix_attacks, theoretical_kappa
from strike_jax.analysis.skew import SkewStats, fisher_skewness, gradient_skew

__all__ = [
    "Influence",
    "KappaResult",
    "SkewStats",
    "WorstNuResult",
    "closed_form_alpha",
    "empirical_kappa",
    "fisher_skewness",
    "gradient_skew",
    "influence",
    "lower_kappa",
    "matrix_attacks",
    "nu_deviation",
    "strike_closed_form",
    "theoretical_kappa",
    "worst_nu",
]
