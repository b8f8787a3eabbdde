"""The kill switch: signed TERMINATE / PAUSE / RESUME commands, delivered over SSE on every replica."""
