"""Delta updates: writing a release from the chunks the device holds, fetching only the rest."""
