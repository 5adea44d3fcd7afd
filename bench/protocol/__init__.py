"""What a trial is: typed specs, the threat settings, the victim (model, setting and
dataset bound together) and the record a trial writes.
"""
