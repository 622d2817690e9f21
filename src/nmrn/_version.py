"""The package version, in one place (read by the package, pyproject and every checkpoint)."""

__version__ = "0.1.0"
