"""The research-use disclaimer, written once: command-line epilogs, prediction records, reports and both Slicer
modules show this text (torch-free, so the Slicer modules import it at load time)."""

#: Shown with every result, report, command-line help and Slicer module panel.
DISCLAIMER = "Research use only. Not a medical device; not for clinical decisions."


__all__ = ["DISCLAIMER"]
