"""Helpers the two Slicer modules (GloResNet, GloResNetTraining) share: one copy each of the Slicer version
check, the device probe, the developer reload, the status/log widgets, the way to reach the predict module, the
dependency installer, the results layout's view nodes and the path fields' sync and validation.

Nothing here imports Qt or the Slicer application at import time (``slicer``, and ``qt`` for the version
message, are imported inside the functions that need them), so the parts that do not need the application are
tested outside it with slicer-core's MRML nodes (Testing/test_slicer_side.py).
"""
