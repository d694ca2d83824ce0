"""Fields of experts: learned convolution filters, weights and smoothings (:mod:`.problem`).

:mod:`.problem` has the model and its closed-form derivatives, :mod:`.bounds` its
certified constants, :mod:`.gemm` the CPU convolution engine they run on.
"""
from .gemm import CHUNK_COLUMNS, patches
from .problem import BACKENDS, ENTRY, FieldsOfExperts, Params, dct_filters

__all__ = ["BACKENDS", "CHUNK_COLUMNS", "ENTRY", "FieldsOfExperts", "Params", "dct_filters",
           "patches"]
