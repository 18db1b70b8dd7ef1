"""The operator's command line: ``sysupd serve``, ``sysupd user …``."""
