"""index stage: filtered traces embedded and upserted into LanceDB, one tag per key (`versions`: tags and the pin;
other modules read the table at a tag, its versions and the pin through `files`)."""

STAGE = "index"  # the stage's name: other modules import it, never spell it
