"""flowkit: density estimation with masked autoregressive networks (MADE) in PyTorch."""

from flowkit import masks, transforms, vi
from flowkit.checks import check_autoregressive
from flowkit.density import AutoregressiveDensity, BernoulliMADE, CategoricalMADE, MADEMoG, MixedMADE
from flowkit.errors import FlowkitError, FlowkitTypeError, FlowkitValueError
from flowkit.flows import IAF, MAF, DiagonalNormal, Flow
from flowkit.made import MADE, ConnectivityWarning
from flowkit.validation import set_validation, validate

__all__ = [
    "MADE",
    "masks",
    "AutoregressiveDensity",
    "BernoulliMADE",
    "CategoricalMADE",
    "MADEMoG",
    "MixedMADE",
    "Flow",
    "MAF",
    "IAF",
    "DiagonalNormal",
    "vi",
    "transforms",
    "ConnectivityWarning",
    "check_autoregressive",
    "set_validation",
    "validate",
    "FlowkitError",
    "FlowkitValueError",
    "FlowkitTypeError",
]

__version__ = "0.1.0"
