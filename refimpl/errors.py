"""Exception types of the oracle. Every error names what is wrong and, where useful, what was expected."""


class RefimplError(Exception):
    """Base class of every error the oracle raises on bad input."""


class ConfigError(RefimplError, ValueError):
    """A config.json that is not a supported GPT-Neo configuration."""


class CheckpointError(RefimplError, ValueError):
    """A checkpoint that is missing, corrupt, pickled, or whose tensors do not match the config."""


class InputError(RefimplError, ValueError):
    """Token ids, strings, names or arguments that the model cannot take."""
