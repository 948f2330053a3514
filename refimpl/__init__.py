"""refimpl: an exact, readable NumPy oracle of GPT-Neo and of observable propagation.

Public API: ``load``, ``Model`` (``config``, ``weights``, ``tokenizer``, ``forward``, ``run_with_trace``),
``Config``, ``Tokenizer`` and the error types.
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
