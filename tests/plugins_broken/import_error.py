"""A plugin that cannot be imported: it needs a package that does not exist."""

import poolkit_test_no_such_package  # noqa: F401

from poolkit import hookimpl


@hookimpl
def register_poolers(register):
    pass
