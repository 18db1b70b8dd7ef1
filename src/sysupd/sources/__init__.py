"""Where updates come from, behind one ``Source`` protocol (``base``): a bundle file
(``bundlefile``), a LAN URL (``url``), the update server (``server``), and the in-memory twin
(``memory``)."""
