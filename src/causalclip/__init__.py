"""CausalCLIP: causally disentangled CLIP features for detecting AI-generated images.

The Python API mirrors the command line::

    from causalclip import open_feature_set, resolve_run_config, train, evaluate, load_head, hsic
"""

__version__ = "0.1.0"

from .checkpoint import CheckpointError, load_head, save_head
from .config import ConfigError, TrainConfig
from .evaluate import EvalResult, evaluate, format_table
from .features import FeatureSet, FeatureSetError, open_feature_set, write_feature_set
from .heads import ABLATIONS, HEADS, CausalCLIPConfig, LinearProbeConfig, VIBConfig, build_head
from .losses import bernoulli_kl, hsic
from .metrics import MetricsError, binary_metrics, per_generator_metrics
from .train import RunConfig, TrainResult, predict, resolve_run_config, train

__all__ = [
    "ABLATIONS",
    "HEADS",
    "CausalCLIPConfig",
    "CheckpointError",
    "ConfigError",
    "EvalResult",
    "FeatureSet",
    "FeatureSetError",
    "LinearProbeConfig",
    "MetricsError",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "VIBConfig",
    "__version__",
    "bernoulli_kl",
    "binary_metrics",
    "build_head",
    "evaluate",
    "format_table",
    "hsic",
    "load_head",
    "open_feature_set",
    "per_generator_metrics",
    "predict",
    "resolve_run_config",
    "save_head",
    "train",
    "write_feature_set",
]
