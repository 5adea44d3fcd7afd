"""Victim models. Importing this package registers the built-in ones."""

from bench.models import zoo  # noqa: F401  (imported for registration)
