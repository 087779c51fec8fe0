"""Host CPU detection (``cpuinfo``) and target selection (``select``)."""
