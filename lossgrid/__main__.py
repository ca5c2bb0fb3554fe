"""``python -m lossgrid`` (and ``torchrun ... -m lossgrid surface ...``): the command line."""

from .cli import main

main()
