"""Ferry's version, as the installed package says (one number for agent, coordinator and CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("ferry")
except PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "0+unknown"
