"""Test and demo harness: throwaway servers and processes on loopback. Never used in production.

* :mod:`.influxdb`: a local InfluxDB 1.x (Debian's ``influxd``) on a free port, data in a temp folder;
* :mod:`.processes`: the collector and agents as real child processes, for the demo, the
  end-to-end tests and the benchmarks.

It ships inside gridwatt only because ``gridwatt demo`` runs from an installed wheel; the agent
and the collector never import it.
"""
