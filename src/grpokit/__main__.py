"""``python -m grpokit`` (and ``torchrun -m grpokit``): the command-line interface."""

from grpokit.cli import main

main()
