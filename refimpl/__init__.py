"""refimpl: an exact, readable NumPy oracle of GPT-Neo and of observable propagation.

Public API: ``load``, ``Model`` (``config``, ``weights``, ``tokenizer``, ``forward``, ``run_with_trace``),
``Config``, ``Tokenizer``, the error types; observables and propagation (``observable``, ``head_features``,
``path_feature``, ``propagate``, ``scan_virtual_heads``, ``beam_search_paths``); data-free analysis
(``cosine``, ``coupling``, ``theorem2_*``, ``ov_svd``, ``svd_alignment``, ``vector_lens``); records
(``Table``, ``head_table``). The case-study experiments are in ``refimpl.case_study.experiments``.
"""

from refimpl.families.gpt_neo import config_from_dict
from refimpl.oracle.config import Config, load_config
from refimpl.errors import CheckpointError, ConfigError, InputError, RefimplError
from refimpl.loading import load
from refimpl.oracle.model import Model
from refimpl.oracle.tokenizer import Tokenizer
from refimpl.oracle.trace import Trace, activation_names

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

from refimpl.propagation.analysis import (compare_features, cosine, coupling, feature_norms, ov_svd, svd_alignment,  # noqa: E402
                       theorem2_bounds, theorem2_expectation, vector_lens)
from refimpl.propagation.observables import Observable, observable  # noqa: E402
from refimpl.propagation.boundaries import boundary_point, final_ln_boundary, mlp_boundary, mlp_inputs
from refimpl.propagation.layernorms import ln_input_norms, ln_input_points
from refimpl.propagation.paths import Node, parse_path
from refimpl.propagation.propagate import PathFeature, head_features, path_feature, propagate
from refimpl.records import Table, head_table  # noqa: E402
from refimpl.propagation.scan import beam_search_paths, scan_virtual_heads, virtual_head_norms  # noqa: E402

__all__ += [
    "Node", "Observable", "PathFeature", "Table", "beam_search_paths", "boundary_point", "compare_features",
    "cosine", "coupling", "feature_norms", "final_ln_boundary", "head_features", "head_table",
    "ln_input_norms", "ln_input_points", "mlp_boundary", "mlp_inputs", "observable", "ov_svd", "parse_path", "path_feature",
    "propagate", "scan_virtual_heads", "svd_alignment", "theorem2_bounds", "theorem2_expectation",
    "vector_lens", "virtual_head_norms",
]
