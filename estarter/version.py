"""The version of estarter, in a module of its own: the kernel reports it, and
importing the package root for it would pull in everything the root re-exports."""

__version__ = "0.1.0"
