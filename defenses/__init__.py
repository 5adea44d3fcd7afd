"""Built-in defenses. Importing this package registers every one of them."""

from defenses import anp, cleanclip, clp, detectors, fine_pruning, finetune, none, par, tbar  # noqa: F401  (imported for registration)
