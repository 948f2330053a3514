"""Exception types of the oracle. Every error names what is wrong and, where useful, what was expected."""


class RefimplError(Exception):
    """Base class of every error the oracle raises on bad input."""


class ConfigError(RefimplError, ValueError):
    """A config.json that is not a supported GPT-Neo configuration."""


class CheckpointError(RefimplError, ValueError):
    """A checkpoint that is missing, corrupt, pickled, or whose tensors do not match the config."""


class InputError(RefimplError, ValueError):
    """Token ids, strings, names or arguments that the model cannot take."""


class ConformanceError(RefimplError, ValueError):
    """A conformance file that is not a readable, well-formed conformance ``.npz``."""


# ------------------------------------------------------------------ argument checks shared by the public API
def check_int(value, what: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int, or an InputError naming ``what``: bools, floats (even 2.0) and strings
    are refused; ``low <= value`` and ``value < high`` where given."""
    import numbers

    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InputError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if low is not None and value < low:
        raise InputError(f"{what} must be at least {low}, got {value}")
    if high is not None and value >= high:
        raise InputError(f"{what} must be below {high}, got {value}")
    return value


def check_index(value, what: str, size: int) -> int:
    """A Python-style index into an axis of length ``size`` (negative counts from the end)."""
    value = check_int(value, what)
    if not -size <= value < size:
        raise InputError(f"{what} {value} is out of range for a length of {size} (valid: {-size}..{size - 1})")
    return value


def check_real(value, what: str, positive: bool = False) -> float:
    """``value`` as a finite float (bools and strings refused; ``positive``: must be > 0)."""
    import math
    import numbers

    import numpy as np

    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iuf":
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{what} must be finite, got {value}")
    if positive and not value > 0:
        raise InputError(f"{what} must be positive, got {value}")
    return value


def check_vector(value, what: str, size: int, dtype=None):
    """``value`` as a finite 1-D float array of length ``size`` (in ``dtype`` if given, else float64)."""
    import numpy as np

    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what} must be a vector of {size} numbers, got {type(value).__name__}: {exc}") from None
    if array.dtype.kind not in "iuf":
        raise InputError(f"{what} must be a vector of {size} real numbers, got dtype {array.dtype}")
    if array.shape != (size,):
        raise InputError(f"{what} must have shape ({size},), got {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{what} has non-finite entries (NaN or inf)")
    array = array.astype(dtype or np.float64, copy=False)
    if not np.isfinite(array).all():
        raise InputError(f"{what} overflows {array.dtype} (entries beyond its range)")
    return array
