"""`epcache verify` (every byte against its records) and the integrity checks `epcache probe` runs."""
