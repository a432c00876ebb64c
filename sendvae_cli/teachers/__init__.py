"""Frozen vision teachers. `Teacher` is the base class plugin authors subclass.

Imported lazily so that `sendvae_cli.teachers.builtin` (the spec table) stays torch-free.
"""

__all__ = ["Teacher", "TOKEN_STRIDE"]


def __getattr__(name):
    if name in __all__:
        from sendvae_cli.teachers import base

        return getattr(base, name)
    raise AttributeError(name)
