"""The collector's web page at /ui/ (server-rendered HTML and SVG; no JavaScript, no external network)."""
