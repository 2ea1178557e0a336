"""Subcommands of the ``rnnc`` command line (see :mod:`rnnc.cli`)."""
