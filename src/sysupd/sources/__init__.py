"""Where update bytes come from: uploaded files, LAN URLs, the update server."""
