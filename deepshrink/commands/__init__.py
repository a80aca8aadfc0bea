"""One module per ``deepshrink`` sub-command.

Each module exposes ``register(sub) -> None``: it adds its parser to ``sub`` (the argparse
sub-parsers object) and sets ``handler=`` to a function ``(args) -> int`` returning the exit code.
Heavy imports stay inside the handlers so ``deepshrink --help`` is fast. The CLI lists the modules
explicitly in ``deepshrink.cli.COMMAND_MODULES``.
"""
