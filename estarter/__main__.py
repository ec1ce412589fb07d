"""``python -m estarter`` is the ``estarter`` command."""

from .cli import main

main()
