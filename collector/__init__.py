"""gridwatt-collector: ingests agents' interval energy, accounts it, stores it, answers and alerts."""
