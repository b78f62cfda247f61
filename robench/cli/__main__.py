"""``python -m robench.cli``."""

from robench.cli import main

main()
