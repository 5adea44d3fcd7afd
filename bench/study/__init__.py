"""The TBAR study: analyses that go beyond one trial (alpha curves, disentanglement, the
capacity ladder, attack budgets) and the TBAR report.
"""
