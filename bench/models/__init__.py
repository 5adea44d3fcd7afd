"""Victim models: `zoo` (built-in tiny models) and `published` (open_clip by name) register
themselves when imported (see bench.core.registry.load_plugins). Nothing is imported here, so that
`bench.models.clip` can be used without pulling in the registrations."""
