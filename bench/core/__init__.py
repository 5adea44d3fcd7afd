"""The bottom layer: what the methods and the engine both stand on. Typed configs and
knob ranges, the registry, process configuration, devices and reproducibility, training,
metrics, task vectors and the trade-off knob search. Imports nothing above it.
"""
