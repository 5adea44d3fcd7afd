"""Built-in attacks. Importing this package registers every one of them."""

from attacks import badnets, blended, none  # noqa: F401  (imported for registration)
