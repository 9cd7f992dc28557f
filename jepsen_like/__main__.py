"""``python -m jepsen_like``: the ``jepsen-like`` command without an installed script."""

from jepsen_like.cli import main

main()
