"""An adapter module that cannot be imported (for tests of startup errors)."""

import snakepit_module_that_does_not_exist  # noqa: F401
