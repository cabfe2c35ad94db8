"""`python -m halluc_cli ...` (what torchrun and SLURM scripts launch) is the `halluc` command."""

from halluc_cli.cli import main

main()
