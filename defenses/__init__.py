"""Built-in defenses. Importing this package registers every one of them."""

from defenses import anp, cleanclip, detectors, fine_pruning, finetune, none, tbar  # noqa: F401  (imported for registration)
