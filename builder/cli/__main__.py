"""`python -m builder.cli`: the same as the `pibuild` console script."""

from builder.cli import main

main()
