"""The I/O-free core: rules fed values and returning decisions; no sockets, files or clocks."""
