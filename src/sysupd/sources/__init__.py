"""Where updates come from, behind one ``Source`` protocol (``base``): a bundle file
(``bundlefile``), a LAN URL (``url``), the update server (``server``), and the in-memory twin
(``memory``); every download goes through one HTTP stack (``http`` over ``connections``), with the
policy — allowed networks (``lan``) or the update server's origin (``tuf_fetcher``) — as data."""
