"""index stage: filtered traces embedded and upserted into LanceDB, one tag per key (`versions`: tags and the pin)."""

STAGE = "index"  # the stage's name: other modules import it, never spell it
