"""rbee: a private AI cloud in one command."""

__version__ = "0.1.0"
