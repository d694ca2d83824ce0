"""Fields of experts: learned convolution filters, weights and smoothings (:mod:`.problem`).

:mod:`.problem` has the model and its closed-form derivatives, :mod:`.bounds` its
certified constants, :mod:`.gemm` the CPU convolution engine they run on; the filter
bank itself (zero-mean filters, their DCT start, correlations and norm bounds) is
:mod:`bilevel_problems.filter_bank`, shared with the ridge regularizer.
"""
from ..filter_bank import dct_filters, patches
from .gemm import CHUNK_COLUMNS
from .problem import BACKENDS, ENTRY, FieldsOfExperts, Params

__all__ = ["BACKENDS", "CHUNK_COLUMNS", "ENTRY", "FieldsOfExperts", "Params", "dct_filters",
           "patches"]
