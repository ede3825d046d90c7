"""index stage: filtered traces embedded and upserted into LanceDB, one tag per key (`versions`: tags and the pin)."""
