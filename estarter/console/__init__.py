"""The web console: a Starlette app over the runtime that is up (``estarter console``,
or the process ``estarter up`` starts). Modules: ``auth`` (tokens, sessions, CSRF),
``backend`` (what it asks the runtime), ``hub`` (live updates), ``api`` (routes),
``prom`` (``/metrics``), ``service`` (the process ``up`` manages), ``cli``.

Nothing is imported here, so the CLI does not pay for Starlette on every command.
"""
