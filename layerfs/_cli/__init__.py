"""The ``layerfs`` command line: a thin layer over everything below it.

``main`` parses the arguments and turns errors into one line; each command group (``registry``,
``image``, ``mount``) has a module with a ``register(subparsers)`` function.
"""
