"""refimpl: an exact, readable NumPy oracle of GPT-Neo and of observable propagation.

Public API: ``load``, ``Model`` (``config``, ``weights``, ``tokenizer``, ``forward``, ``run_with_trace``),
``Config``, ``Tokenizer``, the error types; observables and propagation (``observable``, ``head_features``,
``path_feature``, ``propagate``, ``scan_virtual_heads``, ``beam_search_paths``); data-free analysis
(``cosine``, ``coupling``, ``theorem2_*``, ``ov_svd``, ``svd_alignment``, ``vector_lens``); records
(``Table``, ``head_table``). The case-study experiments are in ``refimpl.experiments``.
"""

from .config import Config, config_from_dict, load_config
from .errors import CheckpointError, ConfigError, InputError, RefimplError
from .loading import load
from .model import Model
from .tokenizer import Tokenizer
from .trace import Trace, activation_names

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "InputError",
    "Model",
    "RefimplError",
    "Tokenizer",
    "Trace",
    "activation_names",
    "config_from_dict",
    "load",
    "load_config",
]
__version__ = "0.1.0"

from .analysis import (compare_features, cosine, coupling, feature_norms, ov_svd, svd_alignment,  # noqa: E402
                       theorem2_bounds, theorem2_expectation, vector_lens)
from .observables import Observable, observable  # noqa: E402
from .propagation import (Node, PathFeature, boundary_point, final_ln_boundary, head_features,  # noqa: E402
                          ln_input_norms, ln_input_points, mlp_boundary, mlp_inputs, parse_path, path_feature,
                          propagate)
from .records import Table, head_table  # noqa: E402
from .scan import beam_search_paths, scan_virtual_heads, virtual_head_norms  # noqa: E402

__all__ += [
    "Node", "Observable", "PathFeature", "Table", "beam_search_paths", "boundary_point", "compare_features",
    "cosine", "coupling", "feature_norms", "final_ln_boundary", "head_features", "head_table",
    "ln_input_norms", "ln_input_points", "mlp_boundary", "mlp_inputs", "observable", "ov_svd", "parse_path", "path_feature",
    "propagate", "scan_virtual_heads", "svd_alignment", "theorem2_bounds", "theorem2_expectation",
    "vector_lens", "virtual_head_norms",
]
