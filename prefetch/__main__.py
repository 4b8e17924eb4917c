"""`python -m prefetch` is the same as the `prefetch` command."""

from prefetch.cli import main

main()
