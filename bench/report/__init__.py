"""The pages: tables computed from records, the leaderboards, plots, the exact check of a
committed page, and `bench list`.
"""
