"""gridwatt-agent: measures each GPU of a node and streams interval energy to the collector."""
