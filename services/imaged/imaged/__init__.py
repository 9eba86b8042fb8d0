"""crib's imaged: pulls, stores and unpacks images; hands out overlay snapshots."""
