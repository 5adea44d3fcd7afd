"""Built-in attacks. Importing this package registers every one of them."""

from attacks import adaptive, badclip, badnets, blended, none, sig, tbar_aware, wanet  # noqa: F401  (imported for registration)
