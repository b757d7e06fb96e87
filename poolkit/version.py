"""The release, in one place: run folders and cache entries record it."""

__version__ = "0.3.0"
