"""Project exceptions: each names the file, line or parameter at fault."""


class NesylibError(Exception):
    """Base class for errors the user can act on."""


class DataError(NesylibError):
    """A data file is missing, corrupt or malformed."""


class ConfigError(NesylibError, ValueError):
    """A parameter or preset value is invalid."""


class ModelError(NesylibError):
    """A model cannot be provisioned or loaded."""
