"""``python -m router`` is the ``llm-router`` command."""

from router.cli import main

main()
