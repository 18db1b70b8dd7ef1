"""The device's trust code behind the TUF conformance suite's client protocol (``sysupd
tuf-client``): ``online``, the update server's channel (python-tuf's ngclient); ``offline``, the
walker every offline bundle goes through, fed from the suite's repository."""
