"""Records and readings -> CRI messages: the one place runtimed builds them (the edge).

`status` (status and list items), `listing` (pre-encoded list replies, pages, filters),
`stats` (usage readings), `events` (GetContainerEvents)."""
