"""The AIGRC bridge: asset cards (uploaded, imported, synced), the Golden Thread, the bounds a card puts on
the agents registered against it, and their compliance status."""
