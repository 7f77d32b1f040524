"""The `pibuild` command line: the only package that imports click.

`main` is the console script. `app` holds the group and maps errors to exit codes; `common` the config loader the
verbs share; one module per verb holds its option parsing and printing, and calls the core for everything else.
"""

from builder.cli.app import cli, main

__all__ = ["cli", "main"]
