"""Sweeps: arms x seeds over the cached DAG, with a report that says whether an arm helped.

`arms` (named override sets), `stats` (intervals, pure), `run` (planning and orchestration),
`results` (what the artifacts measured), `report` (report.md and PNGs).
"""
