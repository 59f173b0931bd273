"""File-system mechanisms every package shares: exclusive-create locks, atomic writes, OS-error
wording, URL and recorded-path checks. Nothing here knows about stores or runs."""
