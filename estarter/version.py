"""The version of estarter, in a module of its own: the kernel reports it, and
importing the package root for it would pull in everything the root re-exports."""

__version__ = "0.1.0"

# The kernel API this estarter serves, (major, minor): the original program's API 1
# (its integer ``minApiVersion: 1``) is our 1.0, which keeps every method of it. A
# new method raises the minor; a changed or removed one raises the major.
API_VERSION: tuple[int, int] = (1, 0)
