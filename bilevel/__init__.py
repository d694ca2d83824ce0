"""bilevel: bilevel hyperparameter learning with certified inexact hypergradients."""
from . import distributed, local_bounds, results, testing  # public submodules
from .checkpoint import CheckpointMismatchError, CorruptCheckpointError
from .constants import BoundConstants, estimate_bound_constants
from .hypergradient import (
    AccuracyWarning,
    Hypergradient,
    hypergradient,
    unrolled_hypergradient,
    upper_bounds,
)
from .linalg import CGResult, conjugate_gradient
from .lower import LowerSolution, certificate, fista
from .models import LearnedModel, load
from .outer import METHODS, ConvergenceWarning, SolveResult, resume, solve
from .problem import BilevelProblem, DerivativeWarning
from .registry import list_problems, make_problem, register_problem
from .reparametrized import Reparametrized
from .results import CorruptRunError

__version__ = "0.1.0"

__all__ = [
    "AccuracyWarning", "BilevelProblem", "BoundConstants", "CGResult", "CheckpointMismatchError",
    "ConvergenceWarning", "CorruptCheckpointError", "CorruptRunError", "DerivativeWarning",
    "Hypergradient", "LearnedModel", "LowerSolution", "METHODS", "SolveResult", "certificate",
    "conjugate_gradient", "estimate_bound_constants", "fista", "hypergradient", "list_problems",
    "load", "make_problem", "distributed", "local_bounds", "register_problem", "Reparametrized",
    "results", "resume", "solve", "testing",
    "unrolled_hypergradient",
    "upper_bounds",
]
