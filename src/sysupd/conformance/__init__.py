"""The device's trust code behind the TUF conformance suite's client protocol (``sysupd
tuf-client``): ``online``, the update server's channel."""
