"""An example bench plugin: the `frame` attack and the `weight-noise` defense.

Nothing here is imported by bench directly: the entry points in pyproject.toml name the
modules `frame` and `weight_noise`, and bench imports them when it loads plugins."""
