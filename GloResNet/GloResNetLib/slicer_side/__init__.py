"""Helpers the two Slicer modules (GloResNet, GloResNetTraining) share: one copy each of the Slicer version
check, the device probe, the developer reload, the status/log widgets, the way to reach the predict module, the
dependency installer, the results layout's view nodes and the path fields' sync and validation.

Qt-free (``slicer`` is imported inside the functions that need the application), so the parts that do not
need the Slicer application are tested outside it with slicer-core's MRML nodes.
"""
