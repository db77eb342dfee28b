"""Market data: embedded dataset, CSV and Yahoo Finance loaders, validation, features, exogenous features.

Prices are date-indexed DataFrames, one column per asset (prices, not returns).
"""

from __future__ import annotations

from portfolio_layers.data.exogenous import align_features, check_coverage, load_features
from portfolio_layers.data.features import FeatureSet, price_features
from portfolio_layers.data.loaders import EMBEDDED_DATASETS, load_embedded, load_prices, slice_dates
from portfolio_layers.data.validation import MISSING_OPTIONS, validate_dates, validate_prices
from portfolio_layers.data.yahoo import CACHE_ENV, default_cache_dir, download_prices

__all__ = [
    "CACHE_ENV",
    "EMBEDDED_DATASETS",
    "FeatureSet",
    "MISSING_OPTIONS",
    "align_features",
    "check_coverage",
    "default_cache_dir",
    "download_prices",
    "load_embedded",
    "load_features",
    "load_prices",
    "price_features",
    "slice_dates",
    "validate_dates",
    "validate_prices",
]
