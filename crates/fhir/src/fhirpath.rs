//! A FHIRPath evaluator for the subset used by search-parameter expressions.
