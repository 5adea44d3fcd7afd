"""Running trials: one trial (trial.py), the grid planned from a suite (grid.py), and the
serial and Ray executors with their progress display.
"""
