"""The operator's web page: plain HTML, CSS and JavaScript shipped in the package, served at
``/`` of the HTTP listener, speaking only the public API (``/websocket`` on the same address)."""
