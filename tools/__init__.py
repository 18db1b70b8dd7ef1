"""Tools that build and drive things around sysupd (not part of the installed package)."""
